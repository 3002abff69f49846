#!/usr/bin/env bash
# Downloads, into .whl/, the wheels a lent GPU machine lacks to run streamvj's CUDA tests and
# benchmarks (its image has torch, transformers, peft, onnx, nvidia-ml-py; not these).
# Python 3.12, manylinux x86_64, no dependencies resolved: the list is explicit.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers importlib-metadata pydantic pydantic-core annotated-types typing-inspection \
  typing-extensions python-osc
ls .whl
