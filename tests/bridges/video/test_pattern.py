from __future__ import annotations

import numpy as np
import pytest

from bridges.video.pattern import PatternSource, render_pattern
from engine.errors import ConfigError
from engine.realtime.frames import FrameSource, check_rgba_u8
from tests.fake_clock import FakeClock


def _counter_value(frame: np.ndarray) -> int:
    """Read the 16-cell binary counter back from the bottom band (cell centres)."""
    h, w = frame.shape[:2]
    row = frame[h - 2, :, 0]
    bits = [int(row[(2 * cell + 1) * w // 32] > 127) for cell in range(16)]
    return int("".join(map(str, bits)), 2)


def test_render_is_deterministic_and_well_formed() -> None:
    a = render_pattern(42, 96, 64)
    b = render_pattern(42, 96, 64)
    check_rgba_u8(a, "pattern")
    assert a.shape == (64, 96, 4) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.all(a[..., 3] == 255)


def test_render_is_animated() -> None:
    frames = [render_pattern(i, 96, 64) for i in (0, 1, 10, 100)]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert not np.array_equal(frames[i], frames[j])


@pytest.mark.parametrize("index", [0, 1, 5, 255, 1000, 65535, 65536 + 7])
def test_counter_band_encodes_the_index(index: int) -> None:
    assert _counter_value(render_pattern(index, 128, 64)) == index & 0xFFFF


def test_render_into_out_buffer() -> None:
    out = np.zeros((32, 48, 4), dtype=np.uint8)
    result = render_pattern(3, 48, 32, out=out)
    assert result is out
    assert np.array_equal(out, render_pattern(3, 48, 32))
    with pytest.raises(ValueError):
        render_pattern(3, 48, 32, out=np.zeros((32, 48, 3), dtype=np.uint8))


def test_bad_sizes_and_fps_are_rejected() -> None:
    with pytest.raises(ConfigError):
        render_pattern(0, 4, 64)
    with pytest.raises(ConfigError):
        PatternSource(64, 64, fps=0)


def test_source_follows_the_clock() -> None:
    clock = FakeClock()
    src = PatternSource(64, 48, fps=10.0, clock=clock)
    assert isinstance(src, FrameSource)
    assert src.is_available() == (True, "")
    src.open()
    first = src.read_latest()
    assert first is not None and src.frame_index == 0
    assert np.array_equal(first, render_pattern(0, 64, 48))
    assert src.read_latest() is None  # clock has not moved
    clock.t += 0.05
    assert src.read_latest() is None  # still inside frame 0
    clock.t += 0.06
    second = src.read_latest()
    assert second is not None and src.frame_index == 1
    assert np.array_equal(second, render_pattern(1, 64, 48))
    clock.t += 0.5  # a slow consumer gets the newest frame, not a backlog
    third = src.read_latest()
    assert third is not None and src.frame_index == 6
    assert np.array_equal(third, render_pattern(6, 64, 48))
    src.close()


def test_source_alternates_two_buffers() -> None:
    clock = FakeClock()
    src = PatternSource(32, 32, fps=1.0, clock=clock)
    src.open()
    a = src.read_latest()
    a_copy = a.copy()
    clock.t += 1
    b = src.read_latest()
    assert a is not b
    assert np.array_equal(a, a_copy)  # still valid after the next call
    clock.t += 1
    c = src.read_latest()
    assert c is a  # the next-but-one call reuses the first buffer


def test_read_before_open_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        PatternSource(32, 32).read_latest()
