"""`run_engine.py bench --controlnet canny|depth|passthrough`: the cost of ControlNets in one run.

The same pipeline (model, size, steps, backend) is timed with 0, 1 and 2 ControlNets side by
side, each taking its map from the input through the chosen preprocessor, and the
preprocessor alone is timed on a frame of the model's size. The ControlNets are `random`
(the real ControlNet architecture for the model's UNet: the same cost as trained weights);
the depth network is `--depth-model` (default `random`, a tiny one: give
depth-anything/Depth-Anything-V2-Small-hf for the real cost).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from engine.bench import BenchPlan, _sync, bench_stream, format_table
from engine.config.schema import ControlNetSpec
from engine.core.preprocess import make_preprocessor
from engine.models.controlnet import load_controlnets
from engine.models.parts import ModelParts

COUNTS = (0, 1, 2)


@torch.no_grad()
def preprocess_ms(preprocessor: str, depth: torch.nn.Module | None, depth_resolution: int, plan: BenchPlan,
                  device: torch.device, dtype: torch.dtype, runs: int) -> float:
    """Median time of the preprocessor alone on F frames of the model's size (eager)."""
    load = plan.load
    run = make_preprocessor(preprocessor, device=device, dtype=dtype, depth=depth, depth_resolution=depth_resolution)
    frames = torch.rand(load.frame_buffer_size, 3, load.height, load.width, device=device, dtype=dtype)
    ms = []
    for i in range(runs + 2):
        _sync(device)
        start = time.perf_counter()
        run(frames)
        _sync(device)
        if i >= 2:
            ms.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(ms)


def run_controlnet_bench(plan: BenchPlan, preprocessor: str, depth_model: str = "random",
                         depth_resolution: int = 518) -> tuple[str, dict]:
    """The table (0, 1, 2 ControlNets and the preprocessor's own cost) and one JSON-ready result."""
    from engine.accel.backend import resolve_device, resolve_dtype
    from engine.models.load import load_model

    load = plan.load
    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    parts: ModelParts = load_model(load.model, family=load.family, vae=load.vae, device=device, dtype=dtype)
    spec = ControlNetSpec(model="random", preprocessor=preprocessor, depth_model=depth_model,
                          depth_resolution=depth_resolution)
    rows, runs = [], {}
    depth = None
    for count in COUNTS:
        specs = [spec] * count
        controlnets = load_controlnets(specs, parts.unet, parts.family, device=device, dtype=dtype)
        if depth is None:
            depth = next((c.depth for c in controlnets if c.depth is not None), None)
        counted = dataclasses.replace(plan, load=load.model_copy(update={"controlnets": specs}))
        result = bench_stream(parts, counted, device, dtype, controlnets=controlnets)
        rows.append((f"{count} ControlNet{'' if count == 1 else 's'} ({preprocessor})", result))
        runs[str(count)] = result
        del controlnets
    pre_ms = preprocess_ms(preprocessor, depth, depth_resolution, plan, device, dtype, max(5, plan.frames // 2))
    table = format_table(rows)
    table += f"\npreprocessor {preprocessor} alone (eager, {load.frame_buffer_size}x{load.width}x{load.height}): " \
             f"{pre_ms:.2f} ms"
    result = {"model": load.model, "family": parts.family.value, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "width": load.width, "height": load.height, "t_index_list": plan.live.t_index_list,
              "cfg": load.cfg_type, "frame_buffer_size": load.frame_buffer_size, "frames": plan.frames,
              "preprocessor": preprocessor, "depth_model": depth_model if preprocessor == "depth" else None,
              "preprocess_ms_median": round(pre_ms, 3), "controlnets": runs}
    return table, result
