"""Stochastic similarity filter (StreamDiffusion sec. 3.5): skip the model on near-static input.

The skip probability rises linearly from 0 at cosine similarity `threshold` to 1 at 1.0;
after `max_skip` consecutive skips a frame is processed anyway, so slow drifts still land.
The RNG is injected, so tests (and replays) are deterministic.
"""

from __future__ import annotations

import random

import torch


def skip_probability(cosine: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 0.0
    return max(0.0, (cosine - threshold) / (1.0 - threshold))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two frames' samples (float copies of uint8 pixels: 0..1, 0 against a black frame)."""
    a, b = a.flatten(), b.flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))


class SimilarityFilter:
    """Decides per frame whether the model may be skipped; keeps its own reference frame.

    It works on a small float view of the input (the caller passes e.g. a strided
    subsample of the uint8 frame), so the decision costs microseconds and, on a GPU
    machine, happens on the host before the frame is uploaded at all.
    """

    def __init__(self, threshold: float = 0.98, max_skip: int = 10, rng: random.Random | None = None,
                 enabled: bool = True):
        self.rng = rng or random.Random(0)
        self.enabled = enabled
        self.configure(threshold, max_skip)
        self._reference: torch.Tensor | None = None
        self._current: torch.Tensor | None = None
        self.skipped_in_row = 0
        self.last_cosine = 0.0

    def configure(self, threshold: float, max_skip: int) -> None:
        """threshold in 0..1, max_skip >= 0 (LiveParams' ranges, checked where values come in)."""
        self.threshold, self.max_skip = float(threshold), max_skip

    def reset(self) -> None:
        self._reference = None
        self.skipped_in_row = 0

    def should_skip(self, sample: torch.Tensor) -> bool:
        """True when the frame whose `sample` this is may reuse the last output."""
        if self._current is None or self._current.shape != sample.shape:
            self._current = torch.empty(sample.shape, dtype=torch.float32, device=sample.device)
            self._reference = None
        self._current.copy_(sample)
        if not self.enabled or self._reference is None:
            return self._accept()
        self.last_cosine = cosine(self._current, self._reference)
        if self.skipped_in_row < self.max_skip and self.rng.random() < skip_probability(self.last_cosine,
                                                                                         self.threshold):
            self.skipped_in_row += 1
            return True
        return self._accept()

    def _accept(self) -> bool:
        if self._reference is None or self._reference.shape != self._current.shape:
            self._reference = torch.empty_like(self._current)
        self._reference.copy_(self._current)
        self.skipped_in_row = 0
        return False
