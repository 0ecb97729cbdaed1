#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with s2vbench and its test tools.
# torch goes in first, pinned to the local CPU wheel, so nothing pulls the multi-GB CUDA build.
# On a GPU machine, install your CUDA torch into .venv before running this; it is then kept.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
.venv/bin/pip install --quiet -e ".[test]"
