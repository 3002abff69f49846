"""LivePlayer: what the runtime renders in a show: live parameters applied, then the pipeline on air.

It is the runtime's Processor (engine/realtime/processor.py), called once per frame on the
render thread, the only thread that touches the model. This is the one way live values
reach a pipeline (one ParamStore snapshot per frame, only changed groups applied), and
`swap` the one way another pipeline goes on air (a preset switch runs it through
`Runtime.call_soon`, between two frames).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.core.pipeline import StreamPipeline
from engine.live.applier import LiveApplier
from engine.live.params import ParamStore
from engine.realtime.control_source import ControlFeed
from engine.realtime.processor import Counters, FrameResult


class LivePlayer:
    def __init__(self, pipeline: StreamPipeline, store: ParamStore, clock: Callable[[], float] = time.monotonic,
                 controls: ControlFeed | None = None):
        self.pipeline, self.store, self.clock = pipeline, store, clock
        # ControlNets' own sources (engine/realtime/control_source.py): new maps go in before each frame.
        self.controls = controls
        if controls is not None:
            controls.follow(pipeline.load.controlnets)
        self.applier = LiveApplier(pipeline)
        self.applier.apply(store.snapshot(clock()))

    # ---- Processor: what the runtime asks of the pipeline on air -----------------------------------

    @property
    def needs_input(self) -> bool:
        return self.pipeline.needs_input

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def counters(self) -> Counters:
        return self.pipeline.counters

    def output_read(self, output: torch.Tensor, event: Any) -> bool:
        return self.pipeline.output_read(output, event)

    def process(self, rgba_u8: np.ndarray | None = None) -> FrameResult:
        """This frame's parameters (timed as the "params" stage), then the pipeline (built with
        fit_input: a frame of any size is fitted on the device)."""
        started = time.perf_counter()
        self.applier.apply(self.store.snapshot(self.clock()))
        if self.controls is not None:
            self.controls.feed(self.pipeline)
        applied = time.perf_counter()
        result = self.pipeline.process(rgba_u8 if self.pipeline.needs_input else None)
        result.stage_times["params"] = applied - started
        return result

    def __call__(self, rgba_u8: np.ndarray | None = None) -> torch.Tensor:
        """One frame's output (tests, scripts); the runtime calls `process`."""
        return self.process(rgba_u8).output

    # ---- switching --------------------------------------------------------------------------------

    def swap(self, pipeline: StreamPipeline) -> None:
        """Put a freshly built pipeline on air (call on the render thread, between frames)."""
        self.pipeline = pipeline
        self.applier.rebind(pipeline)
        if self.controls is not None:
            self.controls.follow(pipeline.load.controlnets)
