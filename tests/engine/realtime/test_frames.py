from __future__ import annotations

import numpy as np
import pytest

from engine.errors import FrameError
from engine.realtime.frames import check_rgba_u8


def test_valid_frame_passes_through():
    frame = np.zeros((4, 6, 4), np.uint8)
    assert check_rgba_u8(frame, "test") is frame


@pytest.mark.parametrize(("frame", "message"), [
    ([[0]], "numpy uint8"),
    (np.zeros((4, 6, 4), np.float32), "dtype uint8"),
    (np.zeros((4, 6, 3), np.uint8), "HxWx4"),
    (np.zeros((4, 6), np.uint8), "HxWx4"),
    (np.zeros((4, 12, 4), np.uint8)[:, ::2], "C-contiguous"),
])
def test_bad_frames_name_the_bridge_and_the_problem(frame, message):
    with pytest.raises(FrameError, match=f"spout in: .*{message}"):
        check_rgba_u8(frame, "spout in")
