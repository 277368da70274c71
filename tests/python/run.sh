#!/usr/bin/env bash
# Runs one python test with the interpreter of the pinned virtualenv (scripts/python_env, or
# $KVTIER_PYTHON when the caller already resolved it), against the kvtier wheel installed in SITE.
#   run.sh SITE [--install-wheel LIBKVTIER] TEST.py
# --install-wheel builds the wheel around that libkvtier.so (scripts/build_wheel) and installs it
# into SITE first, as an integrator would with pip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${KVTIER_PYTHON:-$("$root/scripts/python_env")}
site=$1
shift
if [ "$1" = --install-wheel ]; then
  dist=$site.dist
  rm -rf "$site" "$dist"
  "$root/scripts/build_wheel" --lib "$2" --out "$dist" >/dev/null
  "$py" -m pip install --quiet --no-deps --no-index --target "$site" "$dist"/kvtier-*.whl
  shift 2
fi
PYTHONPATH=$site:$here exec "$py" "$@"
