"""Building test pipelines from plain keyword arguments: load-time fields go to LoadSettings,
live ones to LiveParams, both validated by the schema as a preset's would be."""

from __future__ import annotations

import random

import torch

from engine.config.schema import LiveParams, LoadSettings
from engine.core.pipeline import StreamPipeline

SIZE = 64


def make_pipeline(parts, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  backend: str = "none", fit_input: bool = False, seed_rng: int | None = 0,
                  **fields) -> StreamPipeline:
    """A SIZE x SIZE, 2-step, cfg self pipeline unless `fields` say otherwise."""
    load = {"model": "tiny", "width": SIZE, "height": SIZE, "cfg_type": "self"}
    live = {"t_index_list": [20, 40]}
    for name, value in fields.items():
        if name in LoadSettings.model_fields:
            load[name] = value
        elif name in LiveParams.model_fields:
            live[name] = value
        else:
            raise TypeError(f"{name!r} is neither a load setting nor a live parameter")
    rng = None if seed_rng is None else random.Random(seed_rng)
    return StreamPipeline(parts, LoadSettings(**load), LiveParams(**live), device=device, dtype=dtype,
                          backend=backend, fit_input=fit_input, rng=rng)
