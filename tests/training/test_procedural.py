from __future__ import annotations

import torch

from training.procedural import WORDS, caption, pair_batch, random_layout, random_paint, render


def test_pictures_are_seeded_and_in_range():
    a = pair_batch(torch.Generator().manual_seed(3), 6, 32)
    b = pair_batch(torch.Generator().manual_seed(3), 6, 32)
    assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target) and a.captions == b.captions
    assert a.source.shape == (6, 3, 32, 32) and a.source.min() >= -1 and a.source.max() <= 1


def test_pairs_share_their_layout_and_change_the_paint():
    batch = pair_batch(torch.Generator().manual_seed(0), 24, 32, same_fraction=0.0)
    changed = (batch.source - batch.target).flatten(1).abs().amax(1) > 0
    assert changed.float().mean() > 0.8
    # Same layout: the edges (where either picture changes fast) sit mostly in the same places.
    def edge(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().sum(1) > 0.2
    overlap = (edge(batch.source) & edge(batch.target)).sum() / edge(batch.target).sum()
    assert overlap > 0.4


def test_a_layout_renders_at_any_size_with_the_same_picture():
    g = torch.Generator().manual_seed(5)
    layout = random_layout(g)
    paint = random_paint(g, layout)
    small, large = render(layout, paint, 32), render(layout, paint, 128)
    down = torch.nn.functional.avg_pool2d(large[None], 4)[0]
    assert (down - small).abs().mean() < 0.06


def test_captions_use_only_the_known_words():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        layout = random_layout(g)
        text = caption(layout, random_paint(g, layout))
        assert set(text.split()) <= set(WORDS), text
