from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.pixels import as_frame_batch, img_pm1_to_rgb_u8, rgba_u8_to_img_pm1
from engine.errors import FrameError


def test_round_trip_through_img_pm1_is_exact_for_every_level():
    levels = torch.arange(256, dtype=torch.uint8)
    rgba = torch.stack([levels, levels.flip(0), levels, torch.full_like(levels, 255)], -1).view(1, 16, 16, 4)
    img = rgba_u8_to_img_pm1(rgba, torch.float32)
    assert img.shape == (1, 3, 16, 16) and float(img.min()) == -1.0 and float(img.max()) == 1.0
    assert torch.equal(img_pm1_to_rgb_u8(img), rgba[..., :3])


def test_out_of_range_values_are_clamped_not_wrapped():
    img = torch.tensor([[-3.0, 3.0]]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert img_pm1_to_rgb_u8(img)[0, 0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_frame_batch_is_a_view_not_a_copy():
    frame = np.zeros((8, 8, 4), np.uint8)
    batch = as_frame_batch(frame, 1, 8, 8)
    frame[0, 0, 0] = 7
    assert batch.shape == (1, 8, 8, 4) and int(batch[0, 0, 0, 0]) == 7


def test_any_size_accepts_other_sizes_but_still_checks_the_layout():
    assert as_frame_batch(np.zeros((5, 9, 4), np.uint8), 1, 8, 8, any_size=True).shape == (1, 5, 9, 4)
    with pytest.raises(FrameError):
        as_frame_batch(np.zeros((5, 9, 3), np.uint8), 1, 8, 8, any_size=True)
    with pytest.raises(FrameError):
        as_frame_batch(np.zeros((2, 5, 9, 4), np.uint8), 1, 8, 8, any_size=True)
