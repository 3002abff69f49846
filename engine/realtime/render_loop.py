"""The render thread: control actions between frames, then one frame: input -> processor -> hand-off.

It is the ONLY thread that calls the processor (the model), through the Processor protocol
(engine/realtime/processor.py). Between two frames it runs the actions queued by
`Runtime.call_soon` (a preset going on air, a reset), in order, also while paused or waiting
for input. While the processor needs input (img2img) it renders the newest frame from the
input mailbox; while it does not (txt2img) it renders paced by target_fps and lets
incoming frames go, so the runtime keeps its source whatever is on air. A frame that fails
is logged (rate-limited) and the last output keeps flowing.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.realtime.framepool import FramePool
from engine.realtime.handoff import OutputHandoff
from engine.realtime.log_limit import LogLimiter
from engine.realtime.mailbox import Mailbox
from engine.realtime.processor import Processor
from engine.realtime.sinkgroup import WAIT_S
from engine.realtime.source_reader import InputItem
from engine.realtime.timings import Timings

Action = tuple[Callable[[], Any], concurrent.futures.Future]


class RenderLoop:
    def __init__(self, processor: Processor, box: Mailbox[InputItem], in_pool: FramePool, handoff: OutputHandoff,
                 timings: Timings, clock: Callable[[], float], errlog: LogLimiter, target_fps: float | None,
                 has_source: bool) -> None:
        self.processor, self.box, self.in_pool, self.handoff = processor, box, in_pool, handoff
        self.timings, self.clock, self.errlog = timings, clock, errlog
        self.period = 1.0 / target_fps if target_fps else 0.0
        self.has_source = has_source
        self.actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self.paused = False
        self.errors = 0
        self.last_error = ""

    def run(self, stopping: threading.Event) -> None:
        """The thread's body, until `stopping` is set; then the pending frame is handed off."""
        box, handoff = self.box, self.handoff
        next_t = time.monotonic()
        while True:
            self.run_actions()
            if stopping.is_set():
                break
            if self.paused:
                handoff.flush()
                self._let_go(box.get(WAIT_S))  # keep the input fresh: no stale frame on resume
                continue
            if not self.processor.needs_input:
                # txt2img: nothing to wait for, paced by target_fps. Input the source still
                # delivers is let go, so an img2img pipeline going on air starts from a fresh frame.
                delay = next_t - time.monotonic()
                if delay > 0:
                    handoff.flush()
                    self._let_go(box.get(min(delay, WAIT_S)))  # a wakeable sleep
                    continue
                self._let_go(box.get_nowait())
                next_t = max(next_t + self.period, time.monotonic() - self.period) if self.period else 0.0
                self.render(None)
                continue
            if not self.has_source:
                self.errlog.log(logging.WARNING, "the pipeline on air needs input frames (img2img), but this "
                                                 "runtime has no source: holding the last output")
            # With a CUDA frame pending, take a waiting input first (launch it, then hand the
            # pending one off); block only after handing it off, so an idle source adds no latency.
            item = box.get_nowait() if handoff.pending is not None else None
            if item is None:
                handoff.flush()
                item = box.get(WAIT_S)
            if item is not None:
                self.render(item)
        handoff.close()
        self._let_go(box.clear())

    def run_actions(self, refuse: bool = False) -> None:
        """Run the queued actions (render thread), or fail them all (`refuse`, when stopping)."""
        while True:
            try:
                fn, fut = self.actions.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if refuse:
                fut.set_exception(RuntimeError("runtime stopped before the action ran"))
                continue
            try:
                fut.set_result(fn())
            except Exception as e:  # a bad control change must not end the show
                self.errlog.log(logging.WARNING, f"control action {getattr(fn, '__name__', fn)!r} failed: "
                                                 f"{type(e).__name__}: {e}")
                fut.set_exception(e)

    def render(self, item: InputItem | None) -> None:
        """One frame: the processor's call, its stage times, and the hand-off of its output."""
        clock, timings, handoff, processor = self.clock, self.timings, self.handoff, self.processor
        frame, in_buf = item if item is not None else (None, None)
        out_buf = None
        try:
            t0 = clock()
            t_arrival = frame.t_arrival if frame is not None else t0
            result = processor.process(frame.rgba_u8 if frame is not None else None)
            t1 = clock()  # the copy to the host below is "postprocess", not "model"
            out_buf, landed = handoff.buffer_for(result, processor.output_read)
        except Exception as e:  # one bad frame must not end the show: log, keep the last output
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            timings.count("render_errors")
            self.errlog.log(logging.ERROR, f"processor failed on frame "
                                           f"{frame.index if frame is not None else handoff.rendered}: "
                                           f"{self.last_error}", exc_info=True, key=self.last_error)
            handoff.out_pool.release(out_buf)
            self.in_pool.release(in_buf)
            return
        own = 0.0
        for name, seconds in result.stage_times.items():  # the processor's stages ("params", "preprocess")
            timings.record(name, seconds)
            own += seconds
        timings.record("model", t1 - t0 - own)
        out_buf.index = frame.index if frame is not None else handoff.rendered
        out_buf.t_arrival = t_arrival
        handoff.deliver(out_buf, landed, in_buf, t1, result.skipped)

    def _let_go(self, item: InputItem | None) -> None:
        if item is not None:
            self.in_pool.release(item[1])
