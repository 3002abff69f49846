"""The stream batch's noise from seeds: one seed's draw, or a slerp of several, drawn once each.

A seed crossfade changes the weights every frame; each seed's noise is drawn once (on the CPU,
so every device draws the same numbers) and kept on the device, so the crossfade costs no draw
and no host copy.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from engine.core.blend import blend

SEED_CACHE = 16  # seeds kept on the device


def seed_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The noise of one seed, from a CPU generator so every device draws the same numbers."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


class SeedNoise:
    """Noise of `shape` on `device` for a seed blend; the most recently used SEED_CACHE seeds stay drawn."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def mix(self, seeds: list[tuple[int, float]]) -> torch.Tensor:
        """One seed's noise, or the slerp of several by their weights."""
        noises = []
        for seed, _ in seeds:
            noise = self.cache.pop(seed, None)
            if noise is None:
                noise = seed_noise(seed, self.shape).to(self.device, self.dtype)
            self.cache[seed] = noise  # most recent last
            noises.append(noise)
        while len(self.cache) > SEED_CACHE:
            self.cache.popitem(last=False)
        return noises[0] if len(noises) == 1 else blend(noises, [w for _, w in seeds], "slerp")
