"""The depth preprocessor: a depth network's relative depth as a 0..1 map at the model's size."""

from __future__ import annotations

import pytest
import torch

from engine.core.preprocess import make_preprocessor, passthrough
from engine.core.preprocess.depth import DepthMap
from engine.models.depth import build_random_depth_model


@pytest.fixture(scope="module")
def depth_model():
    return build_random_depth_model().eval()


def test_depth_is_a_full_range_map_per_frame_at_the_frame_size(depth_model):
    depth = DepthMap(depth_model, 56)
    frames = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        out = depth(frames)
    assert out.shape == (2, 3, 64, 48)
    for frame in out:
        assert float(frame.min()) == pytest.approx(0.0, abs=0.02) and float(frame.max()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(out[:, 0], out[:, 1])  # grey: the same map on every channel
    with torch.no_grad():
        other = depth(torch.rand(2, 3, 64, 48))
    assert not torch.allclose(out, other)  # it follows its input


def test_a_flat_frame_gives_a_finite_map(depth_model):
    with torch.no_grad():
        out = DepthMap(depth_model, 56)(torch.full((1, 3, 32, 32), 0.5))
    assert bool(torch.isfinite(out).all())


def test_make_preprocessor_names():
    assert make_preprocessor("passthrough", device="cpu", dtype=torch.float32) is passthrough
    with pytest.raises(ValueError, match="needs a depth model"):
        make_preprocessor("depth", device="cpu", dtype=torch.float32)
