"""Periodic: call a function every few seconds on a daemon thread, until stopped.

For the engine's housekeeping loops (MIDI port polling, the OSC feedback heartbeat): the
wait is an Event, so `stop()` returns at once instead of after the rest of a period.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, period_s: float, fn: Callable[[], object], *, immediately: bool = False) -> None:
        self.name, self.period_s, self.fn, self.immediately = name, period_s, fn, immediately
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        if self.immediately:
            self.fn()
        while not self._stop.wait(self.period_s):
            self.fn()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
