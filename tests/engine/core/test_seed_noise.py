"""engine/core/seed_noise.py: each seed drawn once, the same numbers on every device, the cache bounded."""

from __future__ import annotations

import torch

from engine.core.seed_noise import SEED_CACHE, SeedNoise, seed_noise


def test_a_seed_is_drawn_once_and_a_blend_hits_its_endpoints():
    noise = SeedNoise((1, 4, 8, 8), torch.device("cpu"), torch.float32)
    only = noise.mix([(3, 1.0)])
    assert torch.equal(only, seed_noise(3, (1, 4, 8, 8)))
    torch.testing.assert_close(noise.mix([(3, 1.0), (4, 0.0)]), only)
    assert noise.cache[3] is only  # reused, not drawn again


def test_the_least_recently_used_seeds_leave_the_cache():
    noise = SeedNoise((2,), torch.device("cpu"), torch.float32)
    for seed in range(SEED_CACHE + 3):
        noise.mix([(seed, 1.0)])
    noise.mix([(3, 1.0)])  # used again: most recent
    noise.mix([(100, 1.0)])
    assert len(noise.cache) == SEED_CACHE and 3 in noise.cache and 4 not in noise.cache
