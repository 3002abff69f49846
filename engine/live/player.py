"""LivePlayer: the render thread's processor — params applied, then the pipeline run.

The runtime calls it once per frame on the render thread, the only thread that touches
the model. A hot preset switch replaces the pipeline between two frames (`swap`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from engine.core.pipeline import StreamPipeline
from engine.live.applier import LiveApplier
from engine.live.params import ParamStore


class LivePlayer:
    def __init__(self, pipeline: StreamPipeline, store: ParamStore, clock: Callable[[], float] = time.monotonic):
        self.pipeline, self.store, self.clock = pipeline, store, clock
        self.applier = LiveApplier(pipeline)
        self.applier.apply(store.snapshot(clock()))

    @property
    def counters(self):
        return self.pipeline.counters

    @property
    def stream(self):
        return self.pipeline.stream

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def txt2img(self) -> bool:
        return self.pipeline.txt2img

    def output_read(self, output: torch.Tensor, event: object) -> bool:
        """See StreamPipeline.output_read (the runtime's download tells the producer)."""
        return self.pipeline.output_read(output, event)

    def swap(self, pipeline: StreamPipeline) -> None:
        """Put a freshly built pipeline on air (call on the render thread, between frames)."""
        self.pipeline = pipeline
        self.applier.rebind(pipeline)

    def __call__(self, rgba_u8: np.ndarray | None = None) -> torch.Tensor:
        self.applier.apply(self.store.snapshot(self.clock()))
        if self.pipeline.txt2img:
            return self.pipeline()
        return self.pipeline(rgba_u8)  # built with fit_input: any size is fitted on the device
