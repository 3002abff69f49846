"""Control-map preprocessors: an RGB frame (F,3,H,W in 0..1) -> a ControlNet's map, on the device.

Each is pure tensor code that runs inside the pipeline's map step (engine/core/control_maps.py,
compiled and captured like the frame step): canny (edges, live thresholds), depth (a depth
network), passthrough (the map as sent, e.g. TouchDesigner's own depth or pose render).
`make_preprocessor` builds one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.core.preprocess.canny import Canny

Preprocess = Callable[[torch.Tensor], torch.Tensor]


def passthrough(rgb01: torch.Tensor) -> torch.Tensor:
    """The map as it arrived (already fitted to the model's size)."""
    return rgb01


def make_preprocessor(name: str, *, device: torch.device | str, dtype: torch.dtype, canny: Canny | None = None,
                      depth: torch.nn.Module | None = None, depth_resolution: int = 518) -> Preprocess:
    """`name` is one of scalars.PREPROCESSORS; canny shares the pipeline's `Canny` (its live thresholds)."""
    if name == "passthrough":
        return passthrough
    if name == "canny":
        return canny if canny is not None else Canny(device=device, dtype=dtype)
    if name == "depth":
        from engine.core.preprocess.depth import DepthMap

        if depth is None:
            raise ValueError("preprocessor depth needs a depth model")
        return DepthMap(depth, depth_resolution, device=device, dtype=dtype)
    raise ValueError(f"unknown preprocessor {name!r}")
