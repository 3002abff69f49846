#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), every wheel scripts/gpu_check.sh needs on a lent GPU machine
# that its image lacks (it has torch, transformers, accelerate, peft, onnx, nvidia-ml-py, numpy,
# pillow, pyyaml, safetensors, huggingface-hub, pytest, pytest-timeout; not these):
#   - streamvj's own runtime dependencies: diffusers, pydantic and its parts, python-osc,
#     websockets, zeroconf (so every test module imports, and OSC and the web page can run);
#   - the reference StreamDiffusion, streamdiffusion==0.1.1. Its metadata pins diffusers==0.24.0,
#     but its pipeline module imports only torch, numpy, PIL and diffusers, so it is fetched
#     with --no-deps and runs on the diffusers above (its fire / omegaconf are for its
#     command-line demos, which the check does not run).
# Python 3.12, manylinux x86_64 (the lent machine's), no dependency resolution: the list is
# explicit, and the versions are the ones installed here, where the test suite passed.
# Prints the total size: it travels with the working tree, which may be 64 MiB at most.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3

pinned() {  # NAME==VERSION as installed here, else NAME (the newest)
  local name
  for name in "$@"; do
    "$py" -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$name"
  done
}

rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2046  # one argument per package
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl \
  $(pinned diffusers importlib-metadata pydantic pydantic-core annotated-types typing-inspection typing-extensions \
           python-osc websockets zeroconf ifaddr) \
  streamdiffusion==0.1.1
ls -l .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024)) KiB in $(ls .whl/*.whl | wc -l) wheels (the working tree may carry 64 MiB)"
if [ "$total" -gt $((32 * 1024 * 1024)) ]; then
  echo "gpu_wheels.sh: over 32 MiB of wheels: leave room for the repository itself" >&2
  exit 1
fi
