"""Canny edges in pure torch: blur, Sobel, non-maximum suppression, double threshold, hysteresis.

Every stage is a fixed sequence of tensor ops (no Python branch on pixel values, no host
sync), so it compiles and graph-captures inside the map step (engine/core/control_maps.py). The thresholds are 0-d
buffers written by `set_thresholds` (live: canny_low, canny_high), in units of the Sobel
gradient of 0..1 luminance divided by 4 (a full black-to-white step is 1). Hysteresis
is HYSTERESIS_STEPS rounds of "weak pixels touching a strong one become strong": a fixed
count, so weak chains longer than that stay partly off (OpenCV follows them to the end;
a data-dependent loop has no place in a captured step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HYSTERESIS_STEPS = 4
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_5x5(sigma: float = 1.0) -> torch.Tensor:
    x = torch.arange(5, dtype=torch.float64) - 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, 5, 5)


def hysteresis(strong: torch.Tensor, weak: torch.Tensor, steps: int = HYSTERESIS_STEPS) -> torch.Tensor:
    """0/1 maps (F,1,H,W): the weak pixels connected to a strong one within `steps` pixels (8-neighbourhood)."""
    for _ in range(steps):
        strong = weak * F.max_pool2d(strong, 3, stride=1, padding=1)
    return strong


class Canny:
    """rgb01 (F,3,H,W) -> edges (F,3,H,W): 1 on edges, 0 elsewhere; buffers allocated once."""

    def __init__(self, low: float = 0.08, high: float = 0.2, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.luma = torch.tensor(_LUMA, device=device, dtype=dtype).view(1, 3, 1, 1)
        self.blur = _gaussian_5x5().to(device=device, dtype=dtype)
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.sobel = torch.stack([sobel_x, sobel_x.t()]).view(2, 1, 3, 3).to(device=device, dtype=dtype)
        self.low = torch.zeros((), device=device, dtype=dtype)
        self.high = torch.zeros((), device=device, dtype=dtype)
        self.set_thresholds(low, high)

    def set_thresholds(self, low: float, high: float) -> None:
        """Either order: the larger is the strong-edge threshold."""
        self.low.fill_(min(low, high))
        self.high.fill_(max(low, high))

    def __call__(self, rgb01: torch.Tensor) -> torch.Tensor:
        gray = (rgb01 * self.luma).sum(1, keepdim=True)
        gray = F.conv2d(F.pad(gray, (2, 2, 2, 2), mode="replicate"), self.blur)
        grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), self.sobel)
        gx, gy = grad[:, :1], grad[:, 1:]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        thin = magnitude * self._is_local_max(magnitude, gx, gy)
        edges = hysteresis((thin >= self.high).to(rgb01.dtype), (thin >= self.low).to(rgb01.dtype))
        return edges.expand(-1, 3, -1, -1)

    @staticmethod
    def _is_local_max(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """1 where the magnitude is not below both neighbours across the edge (gradient direction in 4 bins)."""
        padded = F.pad(magnitude, (1, 1, 1, 1))
        h, w = magnitude.shape[-2:]

        def shifted(dy: int, dx: int) -> torch.Tensor:
            return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

        # Angle of the gradient folded to [0, 180): 0 = horizontal gradient (a vertical edge).
        angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
        bins = ((angle + 22.5) // 45.0) % 4  # 0: 0 deg, 1: 45, 2: 90, 3: 135
        keep = torch.zeros_like(magnitude)
        # Image rows grow downwards: a 45 deg gradient (+x, +y) points to the lower right.
        for b, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
            is_max = (magnitude >= shifted(dy, dx)) & (magnitude >= shifted(-dy, -dx))
            keep = keep + ((bins == b) & is_max).to(magnitude.dtype)
        return keep
