"""`run_engine.py bench`: frame timings of the stream pipeline, optionally beside diffusers' own.

Both sides get the same weights, size, step count and input frames in one run, and both
hand back host pixels (numpy uint8) so the comparison includes getting bytes out.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.config.schema import LiveParams, LoadSettings
from engine.core.pipeline import StreamPipeline
from engine.models.parts import ModelParts

BENCH_PROMPT = "a psychedelic neon landscape, highly detailed"  # both sides encode the same text


@dataclass(frozen=True)
class BenchPlan:
    """What one bench run measures: a preset's load and live halves (validated by the schema,
    like any preset), the backend they resolved to, and how many frames to time."""

    load: LoadSettings
    live: LiveParams
    backend: str  # resolved: one of engine.config.scalars.BACKENDS
    frames: int = 50
    warmup: int = 5


def moving_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """Distinct synthetic frames (a drifting gradient) so nothing is cached between frames."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        phase = i * 0.3
        rgb = np.stack([np.sin(x / 23 + phase), np.cos(y / 17 - phase), np.sin((x + y) / 31 + 2 * phase)], -1)
        rgba = np.empty((height, width, 4), np.uint8)
        rgba[..., :3] = ((rgb + 1) * 127.5).astype(np.uint8)
        rgba[..., 3] = 255
        frames.append(rgba)
    return frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # benchmark only: the engine itself never syncs per frame


def summarise(ms: list[float]) -> dict:
    ordered = sorted(ms)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    median = statistics.median(ordered)
    return {"fps": round(1000.0 / median, 2), "ms_median": round(median, 3), "ms_p90": round(p90, 3)}


def bench_stream(parts: ModelParts, plan: BenchPlan, device: torch.device, dtype: torch.dtype,
                 controlnets: Sequence[Any] = ()) -> dict:
    """`controlnets`: plan.load.controlnets, loaded (engine/bench_controlnet.py)."""
    load = plan.load
    pipe = StreamPipeline(parts, load, plan.live, device=device, dtype=dtype, backend=plan.backend,
                          controlnets=controlnets)
    inputs = moving_frames(8, load.height, load.width)
    if load.frame_buffer_size > 1:
        inputs = [np.stack([inputs[(i + j) % 8] for j in range(load.frame_buffer_size)]) for i in range(8)]
    txt = load.mode == "txt2img"
    from engine.realtime.gpu_stats import GpuStats

    gpu = GpuStats.for_device(device)
    ms = []
    for i in range(plan.warmup + plan.frames):
        start = time.perf_counter()
        out = pipe(None if txt else inputs[i % len(inputs)])
        out.cpu().numpy()
        _sync(device)
        if i >= plan.warmup:
            ms.append((time.perf_counter() - start) * 1000.0)
    result = summarise(ms)
    result["fps"] = round(result["fps"] * load.frame_buffer_size, 2)  # F frames per call
    result["unet_ms_median"] = round(unet_ms(pipe, max(5, plan.frames // 2)), 3)
    result["unet_batch"] = pipe.stream.unet_batch_size()
    result["latency_frames"] = pipe.stream.n - 1
    result["acceleration"] = plan.backend
    result["backend"] = pipe.backend  # what actually ran, after any fallback
    if gpu is not None:
        result.update({k: v for k, v in gpu.read().items() if v is not None})
        gpu.close()
    return result


@torch.no_grad()
def unet_ms(pipe: StreamPipeline, runs: int) -> float:
    """Median time of the UNet alone on this pipeline's stream batch (same shapes as a frame)."""
    stream = pipe.stream
    batch = stream.unet_batch_size()
    x = torch.randn(batch, *stream.latent_shape, device=stream.device, dtype=stream.dtype)
    timesteps = stream.timesteps.repeat(math.ceil(batch / stream.timesteps.numel()))[:batch]
    hidden = stream.cond[:1].expand(batch, -1, -1)
    pooled = None if stream.cond_pooled is None else stream.cond_pooled[:1].expand(batch, -1)
    ms = []
    for i in range(runs + 2):
        _sync(stream.device)
        start = time.perf_counter()
        stream._unet(x, timesteps, hidden, pooled)
        _sync(stream.device)
        if i >= 2:
            ms.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(ms)


def bench_autopipeline(parts: ModelParts, plan: BenchPlan, device: torch.device, dtype: torch.dtype) -> dict:
    """diffusers' AutoPipelineForImage2Image on the same weights, running the same number of steps.

    strength 0.5 over 2N scheduled steps runs exactly N denoising steps. Guidance is off
    (the cheapest setting for the baseline) unless streamvj runs full CFG.
    """
    import warnings

    from diffusers import (
        AutoPipelineForImage2Image,
        LCMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")  # its own config nags

    load, n = plan.load, len(plan.live.t_index_list)
    scheduler = LCMScheduler.from_config(parts.scheduler_config)
    common = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                  scheduler=scheduler)
    if parts.text_encoder_2 is not None:
        base = StableDiffusionXLPipeline(text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2,
                                         **common)
    else:
        base = StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                       **common)
    pipe = AutoPipelineForImage2Image.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    guidance = 1.5 if load.cfg_type == "full" else 0.0
    frames = moving_frames(8, load.height, load.width)
    images = [torch.from_numpy(f[..., :3]).permute(2, 0, 1)[None].float().div(255).to(device, dtype) for f in frames]
    ms = []
    for i in range(plan.warmup + plan.frames):
        start = time.perf_counter()
        pipe(plan.live.prompt, image=images[i % 8], num_inference_steps=2 * n, strength=0.5, guidance_scale=guidance,
             output_type="np", height=load.height, width=load.width)
        _sync(device)
        if i >= plan.warmup:
            ms.append((time.perf_counter() - start) * 1000.0)
    return summarise(ms)


def format_table(rows: list[tuple[str, dict]]) -> str:
    header = f"{'pipeline':<28}{'fps':>10}{'ms median':>12}{'ms p90':>10}{'unet ms':>10}"
    lines = [header, "-" * len(header)]
    for name, r in rows:
        unet = f"{r['unet_ms_median']:>10.2f}" if "unet_ms_median" in r else f"{'':>10}"
        lines.append(f"{name:<28}{r['fps']:>10.1f}{r['ms_median']:>12.2f}{r['ms_p90']:>10.2f}{unet}")
    return "\n".join(lines)


def bench_plan(load: dict, t_index_list: list[int] | None, *, frames: int, warmup: int) -> BenchPlan:
    """The bench's settings (None = the schema's default), validated once by the preset schema:
    an error names the key, like a preset's. `model: auto` is sd-turbo-random on a GPU (the real
    architecture with random weights: the same speed, no download), tiny (the trained tiny model) elsewhere."""
    from pydantic import ValidationError

    from engine.accel.backend import resolve_acceleration, resolve_device
    from engine.config.preset_files import format_validation_error
    from engine.config.schema import Preset
    from engine.errors import ConfigError

    live: dict = {"prompt": BENCH_PROMPT}
    if t_index_list is not None:
        live["t_index_list"] = t_index_list
    try:
        preset = Preset.model_validate({"name": "bench", "load": {k: v for k, v in load.items() if v is not None},
                                        "live": live})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "command line")) from None
    device = resolve_device(preset.load.device)
    if preset.load.model == "auto":
        preset.load = preset.load.model_copy(update={"model": "sd-turbo-random" if device.type == "cuda" else "tiny"})
    return BenchPlan(preset.load, preset.live, resolve_acceleration(preset.load.acceleration, device),
                     frames=frames, warmup=warmup)


def run_bench(plan: BenchPlan, baseline: bool = False) -> tuple[str, dict]:
    """Load the model, time streamvj (and diffusers' AutoPipelineForImage2Image when `baseline`):
    the table to print and one JSON-ready result."""
    from engine.accel.backend import resolve_device, resolve_dtype
    from engine.errors import StreamVJError
    from engine.models.load import load_model

    load = plan.load
    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    parts = load_model(load.model, family=load.family, vae=load.vae, device=device, dtype=dtype)
    stream = bench_stream(parts, plan, device, dtype)
    rows = [(f"streamvj ({plan.backend})", stream)]
    result = {"model": load.model, "family": parts.family.value, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "width": load.width, "height": load.height, "t_index_list": plan.live.t_index_list,
              "cfg": load.cfg_type, "mode": load.mode, "frame_buffer_size": load.frame_buffer_size,
              "frames": plan.frames, **stream}
    if baseline:
        if load.mode != "img2img":
            raise StreamVJError("--baseline autopipeline compares img2img; drop it for txt2img")
        base = bench_autopipeline(parts, plan, device, dtype)
        rows.append(("diffusers AutoPipelineI2I", base))
        result["baseline"] = {"name": "AutoPipelineForImage2Image", **base}
        result["speedup_vs_baseline"] = round(base["ms_median"] / stream["ms_median"], 2)
    table = format_table(rows)
    if "speedup_vs_baseline" in result:
        table += f"\nspeed-up vs AutoPipelineForImage2Image: {result['speedup_vs_baseline']}x"
    return table, result
