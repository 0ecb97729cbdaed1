#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with s2vbench and its test tools.
# torch goes in first, pinned to the local CPU wheel, so nothing pulls the multi-GB CUDA build.
# On a GPU machine, install your CUDA torch into .venv before running this; it is then kept.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# pip byte-compiles each file in turn as it installs; one parallel pass at the end does the same on every core.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet --no-compile "torch==2.13.0"
fi
# uv resolves and unpacks the rest in seconds where pip takes over a minute; it keeps the torch above, which
# satisfies pyproject's range. Where uv cannot be fetched or fails, pip does the same, more slowly.
if ! { .venv/bin/pip install --quiet --no-compile uv 2>/dev/null \
        && .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[test]"; }; then
    .venv/bin/pip install --quiet --no-compile -e ".[test]"
fi
# Every rank a run spawns imports torch afresh: uncompiled, with PYTHONDONTWRITEBYTECODE set, that costs
# seconds per process. A few vendored files are not valid Python 3 and fail to compile; that is expected.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv/bin/python -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
