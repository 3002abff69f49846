"""A pipeline's temporal consistency in one object: feature bank, latent feedback, scene cuts.

The pipeline calls it at four places (engine/core/pipeline.py): `observe` on the host with
each new input's subsample (a scene cut makes both halves forget), `mix`/`keep` inside the
frame step around the stream batch, `stepped` on the host after a step ran, and `reset`.
What each knob does and costs: docs/temporal.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.config.schema import LiveParams, LoadSettings
from engine.core.feature_bank import FeatureBank, install_feature_bank
from engine.core.latent_feedback import LatentFeedback, SceneCut

log = logging.getLogger("streamvj.temporal")

# The live fields `apply` reads (the pipeline's "temporal" live group).
TEMPORAL_FIELDS = ("bank_frames", "bank_refresh", "bank_strength", "latent_feedback", "cut_threshold")


class Temporal:
    def __init__(self, unet: Any, load: LoadSettings, *, unet_rows: int, latent_shape: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype, backend: str):
        bank_max = load.bank_max
        if bank_max and backend == "tensorrt":
            log.warning("feature bank (bank_max %d) skipped: TensorRT engines have their attention built in; "
                        "use acceleration: compile for the bank", bank_max)
            bank_max = 0
        self.bank: FeatureBank | None = install_feature_bank(
            unet, bank_max, unet_rows, tuple(latent_shape[-2:]), device, dtype)
        self.feedback = LatentFeedback((load.frame_buffer_size, *latent_shape), device, dtype)
        self.cut = SceneCut()
        self.cuts = 0
        self._bank_on = False
        self._priming = False

    def apply(self, live: LiveParams) -> None:
        if self.bank is not None:
            self.bank.set(live.bank_frames, live.bank_refresh, live.bank_strength)
            self._bank_on = live.bank_frames > 0 and live.bank_strength > 0
        self.feedback.set_fraction(live.latent_feedback)
        self.cut.threshold = live.cut_threshold

    @property
    def active(self) -> bool:
        """Whether anything carries the past into the next frame (then scene cuts are watched)."""
        return self._bank_on or self.feedback.fraction > 0

    def observe(self, sample: torch.Tensor) -> bool:
        """On the host, per input: a scene cut clears the past. Returns whether this was one."""
        if not self.active or self.cut.threshold <= 0:
            self.cut.reset()  # compare with the frame before, never with one from before a pause
            return False
        if not self.cut.is_cut(sample):
            return False
        self.cuts += 1
        log.debug("scene cut (cosine %.3f): temporal state cleared", self.cut.last_cosine)
        self.forget()
        return True

    def mix(self, x_in: torch.Tensor) -> torch.Tensor:
        return self.feedback.mix(x_in)

    def keep(self, x_out: torch.Tensor) -> None:
        self.feedback.keep(x_out)

    def priming(self, on: bool) -> None:
        """Before the pipeline's frame step(s): `on` while it primes an empty stream batch."""
        if self.bank is not None and on != self._priming:
            self.bank.state.active.fill_(not on)
        self._priming = on

    def stepped(self) -> None:
        """After the frame step(s) of one input."""
        self.feedback.kept()
        if self._priming and self.bank is not None:
            self.bank.clear()  # the bank starts with the first frame after priming

    def forget(self) -> None:
        """Clear the bank and the previous latent (scene cut, reset, after warm-up)."""
        if self.bank is not None:
            self.bank.clear()
        self.feedback.forget()

    def reset(self) -> None:
        self.forget()
        self.cut.reset()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """State the frame step writes: a CUDA graph capture's warm-up must leave it as it was."""
        bank = self.bank.tensors() if self.bank is not None else ()
        return (*bank, *self.feedback.tensors())
