#!/usr/bin/env bash
# Runs one connector test with the interpreter of its engine's pinned virtualenv
# (scripts/python_env tests/connectors/ENGINE/requirements.txt), against the kvtier wheel the
# python tests installed into SITE (ctest fixture kvtier_python_site) and a real kvtierd ($KVTIERD).
#   run.sh SITE ENGINE TEST.py [ARGS...]
# The test imports the shared fixtures of tests/python (kvtierd_fixture) and its engine's own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
site=$1
engine=$2
shift 2
py=$("$root/scripts/python_env" "$here/$engine/requirements.txt")
PYTHONPATH=$site:$root/tests/python:$here/$engine exec "$py" "$@"
