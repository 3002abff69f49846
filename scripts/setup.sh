#!/usr/bin/env bash
# Creates .venv and installs streamvj with its dev extras on a fresh machine.
# CPU machines get the CPU torch wheel first (an unpinned torch would pull a multi-GB CUDA build);
# set STREAMVJ_TORCH to another spec (e.g. "torch" on a CUDA machine) to change that.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${STREAMVJ_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev,ndi,midi,gl]"
