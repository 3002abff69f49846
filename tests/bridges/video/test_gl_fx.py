"""GLSL passes against engine/core/fx.py and engine/core/fit.py, on a headless context (Mesa llvmpipe in CI).

Needs moderngl and EGL (Debian: libegl1 libgl1 libgl1-mesa-dri); without them the GL tests
skip with the reason, and only the error-message tests run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from bridges.video import gl_fx
from bridges.video.gl_fx import GlFx, contain_box
from engine.core.fit import cover_crop_box, fit_rgba_u8
from engine.core.fx import feedback_mix, grade, temporal_blend
from engine.core.pixels import img_pm1_to_rgb_u8, rgba_u8_to_img_pm1
from engine.errors import BridgeUnavailable, FrameError

SIZE = 64


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    try:
        context = gl_fx.create_context()
    except BridgeUnavailable as exc:
        pytest.skip(str(exc))
    yield context
    context.release()


@pytest.fixture(scope="module")
def gl(ctx) -> Iterator[GlFx]:
    fx = GlFx(SIZE, SIZE, ctx=ctx)
    yield fx
    fx.close()


def random_rgba(height: int = SIZE, width: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)


def torch_ref(fn: Callable[..., torch.Tensor], *frames: np.ndarray) -> np.ndarray:
    """The engine/core/fx.py result on rgba_u8 frames, through the pipeline's own conversions; alpha of the first."""
    imgs = [rgba_u8_to_img_pm1(torch.from_numpy(f)[None], torch.float32) for f in frames]
    rgb = img_pm1_to_rgb_u8(fn(*imgs))[0].numpy()
    return np.concatenate([rgb, frames[0][..., 3:]], axis=-1)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def s(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


# ---- same math as engine/core/fx.py ----------------------------------------------------------------------

GRADES = [
    {},
    {"contrast": 1.7, "brightness": -0.2},
    {"contrast": 0.3, "brightness": 0.15},
    {"saturation": 0.0},
    {"saturation": 2.5},
    {"hue": 120.0},
    {"hue": -75.0},
    {"brightness": 0.05, "contrast": 1.2, "saturation": 1.4, "hue": 33.0},
    {"brightness": 1.0},
]


@pytest.mark.parametrize("params", GRADES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "neutral")
def test_grade_matches_torch(gl, params):
    frame = random_rgba()
    values = {"brightness": 0.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, **params}
    got = gl.grade(frame, **values).copy()
    expected = torch_ref(lambda img: grade(img, s(values["brightness"]), s(values["contrast"]),
                                           s(values["saturation"]), s(values["hue"])), frame)
    assert max_diff(got, expected) <= 1
    assert np.array_equal(got[..., 3], frame[..., 3])


def test_neutral_grade_returns_the_frame_exactly(gl):
    frame = random_rgba(seed=3)
    assert np.array_equal(gl.grade(frame), frame)


@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_feedback_and_temporal_blend_match_torch(gl, amount):
    frame, other = random_rgba(seed=1), random_rgba(seed=2)
    got_feedback = gl.feedback(frame, other, amount).copy()
    got_blend = gl.temporal_blend(frame, other, amount).copy()
    assert max_diff(got_feedback, torch_ref(lambda a, b: feedback_mix(a, b, s(amount)), frame, other)) <= 1
    assert max_diff(got_blend, torch_ref(lambda a, b: temporal_blend(a, b, s(amount)), frame, other)) <= 1
    if amount == 0.0:
        assert np.array_equal(got_feedback, frame) and np.array_equal(got_blend, frame)
    if amount == 1.0:
        assert np.array_equal(got_feedback[..., :3], other[..., :3])
        assert np.array_equal(got_feedback[..., 3], frame[..., 3])


def test_out_buffer_and_row_order(gl):
    frame = np.zeros((SIZE, SIZE, 4), np.uint8)
    frame[0, :, 0] = 255  # top row red: must stay the top row (no flip anywhere)
    frame[:, 0, 1] = 255  # left column green
    out = np.empty_like(frame)
    assert gl.grade(frame, out=out) is out
    assert np.array_equal(out, frame)
    assert gl.grade(frame) is gl.grade(frame)  # the default result is GlFx's own buffer


def test_wrong_frames_are_rejected(gl):
    with pytest.raises(FrameError, match="fit it first"):
        gl.grade(random_rgba(32, 64))
    with pytest.raises(FrameError, match="uint8"):
        gl.grade(random_rgba().astype(np.float32))
    with pytest.raises(FrameError, match="fit mode"):
        gl.fit(random_rgba(), mode="stretch")


# ---- fit: engine/core/fit.py geometry --------------------------------------------------------------------

def ramps(height: int, width: int, step_x: float, step_y: float) -> np.ndarray:
    """Red rises along x, green along y, blue 0, alpha 255: a position shows up in the values."""
    frame = np.zeros((height, width, 4), np.uint8)
    frame[..., 0] = np.clip(np.arange(width) * step_x, 0, 255).astype(np.uint8)[None]
    frame[..., 1] = np.clip(np.arange(height) * step_y, 0, 255).astype(np.uint8)[:, None]
    frame[..., 3] = 255
    return frame


@pytest.mark.parametrize("shape", [(24, 64), (64, 20), (40, 40), (20, 50)])
def test_fit_enlarging_matches_engine_fit(ctx, shape):
    # Enlarging is plain bilinear in both, so the crop geometry must agree to the pixel:
    # a one-pixel shift would show as 4-10 LSB on these steep ramps.
    with GlFx(48, 32, ctx=ctx) as fx:
        frame = ramps(*shape, step_x=4, step_y=10)
        assert max_diff(fx.fit(frame), fit_rgba_u8(frame, 32, 48)) <= 1
        noise = random_rgba(*shape, seed=5)
        assert max_diff(fx.fit(noise), fit_rgba_u8(noise, 32, 48)) <= 1


@pytest.mark.parametrize("shape", [(270, 480), (480, 270), (200, 200)])
def test_fit_shrinking_crops_like_cover_crop_box_without_bleeding(ctx, shape):
    height, width = shape
    top, left, crop_h, crop_w = cover_crop_box(height, width, 32, 32)
    frame = ramps(height, width, step_x=255 / width, step_y=255 / height)
    outside = np.ones((height, width), bool)
    outside[top:top + crop_h, left:left + crop_w] = False
    frame[outside, 2] = 255  # marks everything the crop must drop
    with GlFx(32, 32, ctx=ctx) as fx:
        got = fx.fit(frame).copy()
    assert got[..., 2].max() == 0
    assert max_diff(got, fit_rgba_u8(frame, 32, 32)) <= 2


def test_fit_reuses_its_source_texture_until_the_size_changes(ctx):
    with GlFx(32, 32, ctx=ctx) as fx:
        fx.fit(random_rgba(50, 70))
        texture = fx._src
        fx.fit(random_rgba(50, 70, seed=1))
        assert fx._src is texture
        fx.fit(random_rgba(70, 50))
        assert fx._src is not texture


def test_fit_contain_letterboxes(ctx):
    frame = np.full((90, 160, 4), (200, 100, 50, 255), np.uint8)
    top, left, box_h, box_w = contain_box(90, 160, 64, 64)
    assert (top, left, box_h, box_w) == (14, 0, 36, 64)
    with GlFx(64, 64, ctx=ctx) as fx:
        got = fx.fit(frame, mode="contain", border=(0.0, 0.0, 1.0, 1.0))
    assert (got[top:top + box_h] == frame[0, 0]).all()
    bars = np.concatenate([got[:top], got[top + box_h:]])
    assert (bars == np.array([0, 0, 255, 255], np.uint8)).all()


# ---- errors (run everywhere) ------------------------------------------------------------------------

def test_missing_moderngl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "moderngl", None)
    with pytest.raises(BridgeUnavailable, match=r"pip install 'streamvj\[gl\]'"):
        GlFx(8, 8)
    ok, message = gl_fx.is_available()
    assert not ok and "streamvj[gl]" in message


def test_missing_drivers_give_one_line_naming_the_packages(monkeypatch):
    fake = ModuleType("moderngl")

    def create_standalone_context(**kwargs: Any) -> Any:
        raise Exception("libEGL.so: cannot open shared object file\nmore detail")

    fake.create_standalone_context = create_standalone_context  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moderngl", fake)
    with pytest.raises(BridgeUnavailable) as info:
        gl_fx.create_context()
    message = str(info.value)
    assert "\n" not in message and "libEGL.so" in message
    assert "libegl1 libgl1 libgl1-mesa-dri" in message
