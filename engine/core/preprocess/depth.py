"""Depth maps from a depth network (Depth Anything V2 and its kind, through transformers).

The frame is resized to the network's square input, normalised as the network was trained
(ImageNet mean/std), and its relative depth (larger = nearer) is scaled per frame to 0..1
with tensor min/max (no host sync), then resized back: white is near, black far, which is
what depth ControlNets were trained on. Runs inside the map step (engine/core/control_maps.py),
compiled and captured with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthMap:
    """rgb01 (F,3,H,W) -> depth (F,3,H,W) in 0..1 through `model` at `resolution` x `resolution`."""

    def __init__(self, model: torch.nn.Module, resolution: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.model, self.resolution = model, int(resolution)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)

    def __call__(self, rgb01: torch.Tensor) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        x = F.interpolate(rgb01, size=size, mode="bilinear", align_corners=False, antialias=True)
        depth = self.model(pixel_values=(x - self.mean) / self.std).predicted_depth[:, None]
        lo = depth.amin(dim=(2, 3), keepdim=True)
        hi = depth.amax(dim=(2, 3), keepdim=True)
        depth = (depth - lo) / (hi - lo).clamp_min(1e-6)  # a flat map (all one depth) stays 0, never NaN
        depth = F.interpolate(depth, size=tuple(rgb01.shape[-2:]), mode="bilinear", align_corners=False)
        return depth.clamp(0.0, 1.0).expand(-1, 3, -1, -1).to(rgb01.dtype)
