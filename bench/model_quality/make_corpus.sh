#!/usr/bin/env bash
# The corpus of the model-quality run (bench/model_quality/README.md): the reStructuredText sources
# of the Python 3.11 documentation as Debian 12 ships them in python3.11-doc (PSF License v2, see
# the package's /usr/share/doc/python3.11-doc/copyright), concatenated in sorted path order.
#   make_corpus.sh OUT_FILE
# Needs apt (Debian 12 sources); prints the file's size and sha256 so a rebuild can be compared.
set -euo pipefail
out=$1
version=3.11.2-6+deb12u9
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "python3.11-doc=$version" >/dev/null 2>&1)
dpkg -x "$tmp"/python3.11-doc_*.deb "$tmp/x"
src=$tmp/x/usr/share/doc/python3.11/html/_sources
(cd "$src" && find . -name '*.rst.txt' | LC_ALL=C sort | while read -r f; do
   cat "$f"; printf '\n\n'; done) >"$out"
echo "$(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-64)"
