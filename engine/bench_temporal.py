"""`run_engine.py bench --temporal`: flicker and cost of the temporal settings, side by side in one run.

The input pans slowly (`panning_frames`: a smooth texture moving `PAN_PX` pixels a frame), so
consecutive inputs differ a little and steadily; whatever the output changes beyond that is
flicker. The figure per setting:

    flicker = mean |out_t - out_(t-1)| / mean |in_t - in_(t-1)|   (RGB, 0..255, timed frames)

1.0 means the output moves as much as the input; lower is steadier (a frozen output would be
0, so read it beside the look, never alone). Costs are the bench's frame times (median ms,
engine/bench.py's summary) and, for a shared CPU where wall time depends on the neighbours,
the process's CPU time per frame (median; all of torch's threads). Settings without a bank run on a pipeline built with
`bank_max: 0` (no processor installed, today's engine); the bank settings (the bank off at M = 0
among them) on one built with `bank_max` = the largest M, their live values switched between runs
with no rebuild; the fusion settings on one that also allocates fusion (`bank_fusion: true`).
Random-weight models (tiny, sd-turbo-random) show the mechanism and its cost, not the look.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from engine.bench import BenchPlan, _sync, summarise
from engine.config.schema import LiveParams
from engine.core.pipeline import StreamPipeline
from engine.models.parts import ModelParts

PAN_PX = 1  # input motion per frame
FEEDBACK = 0.3  # the latent feedback fraction the table shows
FUSION = {"fusion_strength": 0.8, "fusion_threshold": 0.98}  # StreamV2V's defaults
# (name, live values); "bank_frames" in a setting means the bank pipeline runs it.
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("off (no bank installed)", {}),
    (f"latent feedback {FEEDBACK}", {"latent_feedback": FEEDBACK}),
    ("bank installed, off (M=0)", {"bank_frames": 0}),
    ("bank M=1", {"bank_frames": 1}),
    ("bank M=2", {"bank_frames": 2}),
    (f"bank M=2 + feedback {FEEDBACK}", {"bank_frames": 2, "latent_feedback": FEEDBACK}),
    ("bank M=2 + fusion 0.8 @0.98", {"bank_frames": 2, **FUSION}),
    ("bank M=2 + fusion 0.8 @0.9", {"bank_frames": 2, **FUSION, "fusion_threshold": 0.9}),
)
BANK_MAX = max(s.get("bank_frames", 0) for _, s in SETTINGS)


def setting_kind(values: dict[str, Any]) -> str:
    """The pipeline a setting runs on: no bank installed, a bank, or a bank with fusion allocated."""
    if values.get("fusion_strength", 0) > 0:
        return "fusion"
    return "bank" if "bank_frames" in values else "plain"


def panning_frames(count: int, height: int, width: int, start: int = 0) -> list[np.ndarray]:
    """rgba_u8 frames of a smooth, non-repeating texture panning right by PAN_PX a frame."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(start, start + count):
        u = x + i * PAN_PX
        rgb = np.stack([np.sin(u / 19) + 0.5 * np.sin((u + 2 * y) / 7.3),
                        np.cos(y / 13) * np.sin(u / 29 + 1.0) + 0.4 * np.cos((u - y) / 5.1),
                        np.sin((u + y) / 23) + 0.5 * np.cos(np.hypot(u - 40, y - 30) / 6.7)], -1)
        rgba = np.empty((height, width, 4), np.uint8)
        rgba[..., :3] = np.clip((rgb / 1.5 + 1) * 127.5, 0, 255).astype(np.uint8)
        rgba[..., 3] = 255
        frames.append(rgba)
    return frames


def mean_change(frames: list[torch.Tensor]) -> float:
    """Mean absolute RGB change between consecutive frames (0..255)."""
    return float(np.mean([(b[..., :3].int() - a[..., :3].int()).abs().float().mean().item()
                          for a, b in zip(frames, frames[1:])]))


def run_setting(pipe: StreamPipeline, live: LiveParams, plan: BenchPlan, device: torch.device) -> dict:
    """Reset, apply `live`'s temporal values, pan through warm-up and timed frames."""
    pipe.reset()
    pipe.apply_live("temporal", live)
    load, f = plan.load, plan.load.frame_buffer_size
    inputs = panning_frames((plan.warmup + plan.frames) * f, load.height, load.width)
    ms, cpu_ms, outputs = [], [], []
    for i in range(plan.warmup + plan.frames):
        batch = np.stack(inputs[i * f:(i + 1) * f])  # F consecutive frames per call
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = pipe(batch)
        _sync(device)
        if i >= plan.warmup:
            ms.append((time.perf_counter() - start) * 1000.0)
            cpu_ms.append((time.process_time() - cpu_start) * 1000.0)
            outputs.extend(out.cpu().clone())  # after the timing: the bench's own copy, frame by frame
    measured = [torch.from_numpy(frame) for frame in inputs[plan.warmup * f:]]
    flicker = mean_change(outputs) / mean_change(measured)
    return {"flicker": round(flicker, 4), "output_change": round(mean_change(outputs), 3),
            "input_change": round(mean_change(measured), 3), "scene_cuts": pipe.temporal.cuts,
            "cpu_ms_median": round(statistics.median(cpu_ms), 3), **summarise(ms)}


def bench_temporal(parts: ModelParts, plan: BenchPlan, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Every setting of SETTINGS on the plan's model and size: one row each."""
    rows = []
    for kind in ("plain", "bank", "fusion"):
        load = plan.load.model_copy(update={"bank_max": 0 if kind == "plain" else BANK_MAX,
                                            "bank_fusion": kind == "fusion"})
        pipe = StreamPipeline(parts, load, plan.live, device=device, dtype=dtype, backend=plan.backend)
        pipe.warm_up()  # compiles / captures before the timed frames, like the engine's build
        for name, values in SETTINGS:
            if setting_kind(values) != kind:
                continue
            live = LiveParams.model_validate({**plan.live.model_dump(), **values})
            rows.append({"name": name, **values, **run_setting(pipe, live, plan, device)})
        del pipe
    off, off_cpu = rows[0]["ms_median"], rows[0]["cpu_ms_median"]
    for row in rows:
        row["extra_ms"] = round(row["ms_median"] - off, 3)
        row["extra_cpu_ms"] = round(row["cpu_ms_median"] - off_cpu, 3)
    return rows


def format_temporal_table(rows: list[dict]) -> str:
    header = f"{'setting':<32}{'flicker':>9}{'ms median':>11}{'+ms':>9}{'cpu ms':>9}{'+cpu ms':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<32}{r['flicker']:>9.3f}{r['ms_median']:>11.2f}{r['extra_ms']:>+9.2f}"
                     f"{r['cpu_ms_median']:>9.2f}{r['extra_cpu_ms']:>+9.2f}")
    return "\n".join(lines)


def run_temporal_bench(plan: BenchPlan) -> tuple[str, dict]:
    """Load the plan's model once and measure every setting: the table and one JSON-ready result."""
    from engine.accel.backend import resolve_device, resolve_dtype
    from engine.models.load import load_model

    load = plan.load
    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    parts = load_model(load.model, family=load.family, vae=load.vae, device=device, dtype=dtype)
    rows = bench_temporal(parts, plan, device, dtype)
    result = {"bench": "temporal", "model": load.model, "family": parts.family.value, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "backend": plan.backend, "width": load.width,
              "height": load.height, "t_index_list": plan.live.t_index_list, "cfg": load.cfg_type,
              "frame_buffer_size": load.frame_buffer_size, "frames": plan.frames, "warmup": plan.warmup,
              "pan_px_per_frame": PAN_PX, "settings": rows}
    note = ("flicker = mean |out_t - out_t-1| / mean |in_t - in_t-1| on a panning input (lower = steadier); "
            f"model {load.model}: with random weights the figures show the mechanism and its cost, not the look")
    return format_temporal_table(rows) + "\n" + note, result
