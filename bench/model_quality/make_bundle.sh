#!/usr/bin/env bash
# Builds the GPU bundle of the model-quality run (bench/model_quality/README.md) in DEST (default
# /work/main/.gpu-quality, git-ignored there through .git/info/exclude): the corpus
# (make_corpus.sh), model_quality.py, run_gpu.sh as run.sh, and the kvtier wheel with the CUDA
# kernel (scripts/gpu/python_run builds it into .gpu-python/). On the GPU machine, from the
# checkout's root: bash .gpu-quality/run.sh [--set NAME=VALUE ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-/work/main/.gpu-quality}
wheel_dir=${KVTIER_GPU_PYTHON_DEST:-/work/main/.gpu-python}
mkdir -p "$dest"
[ -f "$dest/corpus.txt" ] || "$here/make_corpus.sh" "$dest/corpus.txt"
cp "$here/model_quality.py" "$dest/"
cp "$here/run_gpu.sh" "$dest/run.sh"
ls "$wheel_dir"/kvtier-*.whl >/dev/null || { echo "no wheel in $wheel_dir: run scripts/gpu/python_run" >&2; exit 1; }
cp "$wheel_dir"/kvtier-*.whl "$dest/"
du -sh "$dest"
