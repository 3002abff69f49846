"""A pipeline's temporal consistency in one object: feature bank, latent feedback, scene cuts.

The pipeline calls it at these places (engine/core/pipeline.py): `observe` on the host with
each new input's subsample (a scene cut makes both halves forget); `bank_mode` on the host
before the frame step(s) of one input, which sets the feature bank's mode on its processors
and returns it, a mode of the frame step (one compiled step / CUDA graph each; `modes` lists
them for the warm-up); `mix` and `keep` inside the frame step; `stepped` on the host after it
ran; and `reset`.
What each knob does and costs: docs/temporal.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.config.schema import LiveParams, LoadSettings
from engine.core.feature_bank import BANK, FUSION, OFF, FeatureBank, install_feature_bank
from engine.core.latent_feedback import LatentFeedback, SceneCut

log = logging.getLogger("streamvj.temporal")

# The live fields `apply` reads (the pipeline's "temporal" live group).
TEMPORAL_FIELDS = ("bank_frames", "bank_refresh", "bank_strength", "fusion_strength", "fusion_threshold",
                   "latent_feedback", "cut_threshold")


def wanted_mode(frames: int, strength: float, fusion_strength: float) -> str:
    """The bank's mode live values ask for: off unless M > 0 and a strength is above 0. Fusion
    reads the same ring, so it runs the extended attention too (at weight 0 if the strength is)."""
    if frames <= 0 or (strength <= 0 and fusion_strength <= 0):
        return OFF
    return FUSION if fusion_strength > 0 else BANK


class Temporal:
    """Built by the pipeline for `stream` (engine/core/stream.py), whose UNet call it wraps with the bank's
    per-call bookkeeping when there is a bank."""

    def __init__(self, unet: Any, load: LoadSettings, stream: Any, *, latent_shape: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype, backend: str):
        bank_max = load.bank_max
        if bank_max and backend == "tensorrt":
            log.warning("feature bank (bank_max %d) skipped: TensorRT engines have their attention built in; "
                        "use acceleration: compile for the bank", bank_max)
            bank_max = 0
        self.bank: FeatureBank | None = install_feature_bank(
            unet, bank_max, stream.unet_batch_size(), tuple(latent_shape[-2:]), device, dtype, load.bank_fusion)
        if self.bank is not None:
            stream.unet_fn = self.bank.wrap(stream.unet_fn)
        self.feedback = LatentFeedback((load.frame_buffer_size, *latent_shape), device, dtype)
        self.cut = SceneCut()
        self.cuts = 0
        self._wanted = OFF  # the bank's mode the live values ask for
        self._fusion_said = False  # that fusion_strength has no effect without load.bank_fusion
        self._mode = OFF  # the mode the last frame step ran

    def apply(self, live: LiveParams) -> None:
        if self.bank is not None:
            self.bank.set(live.bank_frames, live.bank_refresh, live.bank_strength, live.fusion_strength,
                          live.fusion_threshold)
            fusion = live.fusion_strength if FUSION in self.bank.modes else 0.0
            if live.fusion_strength > 0 and not fusion and not self._fusion_said:
                log.info("fusion_strength %g has no effect: this preset has no feature fusion (load.bank_fusion: "
                         "true allocates it)", live.fusion_strength)
            self._fusion_said = live.fusion_strength > 0 and not fusion
            self._wanted = wanted_mode(live.bank_frames, live.bank_strength, fusion)
        self.feedback.set_fraction(live.latent_feedback)
        self.cut.threshold = live.cut_threshold

    @property
    def active(self) -> bool:
        """Whether anything carries the past into the next frame (then scene cuts are watched)."""
        return self._wanted != OFF or self.feedback.fraction > 0

    def modes(self) -> tuple[str, ...]:
        """The bank modes this pipeline's frame step can run: what the warm-up makes ready."""
        return self.bank.modes if self.bank is not None else (OFF,)

    def bank_mode(self, priming: bool, mode: str | None = None) -> str:
        """On the host, before the frame step(s) of one input: set the bank's mode for them on its
        processors and return it (the pipeline passes it to the step: it selects the compiled step
        and CUDA graph). `mode` if given (the warm-up), else what the live values ask for, or `off`
        while the pipeline primes an empty stream batch (its rows for slots 1..N-1 hold no frame
        yet). A bank switching on starts from an empty ring: nothing stale from before."""
        mode = mode or (OFF if priming else self._wanted)
        if mode not in self.modes():
            raise ValueError(f"bank mode {mode!r}: this pipeline has {', '.join(self.modes())}")
        if self.bank is not None:
            if mode != OFF and self._mode == OFF:
                self.bank.clear()
            self.bank.state.mode = mode
        self._mode = mode
        return mode

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

    def stepped(self) -> None:
        """After the frame step(s) of one input."""
        self.feedback.kept()

    def forget(self) -> None:
        """Clear the bank and the previous latent (scene cut, reset, after warm-up)."""
        if self.bank is not None:
            self.bank.clear()
        self.feedback.forget()

    def reset(self) -> None:
        self.forget()
        self.cut.reset()
        self._mode = OFF

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """State the frame step writes: a CUDA graph capture's warm-up must leave it as it was."""
        bank = self.bank.tensors() if self.bank is not None else ()
        return (*bank, *self.feedback.tensors())
