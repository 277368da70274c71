#!/usr/bin/env bash
# Builds the GPU bundle of the model-quality run (bench/model_quality/README.md) in DEST (default
# /work/main/.gpu-quality2/bundle, git-ignored there through .git/info/exclude): the corpus, gzipped
# (make_corpus.sh), model_quality.py, run_gpu.sh as run.sh, the kvtier wheel with the CUDA kernel
# and kvtierd with its shared libraries (scripts/gpu/python_run builds both into
# $KVTIER_GPU_PYTHON_DEST, default /work/main/.gpu-python). On the GPU machine, from the checkout's
# root: bash .gpu-quality2/bundle/run.sh [--set NAME=VALUE ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-/work/main/.gpu-quality2/bundle}
py_dir=${KVTIER_GPU_PYTHON_DEST:-/work/main/.gpu-python}
ls "$py_dir"/kvtier-*.whl "$py_dir/daemon/kvtierd.sh" >/dev/null ||
  { echo "no wheel or daemon in $py_dir: run scripts/gpu/python_run" >&2; exit 1; }
mkdir -p "$dest/daemon/bin"
if [ ! -f "$dest/corpus.txt.gz" ]; then
  "$here/make_corpus.sh" "$dest/corpus.txt"
  gzip -9n "$dest/corpus.txt"
fi
cp "$here/model_quality.py" "$dest/"
cp "$here/run_gpu.sh" "$dest/run.sh"
rm -f "$dest"/kvtier-*.whl
cp "$py_dir"/kvtier-*.whl "$dest/"
# kvtierd alone (not the demo or kvtierctl) and the libraries it loads; the wrapper sets their path.
cp "$py_dir/daemon/bin/kvtierd" "$dest/daemon/bin/"
cp "$py_dir/daemon/kvtierd.sh" "$py_dir/daemon/REVISION" "$dest/daemon/"
rm -rf "$dest/daemon/lib" && mkdir "$dest/daemon/lib"
LD_LIBRARY_PATH="$py_dir/daemon/lib" ldd "$py_dir/daemon/bin/kvtierd" |
  awk -v d="$py_dir/daemon/lib/" 'index($3, d) == 1 {print $3}' |
  xargs -r cp -t "$dest/daemon/lib/"
du -sh "$dest"
