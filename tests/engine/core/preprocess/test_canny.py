"""Canny in pure torch: thin edges where the picture steps, none elsewhere, live thresholds."""

from __future__ import annotations

import pytest
import torch

from engine.core.preprocess.canny import Canny, hysteresis


def square(size: int = 64, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    img = torch.full((1, 3, size, size), lo)
    img[..., 16:48, 16:48] = hi
    return img


def test_edges_trace_the_square_and_nothing_else():
    edges = Canny(0.1, 0.3)(square())
    assert edges.shape == (1, 3, 64, 64) and set(edges.unique().tolist()) <= {0.0, 1.0}
    mask = edges[0, 0].bool()
    near_border = torch.zeros(64, 64, dtype=torch.bool)
    near_border[14:50, 14:50] = True
    near_border[18:46, 18:46] = False
    assert not bool((mask & ~near_border).any())  # nothing in the flat inside or outside
    for side in (mask[14:50, 14:18], mask[14:50, 46:50], mask[14:18, 14:50], mask[46:50, 14:50]):
        assert int(side.any(dim=0).sum() + side.any(dim=1).sum()) > 0
    # Thin: across the left edge, at most the two pixels either side of the step.
    assert int(mask[32, 10:22].sum()) <= 2


def test_thresholds_are_live_and_write_into_the_same_buffers():
    canny = Canny(0.1, 0.3)
    low, high = canny.low.data_ptr(), canny.high.data_ptr()
    faint = square(lo=0.4, hi=0.5)  # a step of 0.1: gradient ~0.1
    assert not bool(canny(faint).any())
    canny.set_thresholds(0.02, 0.05)
    assert bool(canny(faint).any())
    assert (canny.low.data_ptr(), canny.high.data_ptr()) == (low, high)
    canny.set_thresholds(0.9, 0.02)  # either order: the larger is the strong threshold
    assert (float(canny.high), float(canny.low)) == pytest.approx((0.9, 0.02))


def test_a_weak_edge_alone_is_dropped():
    img = torch.zeros(1, 3, 64, 64)
    img[..., :, 32:] = 0.12  # a weak step, full height
    assert not bool(Canny(0.05, 0.5)(img).any())
    assert bool(Canny(0.05, 0.07)(img).any())


def test_hysteresis_keeps_weak_pixels_connected_to_strong_ones_within_its_rounds():
    weak = torch.zeros(1, 1, 16, 16)
    weak[0, 0, 8, :] = 1  # a weak line across
    weak[0, 0, 2, 2:6] = 1  # and a weak stub touching nothing strong
    strong = torch.zeros(1, 1, 16, 16)
    strong[0, 0, 8, 0] = 1
    kept = hysteresis(strong, weak, steps=4)[0, 0]
    assert kept[8].tolist() == [1.0] * 5 + [0.0] * 11  # grown 4 pixels along the weak line
    assert not bool(kept[2].any())


def test_batch_frames_are_independent():
    canny = Canny(0.1, 0.3)
    both = canny(torch.cat([square(), torch.zeros(1, 3, 64, 64)]))
    assert bool(both[0].any()) and not bool(both[1].any())
