"""Runtime overhead per frame, beside a plain numpy copy, plus end-to-end latency with the tiny model.

Part 1, per size (512x512 and 1920x1080): an upstream ShmSink (standing in for
TouchDesigner) publishes frames at `--fps`; the runtime reads them with a ShmSource, runs
an identity processor (no UNet/VAE: what is left is the engine) and publishes with its own
ShmSink; a downstream ShmSource reads them back. Reported, side by side with one np.copyto
of the same frame measured in the same run:

- engine work: median receive + preprocess + postprocess + send per frame (the runtime's
  own CPU time per frame, shm read/write included; "model" is the identity call);
- engine latency: arrival (source read) -> output handed to the sinks, median / p99;
- shm e2e: upstream write -> downstream read, both polling readers included, median / p99.

Part 2: the tiny model at 256x256 (StreamPipeline, t_index_list [20, 40]) fed by the test
pattern into a NullSink: model time and arrival -> handoff latency, median / p99.

Part 3: the control path of one frame with the model taken out (LivePlayer: parameter
snapshot, live applier, pipeline bookkeeping and stream-batch math at 64x64): the host's
Python cost per frame, which a GPU frame replayed from one CUDA graph adds on top.

    python benchmarks/bench_overhead.py           # table
    python benchmarks/bench_overhead.py --json    # one JSON object
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridges.video.files import NullSink  # noqa: E402
from bridges.video.pattern import PatternSource  # noqa: E402
from bridges.video.shm import ShmSink, ShmSource  # noqa: E402
from engine.realtime.processor import FunctionProcessor  # noqa: E402
from engine.realtime.runtime import Runtime  # noqa: E402

SIZES = [(512, 512), (1920, 1080)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def copy_baseline_ms(w: int, h: int, reps: int = 200) -> tuple[float, float]:
    """One np.copyto of a frame: (hot: the same buffers, in cache; cold: cycling through
    >= 64 MB of sources, as a frame fresh from another process would be)."""
    rng = np.random.default_rng(0)
    n_cold = max(2, -(-64 * 2**20 // (w * h * 4)))
    srcs = [rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for _ in range(n_cold)]
    dst = np.empty_like(srcs[0])
    hot, cold = [], []
    for i in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, srcs[0])
        t1 = time.perf_counter()
        np.copyto(dst, srcs[1 + i % (n_cold - 1)])
        t2 = time.perf_counter()
        hot.append(t1 - t0)
        cold.append(t2 - t1)
    return statistics.median(hot) * 1000, statistics.median(cold) * 1000


def stamp(frame: np.ndarray, index: int) -> None:
    frame[0, 0, :3] = (index & 255, (index >> 8) & 255, (index >> 16) & 255)


def unstamp(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) | int(frame[0, 0, 1]) << 8 | int(frame[0, 0, 2]) << 16


def bench_shm_path(w: int, h: int, frames: int, fps: float) -> dict[str, Any]:
    tag = f"{os.getpid()}_{w}x{h}"
    upstream, rt_out = ShmSink(f"svjbench_in_{tag}"), ShmSink(f"svjbench_out_{tag}")
    rt_in, downstream = ShmSource(f"svjbench_in_{tag}", retry_s=0.05), ShmSource(f"svjbench_out_{tag}",
                                                                                 retry_s=0.05)
    t_write = np.full(frames + 1, np.nan)
    t_read = np.full(frames + 1, np.nan)
    done = threading.Event()

    def reader() -> None:
        downstream.open()
        while not done.is_set():
            f = downstream.read_latest()
            if f is None:
                time.sleep(0.0001)
                continue
            t = time.perf_counter()
            i = unstamp(f)
            if 0 < i <= frames:
                t_read[i] = t

    base = np.random.default_rng(1).integers(0, 256, (h, w, 4), dtype=np.uint8)
    upstream.open()
    upstream.send(base)  # the block exists before the runtime's source attaches
    rt = Runtime(FunctionProcessor(lambda f: f), rt_in, [rt_out])
    rt.start()
    th = threading.Thread(target=reader, name="bench-reader", daemon=True)
    th.start()
    try:
        time.sleep(0.3)  # attach both readers
        t0 = time.perf_counter()
        for i in range(1, frames + 1):
            stamp(base, i)
            upstream.send(base)
            t_write[i] = time.perf_counter()
            time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
        time.sleep(0.3)
        stats = rt.stats()
    finally:
        done.set()
        th.join(5)
        rt.stop()
        upstream.close()
        downstream.close()
    e2e = [float(d) * 1000 for d in (t_read - t_write)[1:] if np.isfinite(d)]
    st = stats["stages"]
    work = sum(st[s]["median_ms"] for s in ("receive", "preprocess", "postprocess", "send"))
    copy_hot, copy_cold = copy_baseline_ms(w, h)
    return {
        "size": f"{w}x{h}",
        "copy_ms": copy_hot,
        "copy_cold_ms": copy_cold,
        "work_ms": work,
        "receive_ms": st["receive"]["median_ms"],
        "postprocess_ms": st["postprocess"]["median_ms"],
        "send_ms": st["send"]["median_ms"],
        "model_ms": st["model"]["median_ms"],
        "latency_ms": stats["latency_ms"],
        "latency_p99_ms": stats["latency_p99_ms"],
        "e2e_ms": pct(e2e, 50),
        "e2e_p99_ms": pct(e2e, 99),
        "delivered": len(e2e),
        "written": frames,
        "dropped_input": stats["dropped_input"],
    }


def bench_tiny_model(size: int, frames: int) -> dict[str, Any]:
    import torch

    from engine.config.schema import LiveParams, LoadSettings
    from engine.core.pipeline import StreamPipeline
    from engine.models.load import load_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    pipe = StreamPipeline(load_model("tiny"), LoadSettings(model="tiny", width=size, height=size),
                          LiveParams(t_index_list=[20, 40]))
    warm = np.zeros((size, size, 4), np.uint8)
    for _ in range(2):
        pipe(warm)
    sink = NullSink()
    rt = Runtime(pipe, PatternSource(size, size, fps=30), [sink])
    rt.start()
    try:
        deadline = time.monotonic() + 600
        while rt.frames_rendered < frames and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = rt.stats()
    finally:
        rt.stop(timeout=30)
    return {
        "size": f"{size}x{size}",
        "frames": stats["frames_rendered"],
        "fps": stats["fps"],
        "model_ms": stats["stages"]["model"]["median_ms"],
        "model_p99_ms": stats["stages"]["model"]["p99_ms"],
        "latency_ms": stats["latency_ms"],
        "latency_p99_ms": stats["latency_p99_ms"],
        "overhead_ms": sum(stats["stages"][s]["median_ms"] for s in ("receive", "preprocess", "postprocess", "send")),
        "dropped_input": stats["dropped_input"],
        "latency_frames": pipe.stream.n - 1,
    }


def bench_control_path(frames: int) -> dict[str, Any]:
    """Host time of one frame's control path with the model taken out: ParamStore snapshot,
    LiveApplier, pipeline bookkeeping, stream-batch math on 8x8 latents and the u8 <-> float
    conversions at 64x64. On a GPU the tensor part is one graph replay, so this bounds the
    per-frame Python cost: at 250 fps the whole frame has 4 ms."""
    import types

    import torch

    from engine.config.preset_files import load_preset
    from engine.config.schema import LiveParams, LoadSettings
    from engine.core.pipeline import StreamPipeline
    from engine.live.params import ParamStore
    from engine.live.player import LivePlayer
    from engine.models.load import load_model

    parts = load_model("tiny")
    config = parts.unet.config

    class NullUnet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config

        def forward(self, x, timesteps, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
            return (x,)

    class NullVae:
        config = parts.vae.config

        def encode(self, img):  # 64x64 RGB -> 8x8x4 latents, no weights
            return types.SimpleNamespace(latents=torch.cat([img, img[:, :1]], 1)[:, :, ::8, ::8])

        def decode(self, latents, return_dict=False):
            return (latents[:, :3].repeat_interleave(8, 2).repeat_interleave(8, 3),)

    parts.unet, parts.vae = NullUnet(), NullVae()
    pipe = StreamPipeline(parts, LoadSettings(model="tiny", width=64, height=64), LiveParams(t_index_list=[20, 40]))
    player = LivePlayer(pipe, ParamStore(load_preset(ROOT / "presets" / "tiny.yaml").live))
    frame = np.zeros((64, 64, 4), np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64x64 ops: threads would only add dispatch noise
    try:
        for _ in range(50):
            player(frame)
        ms = []
        for _ in range(frames):
            start = time.perf_counter()
            player(frame)
            ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(threads)
    return {"frames": frames, "median_ms": round(statistics.median(ms), 4), "p99_ms": round(pct(ms, 99), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--frames", type=int, default=300, help="frames per size through shared memory")
    parser.add_argument("--fps", type=float, default=60.0, help="upstream writer rate")
    parser.add_argument("--model-frames", type=int, default=30, help="tiny-model frames (0: skip)")
    parser.add_argument("--model-size", type=int, default=256)
    parser.add_argument("--control-frames", type=int, default=2000, help="null-model frames (0: skip)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    shm = [bench_shm_path(w, h, ns.frames, ns.fps) for w, h in SIZES]
    model = bench_tiny_model(ns.model_size, ns.model_frames) if ns.model_frames else None
    control = bench_control_path(ns.control_frames) if ns.control_frames else None
    result = {"cpu_count": os.cpu_count(), "shm": shm, "tiny_model": model, "control_path": control}
    if ns.json:
        print(json.dumps(result))
        return 0
    print(f"Engine overhead, identity processor, shm in -> runtime -> shm out ({ns.frames} frames at "
          f"{ns.fps:g} fps, {os.cpu_count()} CPUs); ms, medians unless p99")
    cols = ("size", "copy_ms", "copy_cold_ms", "work_ms", "receive_ms", "postprocess_ms", "send_ms", "latency_ms",
            "latency_p99_ms", "e2e_ms", "e2e_p99_ms", "delivered", "dropped_input")
    print(" ".join(f"{c:>14}" for c in cols))
    for row in shm:
        print(" ".join(f"{row[c]:>14.3f}" if isinstance(row[c], float) else f"{row[c]:>14}" for c in cols))
    if model:
        print(f"\nTiny model {model['size']} (t_index_list [20, 40]: content latency "
              f"{model['latency_frames']} frame), pattern -> runtime -> NullSink")
        cols = ("frames", "fps", "model_ms", "model_p99_ms", "latency_ms", "latency_p99_ms", "overhead_ms",
                "dropped_input")
        print(" ".join(f"{c:>14}" for c in cols))
        print(" ".join(f"{model[c]:>14.3f}" if isinstance(model[c], float) else f"{model[c]:>14}" for c in cols))
    if control:
        print(f"\nControl path per frame, null model (params, live applier, pipeline, 64x64 tensor ops; "
              f"{control['frames']} frames): {control['median_ms']:.3f} ms median, {control['p99_ms']:.3f} ms p99")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
