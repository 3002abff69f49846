#!/usr/bin/env bash
# streamvj's GPU check: one command on a bare NVIDIA machine (torch, transformers, onnx and
# nvidia-ml-py in its image; no network). It installs the wheels carried in .whl/
# (scripts/gpu_wheels.sh fetches them) into a side folder, then runs each stage under its own
# time limit, most important numbers first:
#
#   1 versions      torch, CUDA, the GPU's name, driver
#   2 cuda_tests    every CUDA-marked test (pytest -m cuda)
#   3 bench         benchmarks/bench_gpu.py, 512x512 1 step: eager, compile + CUDA graphs, synced and
#                   pipelined fps, diffusers' AutoPipelineForImage2Image
#   4 reference     benchmarks/reference_streamdiffusion.py: the reference StreamDiffusion 0.1.1's
#                   PyTorch path on the same weights folder
#   5 runtime       benchmarks/runtime_e2e.py: run with pattern -> null, then shm in -> shm out
#                   (fps, glass-to-glass latency p50/p99, frame-interval jitter)
#   6 controlnet    run_engine.py bench --controlnet canny: fps with 0, 1, 2 ControlNets, eager
#   7 temporal      run_engine.py bench --temporal: flicker and cost of bank, fusion, feedback, eager
#   8 power         benchmarks/bench_gpu.py --power-only: watts, similarity filter off/on
#   9 cold_start    benchmarks/cold_start.py: run -> first frame, empty vs warm compile caches
#
# Each stage leaves NN_<stage>.log and NN_<stage>.json in DIR and rewrites DIR/summary.json, so a
# run cut short still says what finished. All stages together get GPU_CHECK_BUDGET seconds
# (default 540: the run fits a 10-minute command); a stage starts only with its minimum left.
#
#   scripts/gpu_check.sh --bundle "$OUT/gpu_check.tgz" /tmp/gpu_check     # on the GPU machine
#   scripts/gpu_check.sh --dry-run /tmp/gpu_check_dry                     # CPU: tiny model, 64x64
#
# --bundle FILE: after every stage, DIR packed into FILE (one file to fetch, however many stages).
# --dry-run: the same stages on the CPU with the tiny model, 64x64 and a few frames; stages that
# need CUDA or NVML say "skipped: why" (tests/scripts/test_gpu_check.py runs this).
set -uo pipefail
here=$PWD
cd "$(dirname "$0")/.."
repo=$PWD
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }  # paths given are the caller's

dry=0
bundle=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --bundle) bundle=$2; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
dir=$(absolute "${1:-${OUT:-out}/gpu_check}")
[ -n "$bundle" ] && bundle=$(absolute "$bundle")
py=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET:-540}
tag=${GPU_CHECK_SHM_TAG:-svjgpu_$$}  # shared-memory block names of the runtime stage
mkdir -p "$dir"
rm -f "$dir"/[0-9][0-9]_*.json "$dir"/[0-9][0-9]_*.log "$dir"/*.result.json "$dir"/summary.json
export PYTHONUNBUFFERED=1

# The carried wheels, to a side folder ahead of the image's packages; --no-deps: the list is explicit.
site=${GPU_CHECK_SITE:-/tmp/streamvj-site}
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      > "$dir/00_wheels.log" 2>&1; then
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check.sh: installing .whl/ failed (see $dir/00_wheels.log); going on with the image's packages" >&2
  fi
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

started=$SECONDS
n=0
result() { echo "$dir/$1.result.json"; }
# A stage runs under `timeout`, which leads a process group of its own (the stage and whatever it
# spawned: engines, writers) and passes a TERM on to all of it. Stopping this script so stops the
# running stage too, not only the script.
current=""
trap '[ -n "$current" ] && kill -TERM "$current" 2>/dev/null; exit 143' TERM INT HUP

# "${to_json[@]}" FILE COMMAND...: COMMAND's stdout (one JSON object: run_engine.py bench --json) into FILE, its
# stderr into the stage's log. A command, not a function: `timeout` runs it.
to_json=(sh -c 'out=$1; shift; exec "$@" > "$out"' to_json)

# stage NAME LIMIT_S MIN_S COMMAND...: run COMMAND under `timeout`, then write NN_NAME.json and summary.json.
stage() {
  local name=$1 limit=$2 least=$3
  shift 3
  n=$((n + 1))
  local base left t0 rc
  base=$dir/$(printf %02d "$n")_$name
  left=$((budget - (SECONDS - started)))
  [ "$left" -lt 0 ] && left=0
  if [ "$left" -lt "$least" ]; then
    "$py" scripts/gpu_check_report.py skip "$name" "out of time: ${left} s of the ${budget} s budget left, needs ${least} s" \
      > "$base.json"
  else
    [ "$left" -lt "$limit" ] && limit=$left
    echo "[gpu_check] $(date +%T) stage $n $name (limit ${limit} s)" >&2
    t0=$SECONDS
    { exec timeout -k 10 "$limit" "$@" > "$base.log" 2>&1; } &  # exec: $! is timeout itself
    current=$!
    wait "$current"
    rc=$?
    current=""
    "$py" scripts/gpu_check_report.py stage "$name" "$rc" "$((SECONDS - t0))" "$limit" "$(result "$name")" "$base.log" \
      > "$base.json"
    rm -f "$(result "$name")"
    echo "[gpu_check] $(date +%T) stage $n $name: rc $rc after $((SECONDS - t0)) s" >&2
  fi
  "$py" scripts/gpu_check_report.py summary "$dir" > "$dir/summary.json.tmp" && mv "$dir/summary.json.tmp" "$dir/summary.json"
  if [ -n "$bundle" ]; then
    tar -czf "$bundle.tmp" -C "$dir" . && mv "$bundle.tmp" "$bundle"
  fi
}

if [ "$dry" = 1 ]; then
  # Same stages, CPU-sized: the tiny model at 64x64, a few frames, no compiling (minutes per graph on a CPU).
  tiny=${GPU_CHECK_TINY:-tiny}  # which tiny model (run_engine.py bench --model's names)
  stage versions 60 5 "$py" scripts/gpu_check_report.py versions --json-out "$(result versions)"
  stage cuda_tests 120 10 "$py" -m pytest -q -m cuda -p no:cacheprovider --collect-only tests
  stage bench 120 10 "$py" benchmarks/bench_gpu.py --device cpu --tiny "$tiny" --steps 1 --frames 2 --warmup 1 --no-compile \
    --no-baseline --json-out "$(result bench)"  # diffusers' pipeline on a CPU: tests/benchmarks/test_bench_gpu_smoke.py
  stage reference 120 10 "$py" benchmarks/reference_streamdiffusion.py --device cpu --tiny "$tiny" --frames 2 --warmup 1 \
    --no-compile --json-out "$(result reference)"
  stage runtime 120 10 "$py" benchmarks/runtime_e2e.py --model "$tiny" --size 64 --device cpu --acceleration none \
    --fps 10 --switch-every 4 --seconds 1.5 --timeout 100 --tag "$tag" --json-out "$(result runtime)"
  stage controlnet 120 10 "${to_json[@]}" "$(result controlnet)" "$py" run_engine.py bench --model "$tiny" --width 64 --height 64 \
    --device cpu --acceleration none --controlnet canny --frames 2 --warmup 1 --json
  stage temporal 120 10 "${to_json[@]}" "$(result temporal)" "$py" run_engine.py bench --temporal --model "$tiny" --width 64 --height 64 \
    --device cpu --acceleration none --frames 3 --warmup 1 --json
  stage power 60 5 "$py" benchmarks/bench_gpu.py --device cpu --tiny "$tiny" --power-only --json-out "$(result power)"
  stage cold_start 120 10 "$py" benchmarks/cold_start.py --model "$tiny" --size 64 --device cpu --acceleration none \
    --runs cold --timeout 100 --shm-prefix "${tag}_cold" --json-out "$(result cold_start)"
else
  stage versions 30 5 "$py" scripts/gpu_check_report.py versions --json-out "$(result versions)"
  stage cuda_tests 120 30 "$py" -m pytest -q -m cuda -p no:cacheprovider --timeout 60 --continue-on-collection-errors tests
  stage bench 200 90 "$py" benchmarks/bench_gpu.py --size 512 --steps 1 --frames 300 --warmup 20 \
    --json-out "$(result bench)"
  stage reference 120 60 "$py" benchmarks/reference_streamdiffusion.py --size 512 --steps 1 --frames 200 --warmup 20 \
    --folder /tmp/streamvj-sd-turbo-random --json-out "$(result reference)"
  # Its two engines compile the frame step's FX-on graph the bench did not (then load both from the cache).
  stage runtime 150 60 "$py" benchmarks/runtime_e2e.py --model sd-turbo-random --size 512 --acceleration compile \
    --fps 120 --switch-every 12 --seconds 6 --timeout 130 --tag "$tag" --json-out "$(result runtime)"
  # ControlNets (0, 1, 2, canny) and the temporal tools (bank, fusion, feedback), eager: first GPU figures, no compiling.
  stage controlnet 100 40 "${to_json[@]}" "$(result controlnet)" "$py" run_engine.py bench --model sd-turbo-random --width 512 \
    --height 512 --device cuda --acceleration none --controlnet canny --frames 60 --warmup 10 --json
  stage temporal 100 40 "${to_json[@]}" "$(result temporal)" "$py" run_engine.py bench --temporal --model sd-turbo-random --width 512 \
    --height 512 --device cuda --acceleration none --frames 30 --warmup 5 --json
  stage power 50 30 "$py" benchmarks/bench_gpu.py --power-only --steps 1 --warmup 20 --power-seconds 8 \
    --json-out "$(result power)"
  stage cold_start 240 100 "$py" benchmarks/cold_start.py --model sd-turbo-random --size 512 --acceleration compile \
    --runs cold,warm --timeout 200 --shm-prefix "${tag}_cold" --json-out "$(result cold_start)"
fi
echo "[gpu_check] done in $((SECONDS - started)) s: $dir/summary.json" >&2
cat "$dir/summary.json"
