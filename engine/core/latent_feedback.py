"""Latent feedback and scene cuts: the cheap half of streamvj's temporal consistency.

Latent feedback blends a live fraction of the previous output latent (the finished x0 the
stream batch returned, frame j of the last group for frame j of this one) into the new
input latent before it is noised: x_in <- lerp(x_in, previous, fraction). The result keeps
the last image's layout and colours where the input barely moved. One lerp and one copy
of an F x 4 x H/8 x W/8 latent per frame; with fraction 0, lerp returns its first argument
bit for bit.

A scene cut (the input jumps to a different picture) must not drag the old picture along:
`SceneCut` measures the cosine similarity between consecutive input frames (the measure of
the similarity filter, engine/core/similarity.py, on the same subsample of the host frame,
so no device sync) and reports a cut below a live threshold; the pipeline then forgets the
previous latent and the feature bank (engine/core/feature_bank.py).
"""

from __future__ import annotations

import torch

from engine.core.similarity import cosine


class LatentFeedback:
    """The previous output latent and the live fraction, both preallocated on the device."""

    def __init__(self, latent_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.previous = torch.zeros(latent_shape, device=device, dtype=dtype)
        self.weight = torch.zeros((), device=device, dtype=dtype)  # fraction, or 0 with no previous
        self.fraction = 0.0
        self._has_previous = False

    def set_fraction(self, fraction: float) -> None:
        self.fraction = float(fraction)
        self._sync_weight()

    def forget(self) -> None:
        """After a reset or a scene cut: the next input goes in unblended."""
        self._has_previous = False
        self._sync_weight()

    def _sync_weight(self) -> None:
        self.weight.fill_(self.fraction if self._has_previous else 0.0)

    def mix(self, x_in: torch.Tensor) -> torch.Tensor:
        """Inside the frame step: the input latent with the previous output blended in."""
        return torch.lerp(x_in, self.previous, self.weight)

    def keep(self, x_out: torch.Tensor) -> None:
        """Inside the frame step: this call's output latent, for the next call."""
        self.previous.copy_(x_out)

    def kept(self) -> None:
        """On the host after a step ran: from now on there is a previous latent to blend."""
        if not self._has_previous:
            self._has_previous = True
            self._sync_weight()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.previous, self.weight)


class SceneCut:
    """Consecutive-frame cosine similarity on the host; a value below `threshold` is a cut.

    threshold 0 never cuts (the cosine of two uint8 frames is never below 0)."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = float(threshold)
        self._previous: torch.Tensor | None = None
        self._current: torch.Tensor | None = None
        self.last_cosine = 1.0

    def reset(self) -> None:
        self._previous = None

    def is_cut(self, sample: torch.Tensor) -> bool:
        """`sample`: a small view of this frame (the similarity filter's subsample)."""
        if self._previous is not None and self._previous.shape != sample.shape:
            self._previous = None  # the source changed size: nothing to compare with
        if self._current is None or self._current.shape != sample.shape:
            self._current = torch.empty(sample.shape, dtype=torch.float32, device=sample.device)
        self._current.copy_(sample)
        previous = self._previous
        self._previous, self._current = self._current, previous  # swap: no allocation per frame
        if previous is None:
            return False
        self.last_cosine = cosine(self._previous, previous)
        return self.last_cosine < self.threshold
