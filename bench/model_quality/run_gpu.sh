#!/usr/bin/env bash
# The model-quality run on the GPU machine (copied as run.sh into the bundle by make_bundle.sh):
# installs the kvtier wheel of the bundle, unpacks the corpus, then model_quality.py with the
# bundle's kvtierd; the JSON and the log land in $OUT.
set -uo pipefail
B=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$B/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/machine.txt"
python3 -m pip install -q --no-index --no-deps --target /tmp/kvtier-site "$B"/kvtier-*.whl || exit 1
export PYTHONPATH=/tmp/kvtier-site
python3 -c 'import torch, tokenizers; print(torch.__version__, tokenizers.__version__)' | tee -a "$OUT/machine.txt"
corpus=/tmp/model-quality-corpus.txt
gzip -dc "$B/corpus.txt.gz" >"$corpus" || exit 1
sha256sum "$corpus" | tee -a "$OUT/machine.txt"
echo "kvtierd revision $(cat "$B/daemon/REVISION")" | tee -a "$OUT/machine.txt"
time python3 "$B/model_quality.py" --corpus "$corpus" --out "$OUT" \
  --kvtierd "$B/daemon/kvtierd.sh" "$@" 2>&1 | grep -v -i warn | tee "$OUT/model_quality.log"
