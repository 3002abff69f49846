"""A group of sinks served by one runtime thread, and closing bridges without cascading failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.realtime.framepool import FrameBuffer, FramePool
from engine.realtime.frames import FrameSink
from engine.realtime.mailbox import Mailbox
from engine.realtime.timings import Timings

log = logging.getLogger("streamvj.runtime")

WAIT_S = 0.05  # idle waits (runtime threads too): how soon stop/pause is seen when nothing wakes a thread


class SinkGroup:
    """Sinks served by one thread, in order, from one latest-wins mailbox."""

    def __init__(self, sinks: Sequence[FrameSink], index: int, pool: FramePool) -> None:
        self.pool = pool
        self.sinks = list(sinks)
        self.index = index
        self.name = "+".join(getattr(s, "name", type(s).__name__) for s in self.sinks)
        self.box: Mailbox[FrameBuffer] = Mailbox(f"out:{self.name}", on_drop=pool.release)
        self.sent = 0  # fresh frames sent
        self.repeated = 0  # ticks that re-sent the last frame (pacing)
        self.errors = [0] * len(self.sinks)
        self.failing: list[str | None] = [None] * len(self.sinks)  # message last logged, per sink
        self.thread: threading.Thread | None = None

    def serve(self, stopping: threading.Event, target_fps: float | None, timings: Timings,
              clock: Callable[[], float]) -> None:
        """The group's thread: send each new output once, or with `target_fps` send at that
        rate, repeating the last frame while no new one came (pacing, no bursts)."""
        period = 1.0 / target_fps if target_fps else None
        current: FrameBuffer | None = None
        next_t = time.monotonic()
        try:
            while not stopping.is_set():
                if period is None:
                    new = self.box.get(WAIT_S)
                    if new is not None:
                        self.send(new, False, timings, clock)
                        self.pool.release(new)
                    continue
                delay = next_t - time.monotonic()
                if delay > 0:
                    stopping.wait(delay)
                    continue
                new = self.box.get_nowait()
                if new is not None:
                    self.pool.release(current)
                    current = new
                if current is not None:
                    self.send(current, new is None, timings, clock)
                now = time.monotonic()
                # A sink slower than the target skips ticks instead of bursting to catch up.
                next_t = now + period if now - next_t > period else next_t + period
        finally:
            self.pool.release(current)
            self.pool.release(self.box.clear())

    def send(self, buf: FrameBuffer, repeat: bool, timings: Timings, clock: Callable[[], float]) -> None:
        """Send one frame to every sink; a failing sink is logged once and retried next frame."""
        for i, sink in enumerate(self.sinks):
            t0 = clock()
            try:
                sink.send(buf.view)
            except Exception as e:  # a sink's peer vanished or its driver hiccuped: retry next frame
                self.errors[i] += 1
                timings.count("sink_errors")
                msg = f"sink {getattr(sink, 'name', sink)} failed: {type(e).__name__}: {e}"
                if self.failing[i] != msg:
                    self.failing[i] = msg
                    log.warning("%s; retrying every frame", msg)
                continue
            if self.failing[i] is not None:
                self.failing[i] = None
                log.info("sink %s recovered", getattr(sink, "name", sink))
            timings.record("send", clock() - t0)
        if repeat:
            self.repeated += 1
        else:
            self.sent += 1
        if self.index == 0:
            timings.tick("sent")


def close_quietly(what: str, obj: Any) -> None:
    try:
        obj.close()
    except Exception as e:  # one failing close must not leave the others open
        log.warning("closing %s failed: %s: %s", what, type(e).__name__, e)
