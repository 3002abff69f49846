"""Live FX on img_pm1 tensors (F,3,H,W in [-1, 1]): feedback, temporal blend, colour grade.

These run inside the per-frame step, so they are written for torch.compile / CUDA graphs:
no host syncs, no Python branches on tensor values, and every live value is a 0-d tensor
(`FxUniforms`) that is filled in place, so a captured step sees new values without a
recompile. Whether FX run at all is decided on the host from the Python floats
(`FxUniforms.is_identity`), never from the tensors.

Order (see docs/fx.md): input -> feedback_mix -> encode/stream/decode -> grade -> temporal_blend.
grade is, in this order: contrast around mid-grey, brightness offset, saturation around
Rec.709 luma, hue rotation with the luminance-preserving RGB matrix (Haeberli 1993, the one
behind SVG/CSS `hue-rotate`, here with Rec.709 weights). A brightness of b (in [0,1] display
units) is an offset of 2b in pm1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Rec.709 luma weights (sum to 1, so luma commutes with the pm1 <-> [0,1] affine map).
LUMA_R, LUMA_G, LUMA_B = 0.2126, 0.7152, 0.0722

# The sin term of the hue rotation: rows 0 and 2 are Haeberli's; row 1 is solved from
# w^T S = 0 so luma is preserved exactly for these weights (SVG rounds it to .143 .140 -.283).
# Every row sums to 0, so grey stays grey and the matrix acts the same in pm1 and [0,1] space.
HUE_SIN = (
    (-LUMA_R, -LUMA_G, 1.0 - LUMA_B),
    ((LUMA_R * LUMA_R + LUMA_B * (1.0 - LUMA_R)) / LUMA_G, LUMA_R - LUMA_B,
     -(LUMA_R * (1.0 - LUMA_B) + LUMA_B * LUMA_B) / LUMA_G),
    (-(1.0 - LUMA_R), LUMA_G, LUMA_B),
)

# name -> (LiveParams field, neutral value: the effect leaves the image as it is). Ranges are the
# schema's (engine/config/schema.py), checked there when a value comes in.
UNIFORMS: dict[str, tuple[str, float]] = {
    "feedback": ("fx_feedback", 0.0),
    "blend": ("fx_blend", 0.0),
    "brightness": ("fx_brightness", 0.0),
    "contrast": ("fx_contrast", 1.0),
    "saturation": ("fx_saturation", 1.0),
    "hue": ("fx_hue", 0.0),
}


def feedback_mix(img: torch.Tensor, last_out: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Pre-FX: lerp(img, last_out, amount); 0 is the input untouched, 1 is the last output."""
    # lerp's two-sided formula gives exactly img at 0 and exactly last_out at 1.
    return torch.lerp(img, last_out, amount.to(img.dtype))


def temporal_blend(out: torch.Tensor, prev_out: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Post-FX anti-flicker: lerp(out, prev_out, amount). With prev_out the last shown frame
    this is an exponential moving average; higher amount = smoother and more trailing."""
    return torch.lerp(out, prev_out, amount.to(out.dtype))


def _rows(x: torch.Tensor, rows: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.cat([r * m0 + g * m1 + b * m2 for m0, m1, m2 in rows], dim=1)


def grade(img: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
          hue_deg: torch.Tensor) -> torch.Tensor:
    """Colour grade, clamped to [-1, 1]; exact identity at (0, 1, 1, 0) for in-range input.

    Saturation s and hue rotation h both act on the chroma x - luma(x) and commute, so they
    fold into one residual: x + (s cos h - 1)(x - y) + s sin h * S x (S x = S (x - y), as S's
    rows sum to 0). At the neutral values both coefficients are exactly 0, hence bit-exact.
    Elementwise rather than a 3x3 matmul: TF32 matmuls on CUDA would round the identity.
    """
    dtype = img.dtype
    x = img * contrast.to(dtype) + (2.0 * brightness).to(dtype)
    y = x[:, 0:1] * LUMA_R + x[:, 1:2] * LUMA_G + x[:, 2:3] * LUMA_B
    # Trig in float32 whatever the image dtype: fp16 would quantise the angle to ~0.1 deg.
    angle = torch.deg2rad(hue_deg.float())
    sat = saturation.float()
    k_chroma = (sat * torch.cos(angle) - 1.0).to(dtype)
    k_rotate = (sat * torch.sin(angle)).to(dtype)
    out = x + k_chroma * (x - y) + k_rotate * _rows(x, HUE_SIN)
    return out.clamp_(-1.0, 1.0)


def post_fx(out: torch.Tensor, prev_out: torch.Tensor, u: FxUniforms) -> torch.Tensor:
    """grade, then temporal_blend with the last shown frame (so a change of grade is smoothed too)."""
    graded = grade(out, u.brightness, u.contrast, u.saturation, u.hue)
    return temporal_blend(graded, prev_out, u.blend)


def _read(params: Mapping[str, Any] | Any, field: str) -> Any:
    if isinstance(params, Mapping):
        return params[field]
    return getattr(params, field)


class FxUniforms:
    """The six FX values as 0-d tensors on one device, filled in place on `update`.

    Keep them float32 (the default) even for an fp16 pipeline: the functions cast to the
    image dtype, and the hue angle needs the precision. The Python floats last given are
    kept too, for host-side decisions (`is_identity`) without reading the device.
    """

    feedback: torch.Tensor
    blend: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.values: dict[str, float] = {}
        for name, (_, neutral) in UNIFORMS.items():
            setattr(self, name, torch.full((), neutral, device=device, dtype=dtype))
            self.values[name] = neutral

    def update(self, params: Mapping[str, Any] | Any) -> None:
        """Copy fx_* values in from a LiveParams (or any object/mapping with those names).

        Only changed values are written (one fill_ each, no sync).
        """
        for name, (field, _) in UNIFORMS.items():
            value = float(_read(params, field))
            if value != self.values[name]:
                getattr(self, name).fill_(value)
                self.values[name] = value

    def is_identity(self) -> bool:
        """True when every value is neutral: the pipeline can skip FX (and their buffer) entirely."""
        return all(self.values[name] == neutral for name, (_, neutral) in UNIFORMS.items())
