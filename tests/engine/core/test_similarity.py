from __future__ import annotations

import random

import pytest
import torch

from engine.core.similarity import SimilarityFilter, skip_probability


def test_skip_probability_ramps_from_threshold_to_one():
    assert skip_probability(0.5, 0.98) == 0.0
    assert skip_probability(0.98, 0.98) == 0.0
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(1.0, 0.98) == pytest.approx(1.0)
    assert skip_probability(1.0, 1.0) == 0.0


def test_identical_frames_skip_up_to_max_skip_then_refresh():
    flt = SimilarityFilter(threshold=0.9, max_skip=3, rng=random.Random(1))
    frame = torch.rand(16, 16, 3)
    decisions = [flt.should_skip(frame) for _ in range(9)]
    # first frame is processed; then identical frames (cos = 1, p = 1) skip 3 times, refresh, repeat
    assert decisions == [False, True, True, True, False, True, True, True, False]


def test_clearly_different_frames_are_always_processed():
    flt = SimilarityFilter(threshold=0.98, max_skip=100, rng=random.Random(2))
    gen = torch.Generator().manual_seed(0)
    frames = [torch.rand(16, 16, 3, generator=gen) - 0.5 for _ in range(50)]
    assert not any(flt.should_skip(f) for f in frames)


def test_decisions_are_deterministic_for_a_seeded_rng():
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(16, 16, 3, generator=gen)
    frames = [base + 0.02 * torch.rand(16, 16, 3, generator=gen) for _ in range(60)]

    def run(seed):
        flt = SimilarityFilter(threshold=0.99, max_skip=5, rng=random.Random(seed))
        return [flt.should_skip(f) for f in frames]

    first = run(7)
    assert first == run(7)
    assert any(first) and not all(first)  # partly similar frames give a mix


def test_reset_forgets_the_reference_frame():
    flt = SimilarityFilter(threshold=0.5, max_skip=10, rng=random.Random(0))
    frame = torch.ones(4, 4, 3)
    assert flt.should_skip(frame) is False
    assert flt.should_skip(frame) is True
    flt.reset()
    assert flt.should_skip(frame) is False
