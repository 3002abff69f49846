from __future__ import annotations

import numpy as np

from engine.core.fit import cover_crop_box, fit_rgba_u8


def test_matching_frames_pass_through_untouched():
    frame = np.zeros((64, 64, 4), np.uint8)
    assert fit_rgba_u8(frame, 64, 64) is frame


def test_wide_frames_are_cropped_at_the_sides():
    assert cover_crop_box(1080, 1920, 512, 512) == (0, 420, 1080, 1080)
    assert cover_crop_box(512, 256, 256, 256) == (128, 0, 256, 256)


def test_resize_keeps_flat_colour_and_shape():
    frame = np.full((1080, 1920, 4), (10, 200, 30, 255), np.uint8)
    out = fit_rgba_u8(frame, 64, 96)
    assert out.shape == (64, 96, 4) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out == np.array([10, 200, 30, 255], np.uint8)).all()


def test_centre_is_kept():
    frame = np.zeros((100, 300, 4), np.uint8)
    frame[:, 100:200] = 255  # the centred square
    out = fit_rgba_u8(frame, 50, 50)
    assert out.min() == 255
