"""Fit an incoming rgba_u8 frame of any size to the model's size (cover: scale, then centre-crop).

Frames that already match pass through untouched (the common case once the VJ software
sends the model's size). Others are resized on the CPU with one interpolate call; the
GPU texture stage (shaders/) does this on the device when it is in use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cover_crop_box(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred source window with the target aspect."""
    scale = max(dst_h / src_h, dst_w / src_w)
    crop_h = min(src_h, round(dst_h / scale))
    crop_w = min(src_w, round(dst_w / scale))
    return (src_h - crop_h) // 2, (src_w - crop_w) // 2, crop_h, crop_w


def fit_rgba_u8(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    top, left, crop_h, crop_w = cover_crop_box(frame.shape[0], frame.shape[1], height, width)
    window = torch.from_numpy(frame[top:top + crop_h, left:left + crop_w])
    chw = window.permute(2, 0, 1)[None].float()
    resized = F.interpolate(chw, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
