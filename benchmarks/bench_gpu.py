"""GPU benchmark: streamvj eager vs compiled vs CUDA-graph (vs TensorRT) vs diffusers, same weights, same run.

The model is the SD 2.1 / sd-turbo architecture: its UNet from sd-turbo's config (written
out below) with random weights, a TAESD-sized AutoencoderTiny, and an OpenCLIP-H-shaped
text encoder (off the per-frame path; it only encodes the prompt once). Speed does not
depend on the weights, so no download is needed; `--model stabilityai/sd-turbo` loads
the real ones when they can be fetched (`--vae madebyollin/taesd` for the real TAESD).

Each variant runs 512x512 img2img, 1 and 4 denoising steps, timing whole frames: RGBA
uint8 in -> RGBA uint8 on the host (the same work the engine does per frame). diffusers'
AutoPipelineForImage2Image runs the same steps on the same modules.

    python benchmarks/bench_gpu.py                      # CUDA, fp16, all variants
    python benchmarks/bench_gpu.py --tensorrt           # also TensorRT engines (cached)
    python benchmarks/bench_gpu.py --power              # watts with/without the similarity filter
    python benchmarks/bench_gpu.py --power-only --steps 1   # only that (scripts/gpu_check.sh's last stage)
    python benchmarks/bench_gpu.py --device cpu --tiny --frames 2 --no-compile   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.accel.cuda_graphs import CUDA_GRAPHS, GraphedStep  # noqa: E402
from engine.bench import BENCH_PROMPT, BenchPlan, bench_autopipeline, moving_frames, summarise  # noqa: E402
from engine.config.scalars import CFG_TYPES  # noqa: E402
from engine.config.schema import LiveParams, LoadSettings  # noqa: E402
from engine.core.pipeline import StreamPipeline  # noqa: E402
from engine.models.load import load_model, load_vae  # noqa: E402
from engine.models.parts import ModelParts  # noqa: E402

log = logging.getLogger("streamvj.bench_gpu")

T_INDEX = {1: [32], 2: [32, 45], 3: [16, 32, 45], 4: [0, 16, 32, 45]}


def load_parts(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[ModelParts, str]:
    if args.tiny:
        return load_model(args.tiny, device=device, dtype=dtype), f"{args.tiny} (tiny test model)"
    if args.model:
        parts = load_model(args.model, device=device, dtype=dtype)
        label = args.model
    else:
        parts = load_model("sd-turbo-random", device=device, dtype=dtype)  # engine/models/random_weights.py
        label = "sd-turbo architecture (random weights)"
    if args.vae:
        parts.vae = load_vae(args.vae, dtype=dtype).to(device).eval().requires_grad_(False)
        label += f", vae {args.vae}"
    elif args.model:
        from diffusers import AutoencoderTiny

        parts.vae = AutoencoderTiny().to(device, dtype).eval().requires_grad_(False)
        label += ", TAESD-sized VAE (random weights)"
    return parts, label


# ---- timing -------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # benchmark only: frames are timed end to end


def time_frames(pipe: StreamPipeline, frames: list[np.ndarray], warmup: int, count: int) -> dict:
    ms = []
    for i in range(warmup + count):
        start = time.perf_counter()
        pipe(frames[i % len(frames)]).cpu().numpy()
        _sync(pipe.device)
        if i >= warmup:
            ms.append((time.perf_counter() - start) * 1000.0)
    return summarise(ms)


def time_pipelined(pipe: StreamPipeline, frames: list[np.ndarray], warmup: int, count: int) -> dict:
    """Throughput as the runtime renders on CUDA: pinned input, upload and download on their own
    streams, and the host waits for frame k's bytes only after launching frame k+1."""
    from engine.accel.device_io import DeviceDownload

    host_in = [torch.from_numpy(f).pin_memory() for f in frames]  # the runtime's input pool is pinned
    host_out = [torch.empty(frames[0].shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
    download = DeviceDownload(pipe.device)
    pending = None

    def one(i: int) -> None:
        nonlocal pending
        result = pipe(host_in[i % len(host_in)])
        landed = download.start(result, host_out[i % 2], output_read=pipe.output_read)
        if pending is not None:
            pending.synchronize()  # frame k-1's bytes are on the host: a sink could send them now
        pending = landed

    for i in range(warmup):
        one(i)
    _sync(pipe.device)
    start = time.perf_counter()
    for i in range(count):
        one(warmup + i)
    pending.synchronize()
    return {"fps_pipelined": round(count / (time.perf_counter() - start), 1)}


def make_pipeline(parts: ModelParts, size: int, steps: int, cfg: str, backend: str, device: torch.device,
                  dtype: torch.dtype, compile_mode: str = "default", **live: object) -> StreamPipeline:
    """A pipeline on `backend` (none, compile, tensorrt: engines built once, then cached), without
    CUDA graphs: each variant is timed without, then with them (`use_graph`)."""
    load = LoadSettings(model=parts.source or "bench", width=size, height=size, cfg_type=cfg, compile_mode=compile_mode)
    pipe = StreamPipeline(parts, load, LiveParams(t_index_list=T_INDEX[steps], **live), device=device, dtype=dtype,
                          backend=backend)
    pipe.step.use_graphs(None)
    return pipe


def use_graph(pipe: StreamPipeline) -> GraphedStep:
    """Replay the pipeline's (eager, compiled or TensorRT) frame step from a CUDA graph, as every
    acceleration but none does on CUDA."""
    step = pipe.step.use_graphs(CUDA_GRAPHS)
    assert step is not None
    pipe.reset()
    return step


def run_variants(parts: ModelParts, args: argparse.Namespace, steps: int, device: torch.device,
                 dtype: torch.dtype) -> list[dict]:
    frames = moving_frames(8, args.size, args.size)
    cuda = device.type == "cuda"
    rows: list[dict] = []

    def record(variant: str, pipe: StreamPipeline, note: str = "") -> None:
        result = {"steps": steps, "variant": variant, **time_frames(pipe, frames, args.warmup, args.frames),
                  "backend": pipe.backend}  # what ran after any fallback (e.g. a failed capture)
        if cuda:
            result.update(time_pipelined(pipe, frames, args.warmup, args.frames))
        if note:
            result["note"] = note
        rows.append(result)
        log.info("%d step(s) %-22s %8.1f fps", steps, variant, result["fps"])

    def graphed(variant: str, pipe: StreamPipeline) -> None:
        step = use_graph(pipe)
        record(variant, pipe, "" if step.captured or step.enabled else f"no graph: {step.fallback_reason}")

    pipe = make_pipeline(parts, args.size, steps, args.cfg, "none", device, dtype)
    record("eager", pipe)
    if cuda:
        graphed("eager + cuda graph", pipe)
    del pipe
    if not args.no_compile:
        pipe = make_pipeline(parts, args.size, steps, args.cfg, "compile", device, dtype)
        record("compile", pipe)
        if cuda:
            graphed("compile + cuda graph", pipe)
        del pipe
    if args.autotune and not args.no_compile:
        # compile_mode: max-autotune in a preset; worth it only if it measures faster here.
        pipe = make_pipeline(parts, args.size, steps, args.cfg, "compile", device, dtype, compile_mode="max-autotune")
        record("compile max-autotune", pipe)
        if cuda:
            graphed("compile max-autotune + cuda graph", pipe)
        del pipe
    if args.tensorrt and cuda:
        pipe = make_pipeline(parts, args.size, steps, args.cfg, "tensorrt", device, dtype)
        record("tensorrt", pipe)
        graphed("tensorrt + cuda graph", pipe)
        del pipe
    if not args.no_baseline:
        plan = BenchPlan(LoadSettings(model=parts.source or "bench", width=args.size, height=args.size, cfg_type=args.cfg),
                         LiveParams(t_index_list=T_INDEX[steps], prompt=BENCH_PROMPT), "none",
                         frames=args.frames, warmup=args.warmup)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: NaN-to-uint8 casts in diffusers' postprocessing
            base = bench_autopipeline(parts, plan, device, dtype)
        rows.append({"steps": steps, "variant": "diffusers AutoPipelineForImage2Image", **base})
        log.info("%d step(s) %-22s %8.1f fps", steps, "diffusers", base["fps"])
    return rows


def measure_power(parts: ModelParts, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Watts on a static scene (one frame repeated), similarity filter off vs on, 1 step.

    Frames arrive at `--power-fps` (a live source's rate), not as fast as the loop can go:
    unpaced, "off" would run the GPU flat out and "on" would spin on skipped frames, which
    overstates what the filter saves in a show."""
    from engine.realtime.gpu_stats import GpuStats

    stats = GpuStats.for_device(device)
    if stats is None:
        return {"error": "NVML not available (pip install 'streamvj[nvml]') or no GPU"}
    frame = moving_frames(1, args.size, args.size)[0]
    out = {}
    try:
        for enabled in (False, True):
            pipe = make_pipeline(parts, args.size, 1, args.cfg, "none", device, dtype, similarity_enabled=enabled,
                                 similarity_threshold=0.98, similarity_max_skip=10)
            for _ in range(args.warmup):
                pipe(frame)
            _sync(device)
            watts, frames_done, start, next_read = [], 0, time.perf_counter(), 0.0
            period = 1.0 / args.power_fps
            while (now := time.perf_counter()) - start < args.power_seconds:
                pipe(frame).cpu()
                frames_done += 1
                time.sleep(max(0.0, start + frames_done * period - time.perf_counter()))
                if now >= next_read:  # NVML averages power over ~1 s; sample a few times a second
                    reading = stats.read()["gpu_power_w"]
                    if reading is not None:
                        watts.append(reading)
                    next_read = now + 0.25
            _sync(device)
            elapsed = time.perf_counter() - start
            out["similarity_on" if enabled else "similarity_off"] = {
                "fps": round(frames_done / elapsed, 1),
                "gpu_power_w": round(float(np.mean(watts)), 1) if watts else None,
                "skip_ratio": round(pipe.counters.skip_ratio, 3)}
            del pipe
    finally:
        stats.close()
    return out


# ---- main ---------------------------------------------------------------------------------------------


def format_rows(rows: list[dict]) -> str:
    # fps: one frame at a time, synced (latency-bound); pipelined: as the runtime overlaps frames.
    header = f"{'steps':>5}  {'variant':<38}{'fps':>9}{'pipelined':>11}{'ms median':>11}{'ms p90':>9}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        pipelined = f"{r['fps_pipelined']:>11.1f}" if "fps_pipelined" in r else f"{'-':>11}"
        lines.append(f"{r['steps']:>5}  {r['variant']:<38}{r['fps']:>9.1f}{pipelined}{r['ms_median']:>11.2f}"
                     f"{r['ms_p90']:>9.2f}  {r.get('note', '')}")
    return "\n".join(lines)


def speedups(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for steps in sorted({r["steps"] for r in rows}):
        by = {r["variant"]: r for r in rows if r["steps"] == steps}
        eager = by.get("eager")
        best = max((r for name, r in by.items() if not name.startswith("diffusers")), key=lambda r: r["fps"])
        entry = {"best_variant": best["variant"], "best_fps": best["fps"]}
        if "fps_pipelined" in best:
            entry["best_fps_pipelined"] = max(r.get("fps_pipelined", 0.0) for r in by.values())
        if eager:
            entry["best_vs_eager"] = round(best["fps"] / eager["fps"], 2)
        base = by.get("diffusers AutoPipelineForImage2Image")
        if base:
            entry["best_vs_diffusers"] = round(best["fps"] / base["fps"], 2)
        out[f"{steps}_step"] = entry
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--dtype", choices=["auto", "float16", "float32", "bfloat16"], default="auto")
    p.add_argument("--tiny", nargs="?", const="tiny", metavar="NAME",
                   help="a tiny test model (default tiny; 64x64): a quick check, not a benchmark")
    p.add_argument("--model", help="real weights, e.g. stabilityai/sd-turbo (default: random sd-turbo architecture)")
    p.add_argument("--vae", help="real VAE, e.g. madebyollin/taesd (default: random TAESD-sized)")
    p.add_argument("--size", type=int, help="square image size (default 512; 64 with --tiny)")
    p.add_argument("--steps", default="1,4", help="comma-separated step counts from 1..4 (default 1,4)")
    p.add_argument("--cfg", choices=CFG_TYPES, default="none",
                   help="turbo models run without CFG (default none)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="untimed frames first (compiling happens here)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--no-baseline", action="store_true", help="skip diffusers' AutoPipelineForImage2Image")
    p.add_argument("--tensorrt", action="store_true", help="also TensorRT engines (needs streamvj[tensorrt])")
    p.add_argument("--autotune", action="store_true",
                   help="also torch.compile max-autotune (minutes of autotuning; preset compile_mode: max-autotune)")
    p.add_argument("--power", action="store_true", help="GPU watts on a static scene, similarity filter off/on")
    p.add_argument("--power-only", action="store_true", help="only --power, no speed variants")
    p.add_argument("--power-seconds", type=float, default=10.0)
    p.add_argument("--power-fps", type=float, default=60.0, help="source frame rate for --power (default 60)")
    p.add_argument("--json-out", type=Path, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    args.power = args.power or args.power_only
    try:
        args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        p.error(f"--steps takes comma-separated integers, got {args.steps!r}")
    if not args.steps or any(s not in T_INDEX for s in args.steps):
        p.error(f"--steps must be among {sorted(T_INDEX)}")
    if args.power_fps <= 0:
        p.error("--power-fps must be > 0")
    if args.frames < 1 or args.warmup < 0:
        p.error("--frames must be >= 1 and --warmup >= 0")
    return args


def start_run(tool: str, device_name: str) -> torch.device | None:
    """Logging for a benchmark script, the libraries' own chatter off, and its device; None (after
    saying why) when that is a CUDA device torch cannot see."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{tool}: no CUDA GPU visible to torch; use --device cpu --tiny for a CPU check", file=sys.stderr)
        return None
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_run("bench_gpu", args.device)
    if device is None:
        return 2
    dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.float16 if device.type == "cuda" else torch.float32)
    if args.power_only and (why := power_unavailable(device)):
        return emit({"skipped": why, "device": str(device)}, args)  # said before minutes of model loading
    parts, label = load_parts(args, device, dtype)
    rows = []
    for steps in [] if args.power_only else args.steps:
        rows.extend(run_variants(parts, args, steps, device, dtype))
    result = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "model": label, "width": args.size, "height": args.size, "cfg": args.cfg,
        "frames": args.frames, "warmup": args.warmup, "results": rows, "speedups": speedups(rows) if rows else {},
    }
    if args.power:
        result["power_static_scene"] = measure_power(parts, args, device, dtype)
    if rows:
        print(format_rows(rows), file=sys.stderr)
    return emit(result, args)


def emit(result: dict, args: argparse.Namespace) -> int:
    text = json.dumps(result)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


def power_unavailable(device: torch.device) -> str | None:
    """Why watts cannot be read here (no GPU, no NVML), or None when they can."""
    from engine.realtime.gpu_stats import GpuStats

    stats = GpuStats.for_device(device)
    if stats is None:
        return f"no NVML power reading on {device} (needs an NVIDIA GPU and nvidia-ml-py: pip install 'streamvj[nvml]')"
    stats.close()
    return None


if __name__ == "__main__":
    sys.exit(main())
