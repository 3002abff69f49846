"""A group of sinks served by one runtime thread, and closing bridges without cascading failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from engine.framepool import FrameBuffer, FramePool
from engine.frames import FrameSink
from engine.mailbox import Mailbox

log = logging.getLogger("streamvj.runtime")


class SinkGroup:
    """Sinks served by one thread, in order, from one latest-wins mailbox."""

    def __init__(self, sinks: Sequence[FrameSink], index: int, pool: FramePool) -> None:
        self.sinks = list(sinks)
        self.index = index
        self.name = "+".join(getattr(s, "name", type(s).__name__) for s in self.sinks)
        self.box: Mailbox[FrameBuffer] = Mailbox(f"out:{self.name}", on_drop=pool.release)
        self.sent = 0  # fresh frames sent
        self.repeated = 0  # ticks that re-sent the last frame (pacing)
        self.errors = [0] * len(self.sinks)
        self.failing: list[str | None] = [None] * len(self.sinks)  # message last logged, per sink
        self.thread: threading.Thread | None = None


def close_quietly(what: str, obj: Any) -> None:
    try:
        obj.close()
    except Exception as e:  # one failing close must not leave the others open
        log.warning("closing %s failed: %s: %s", what, type(e).__name__, e)
