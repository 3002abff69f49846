"""The one place pixels change layout: rgba_u8 (F,H,W,4 uint8) <-> img_pm1 (F,3,H,W float in [-1, 1])."""

from __future__ import annotations

import numpy as np
import torch

from engine.errors import FrameError


def rgba_u8_to_img_pm1(rgba_u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return rgba_u8[..., :3].permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


def img_pm1_to_rgb_u8(img_pm1: torch.Tensor) -> torch.Tensor:
    """(F,3,H,W) in [-1,1] -> (F,H,W,3) uint8, rounded, on the same device (only bytes leave it)."""
    return ((img_pm1.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


MAX_SIDE = 16384


def as_frame_batch(frame: np.ndarray | torch.Tensor, frames: int, height: int, width: int,
                   any_size: bool = False) -> torch.Tensor:
    """Validate an input frame (H,W,4) or batch (F,H,W,4) of uint8 and return it as a torch view.

    With `any_size`, frames of any height and width (1..16384) pass; they are fitted later.
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise FrameError(f"input frame must be uint8 RGBA, got dtype {frame.dtype}")
        tensor = torch.from_numpy(frame)
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8:
            raise FrameError(f"input frame must be uint8 RGBA, got dtype {frame.dtype}")
        tensor = frame
    else:
        raise FrameError(f"input frame must be a numpy array or torch tensor, got {type(frame).__name__}")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if any_size and tensor.dim() == 4 and tensor.shape[0] == frames and tensor.shape[3] == 4 \
            and 1 <= tensor.shape[1] <= MAX_SIDE and 1 <= tensor.shape[2] <= MAX_SIDE:
        return tensor
    expected = (frames, height, width, 4)
    if tuple(tensor.shape) != expected:
        hint = " (resize/fit it to the model size first)" if tensor.dim() == 4 and tensor.shape[-1] == 4 else ""
        shape = tuple(frame.shape)
        raise FrameError(f"input frame has shape {shape}; this pipeline takes {expected[1:]} RGBA uint8"
                         f"{'' if frames == 1 else f' x {frames} frames'}{hint}")
    return tensor
