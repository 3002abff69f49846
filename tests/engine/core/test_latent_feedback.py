from __future__ import annotations

import torch

from engine.core.latent_feedback import LatentFeedback, SceneCut

SHAPE = (2, 4, 8, 8)


def test_fraction_zero_returns_the_input_bit_for_bit_and_nothing_blends_before_a_first_output():
    fb = LatentFeedback(SHAPE, torch.device("cpu"), torch.float32)
    x = torch.randn(SHAPE)
    fb.set_fraction(0.5)
    assert torch.equal(fb.mix(x), x)  # no previous output yet
    fb.keep(torch.ones(SHAPE))
    fb.kept()
    torch.testing.assert_close(fb.mix(x), 0.5 * x + 0.5)
    fb.set_fraction(0.0)
    assert torch.equal(fb.mix(x), x)


def test_forget_stops_the_blend_until_the_next_output_and_buffers_stay_put():
    fb = LatentFeedback(SHAPE, torch.device("cpu"), torch.float32)
    buffers = (fb.previous.data_ptr(), fb.weight.data_ptr())
    x = torch.randn(SHAPE)
    fb.set_fraction(0.3)
    fb.keep(torch.zeros(SHAPE))
    fb.kept()
    torch.testing.assert_close(fb.mix(x), 0.7 * x)
    fb.forget()
    assert torch.equal(fb.mix(x), x)
    fb.kept()
    torch.testing.assert_close(fb.mix(x), 0.7 * x)
    assert buffers == (fb.previous.data_ptr(), fb.weight.data_ptr())


def sample(value: int, size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(value)
    return torch.randint(0, 256, (1, size, size, 3), generator=generator, dtype=torch.uint8)


def test_scene_cut_compares_consecutive_frames_against_the_threshold():
    cut = SceneCut(0.9)
    a = sample(1)
    assert not cut.is_cut(a)  # nothing to compare with yet
    assert not cut.is_cut(a.clone()) and cut.last_cosine > 0.999
    drifted = (a.int() + 3).clamp(0, 255).to(torch.uint8)
    assert not cut.is_cut(drifted)
    assert cut.is_cut(torch.zeros_like(a)) and cut.last_cosine == 0.0  # a cut to black
    assert cut.is_cut(a)  # and back


def test_scene_cut_threshold_zero_never_cuts_and_a_size_change_is_no_cut():
    cut = SceneCut(0.0)
    assert not any(cut.is_cut(s) for s in (sample(1), torch.zeros_like(sample(1)), sample(2)))
    cut.threshold = 0.99
    cut.reset()
    assert not cut.is_cut(sample(3))
    assert not cut.is_cut(sample(4, size=4))  # another size: nothing to compare with
    assert cut.is_cut(sample(5, size=4))
