"""The source thread: the newest frame from a FrameSource, into a pooled buffer, into the input mailbox.

Latest wins: a frame the render loop had no time for is replaced in the mailbox (and its
buffer goes back to the pool), never queued, so latency stays bounded by one frame plus
one render. One copy in: a source with `read_latest_into` fills a pooled buffer itself; a
source whose frames are `frames_owned` (fresh arrays) is not copied at all; any other frame
is copied once (both optional features of FrameSource, engine/realtime/frames.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from engine.errors import FrameError
from engine.realtime.framepool import FrameBuffer, FramePool
from engine.realtime.frames import Frame, FrameSource, check_rgba_u8
from engine.realtime.log_limit import LogLimiter
from engine.realtime.mailbox import Mailbox
from engine.realtime.timings import Timings

SOURCE_RETRY_S = 0.5  # a raising source is retried this often, not spun on
IDLE_MIN_S, IDLE_MAX_S = 0.0002, 0.001  # polling back-off: <= 1 ms added latency

InputItem = tuple[Frame, "FrameBuffer | None"]


def source_name(source: FrameSource | None) -> str:
    return "none (txt2img)" if source is None else str(source.name)


class SourceReader:
    def __init__(self, source: FrameSource, pool: FramePool, box: Mailbox[InputItem], timings: Timings,
                 clock: Callable[[], float], errlog: LogLimiter) -> None:
        self.source, self.pool, self.box = source, pool, box
        self.timings, self.clock, self.errlog = timings, clock, errlog
        self.name = source_name(source)
        self.received = 0  # frames put in the mailbox

    def run(self, stopping: threading.Event) -> None:
        """The thread's body: poll until `stopping` is set."""
        src, pool, clock, timings = self.source, self.pool, self.clock, self.timings
        owned = bool(getattr(src, "frames_owned", False))
        read_into = getattr(src, "read_latest_into", None)
        lent: list[FrameBuffer] = []

        def acquire(shape: tuple[int, ...]) -> np.ndarray:
            buf = pool.acquire(tuple(shape))
            lent.append(buf)
            return buf.array

        idle = IDLE_MIN_S
        while not stopping.is_set():
            t0 = clock()
            try:
                rgba = read_into(acquire) if read_into is not None else src.read_latest()
            except Exception as e:  # a vanished driver/peer: log, back off, retry
                for buf in lent:
                    pool.release(buf)
                lent.clear()
                timings.count("source_errors")
                self.errlog.log(logging.WARNING, f"source {self.name} failed: {type(e).__name__}: {e}; "
                                                 f"retrying every {SOURCE_RETRY_S:g} s")
                stopping.wait(SOURCE_RETRY_S)
                continue
            filled = next((b for b in lent if b.array is rgba), None)
            for buf in lent:  # buffers the source asked for but did not fill (a torn read)
                if buf is not filled:
                    pool.release(buf)
            lent.clear()
            if rgba is None:
                # Frames come every 16-33 ms; polling back-off keeps a core free without adding
                # more than ~1 ms to latency.
                stopping.wait(idle)
                idle = min(idle * 2, IDLE_MAX_S)
                continue
            idle = IDLE_MIN_S
            try:
                check_rgba_u8(rgba, f"source {self.name}")
            except FrameError as e:
                timings.count("source_errors")
                self.errlog.log(logging.WARNING, str(e))
                pool.release(filled)
                continue
            buf = filled
            if buf is None and not owned:
                buf = pool.acquire(rgba.shape)
                np.copyto(buf.array, rgba)
            timings.record("receive", clock() - t0)
            timings.tick("in", t0)
            frame = Frame(rgba if buf is None else buf.array, self.received, t0)
            self.received += 1
            self.box.put((frame, buf))
