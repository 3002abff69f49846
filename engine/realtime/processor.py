"""The contract between the runtime and what renders: a `Processor` in, a `FrameResult` out.

The runtime (engine/realtime/runtime.py) calls `process` once per frame on its render thread,
the only thread that touches the model, and types against this protocol alone. What renders
in a show is a LivePlayer (engine/live/player.py: live parameters, then the pipeline on air);
a bare StreamPipeline (engine/core/pipeline.py) is a processor too, and `FunctionProcessor`
makes one of a plain function (an identity processor measures the engine's own overhead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(slots=True)
class Counters:
    """What a processor did, since it was built (stats and OSC feedback show them)."""

    frames_in: int = 0  # calls
    frames_out: int = 0  # calls that rendered (not skipped)
    skipped: int = 0  # calls the similarity filter answered with the last output
    unet_calls: int = 0  # frame steps run (one batched UNet call each), priming included

    @property
    def skip_ratio(self) -> float:
        return self.skipped / self.frames_in if self.frames_in else 0.0


@dataclass(slots=True)
class FrameResult:
    """One call's outcome.

    `output`: rgba_u8, H x W x 4 uint8 (numpy, or a torch tensor on the CPU or CUDA); it may be
    the processor's own buffer, rewritten by the call after next, so copy it before then.
    `skipped`: the model did not run (similarity filter): `output` is the last output again.
    `stage_times`: host seconds of the processor's own stages this call, by name
    (engine/realtime/timings.py: "params", "preprocess"); the rest of the call is "model".
    """

    output: np.ndarray | torch.Tensor
    skipped: bool = False
    stage_times: dict[str, float] = field(default_factory=dict)


class Processor(Protocol):
    @property
    def needs_input(self) -> bool:
        """True (img2img): `process` takes a frame. False (txt2img): it is called with None,
        paced by the runtime's target_fps, without waiting for input. May change between
        frames (a preset switch puts another pipeline on air)."""

    @property
    def device(self) -> torch.device:
        """Where it computes; on CUDA the runtime pins its input buffers."""

    @property
    def counters(self) -> Counters: ...

    def process(self, rgba_u8: np.ndarray | None) -> FrameResult:
        """One frame, H x W x 4 uint8 (None when `needs_input` is False)."""

    def output_read(self, output: torch.Tensor, event: Any) -> bool:
        """A reader on another CUDA stream reads `output` until `event`: True when the processor
        will not rewrite it before then (it orders its own reuse), False when the reader must
        make the compute stream wait instead (engine/accel/device_io.py)."""


class FunctionProcessor:
    """`fn(rgba_u8) -> rgba_u8` (or `fn() -> rgba_u8` with needs_input=False) as a Processor."""

    def __init__(self, fn: Callable[..., np.ndarray | torch.Tensor], needs_input: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.fn, self.needs_input, self.device = fn, needs_input, torch.device(device)
        self.counters = Counters()

    def process(self, rgba_u8: np.ndarray | None) -> FrameResult:
        self.counters.frames_in += 1
        output = self.fn(rgba_u8) if self.needs_input else self.fn()
        self.counters.frames_out += 1
        return FrameResult(output)

    def output_read(self, output: torch.Tensor, event: Any) -> bool:
        return False  # a function's output may be rewritten at any time: the reader orders the reuse
