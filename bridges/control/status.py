"""Engine status for peers and people: one payload (OSC feedback) and one line (the terminal).

`status_payload` merges the runtime's stats, the show's status and the GPU readings into
the fields OSC feedback sends (bridges/control/osc_feedback.py FIELDS); `status_text` is
the same as one line. `TerminalLine` redraws that line in place and makes log records
start on a cleared line instead of being printed onto it.

The redraw is a carriage return and the padded line, nothing else: no ANSI sequences, so it
works in Windows' console host without virtual-terminal mode, in Windows Terminal and in any
POSIX terminal. What it needs is a line narrower than the window: Windows' console wraps as
soon as the last column is written (others defer the wrap), and after a wrap "\r" returns to
the wrapped part, so every redraw would leave a copy behind (cmd's default window is 120
columns, narrower than the line). The line is cut to the window's width minus one, measured at
every redraw (windows get resized), and log records wipe exactly what was drawn.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from engine.live.show import ShowStatus

log = logging.getLogger("streamvj")

WIDTH = 150  # characters of the terminal line at most (padded, so a shorter line wipes a longer one)
MIN_WIDTH = 20  # a window narrower than this gets a wrapped line rather than no line


def status_payload(stats: Mapping[str, Any], show: ShowStatus, backend: str,
                   gpu: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The OSC feedback fields for one stats tick."""
    state = show.state if show.state == "building" else stats["state"]
    state = "ready" if state == "stopped" else state  # feedback speaks the peers' state names
    payload: dict[str, Any] = {
        "state": state,
        "fps": float(stats.get("fps", 0.0)),
        "latency_ms": float(stats.get("latency_ms", 0.0)),
        "skip_ratio": float(stats.get("skip_ratio", 0.0)),
        "preset": show.preset,
        "error": show.error or stats.get("error", ""),
        "backend": backend,
    }
    for key in ("vram_mb", "gpu_power_w"):
        value = (gpu or {}).get(key)
        if value is not None:
            payload[key] = float(value)
    return payload


def status_text(payload: Mapping[str, Any], stats: Mapping[str, Any]) -> str:
    line = (f"{payload['state']:<8} {payload['preset']:<12} {payload['fps']:6.1f} fps  "
            f"latency {payload['latency_ms']:6.1f} ms  skip {100 * payload['skip_ratio']:4.0f}%  "
            f"in {stats.get('frames_received', 0)}  out {stats.get('frames_rendered', 0)}  {payload['backend']}")
    if "vram_mb" in payload:
        line += f"  {payload['vram_mb']:.0f} MB"
    if "gpu_power_w" in payload:
        line += f"  {payload['gpu_power_w']:.0f} W"
    return line


class TerminalLine:
    """One line redrawn in place on `stream`; log records from the handlers it is installed on
    first clear it, so they never end up printed onto the status line.

    The clearing happens in the handler's formatter, i.e. inside the handler's emit under its
    lock, and `draw` writes under the same locks: a record and a redraw never interleave.
    """

    def __init__(self, stream: TextIO | None = None, width: int = WIDTH) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._drawn_width = 0  # the width of the line on screen: what a record's wipe must cover
        self._drawn = self._closed = False
        self._handlers: list[logging.Handler] = []
        self._own = threading.RLock()

    def install(self, handlers: Iterable[logging.Handler]) -> TerminalLine:
        """Wrap the formatter of every handler writing to this terminal stream."""
        for handler in handlers:
            if getattr(handler, "stream", None) is self.stream and not isinstance(handler.formatter, _Clearing):
                handler.setFormatter(_Clearing(handler.formatter or logging.Formatter(), self))
                self._handlers.append(handler)
        return self

    def uninstall(self) -> None:
        for handler in self._handlers:
            if isinstance(handler.formatter, _Clearing):
                handler.setFormatter(handler.formatter.inner)
        self._handlers.clear()

    def draw(self, text: str) -> None:
        width = self.fit_width()
        with self._locked():
            if self._closed:
                return
            self.stream.write("\r" + text[:width].ljust(width))
            self.stream.flush()
            self._drawn, self._drawn_width = True, width

    def close(self) -> None:
        """Leave the last line on screen (end it); from now on draws are ignored and records untouched."""
        with self._locked():
            self._closed = True
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False
        self.uninstall()

    def take_line(self) -> str:
        """What a log record must print first: a wipe of the drawn line (called under the handler's lock)."""
        with self._own:
            if not self._drawn:
                return ""
            self._drawn = False
            return "\r" + " " * self._drawn_width + "\r"

    def fit_width(self) -> int:
        """`width`, cut to the window's columns minus one when the stream is a terminal."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):  # not a terminal (a file, a pipe, a test's StringIO)
            return self.width
        return self.width if columns <= 0 else max(MIN_WIDTH, min(self.width, columns - 1))

    def _locked(self) -> _Locks:
        # Handler locks first, then our own: the order emit -> format -> take_line takes them in.
        return _Locks([*(h.lock for h in self._handlers if h.lock is not None), self._own])


class _Locks:
    def __init__(self, locks: list[Any]) -> None:
        self.locks = locks

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


class _Clearing(logging.Formatter):
    def __init__(self, inner: logging.Formatter, line: TerminalLine) -> None:
        super().__init__()
        self.inner, self.line = inner, line

    def format(self, record: logging.LogRecord) -> str:
        return self.line.take_line() + self.inner.format(record)


class StatusReporter:
    """on_stats: the status to OSC feedback, and one line redrawn on a terminal (or logged every 10 s)."""

    def __init__(self, feedback=None, gpu=None, terminal=None):
        self.show, self.feedback, self.gpu, self.terminal = None, feedback, gpu, terminal
        self._last_log = 0.0

    def __call__(self, stats: dict) -> None:
        if self.show is None:
            return
        gpu = self.gpu.read() if self.gpu is not None else {}
        payload = status_payload(stats, self.show.status(), self.show.player.pipeline.backend, gpu)
        line = status_text(payload, stats)
        controls = getattr(self.show.player, "controls", None)  # a stale ControlNet source says so here
        if controls is not None and controls.summary():
            line += "  " + controls.summary()
        if self.terminal is not None:
            self.terminal.draw(line)
        elif time.monotonic() - self._last_log >= 10.0:
            self._last_log = time.monotonic()
            log.info(line)
        if self.feedback is not None:
            self.feedback.publish(payload)
