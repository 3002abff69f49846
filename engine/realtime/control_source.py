"""The ControlNets' own live sources: a control map per ControlNet, next to the colour feed.

A ControlNet whose preset `source` is a transport spec (e.g. TouchDesigner's Kinect depth over
`spout:TDDepth` or `shm:streamvj_depth`) reads its maps here: one thread per source polls
`read_latest`, keeps only the newest map (latest wins, like the main input) and hands it to
the render thread, which copies it into the pipeline's map buffer before the frame
(`ControlFeed.feed`, called by the LivePlayer). The pipeline keeps the last map until a new
one arrives, so a source that stops leaves the picture as it was; after STALE_S without a
map the feed says so (a warning once, and in `status`) and says it again when maps return.
A source that raises is retried every SOURCE_RETRY_S, its error logged at most every few
seconds. The engine never imports bridges: `open_source` (spec -> FrameSource) is given by
whoever wires the engine (run_engine.py: bridges/video/registry.py's make_source).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.config.schema import CONTROL_FROM_INPUT
from engine.errors import StreamVJError
from engine.realtime.frames import FrameSource, check_rgba_u8
from engine.realtime.log_limit import LogLimiter
from engine.realtime.source_reader import IDLE_MAX_S, IDLE_MIN_S, SOURCE_RETRY_S

log = logging.getLogger("streamvj.control")

STALE_S = 2.0  # a control source silent this long is reported as stale (its last map holds)
ERROR_REPEAT_S = 5.0


class ControlSource:
    """ControlNet `index`'s own source on a thread of its own; `take` returns a map once, when new."""

    def __init__(self, index: int, spec: str, source: FrameSource, clock: Callable[[], float] = time.monotonic,
                 stale_s: float = STALE_S):
        self.index, self.spec, self.source, self.clock, self.stale_s = index, spec, source, clock, stale_s
        self.received = 0
        self.errors = 0
        self._lock = threading.Lock()
        # Three host buffers in turn (allocated again only when the map size changes): the newest
        # map, the one the render thread took last, and the one being written.
        self._buffers: list[np.ndarray | None] = [None, None, None]
        self._latest_i: int | None = None
        self._taken_i: int | None = None
        self._latest: np.ndarray | None = None
        self._fresh = False
        self._last_t: float | None = None
        self._started_t = clock()
        self._said_stale = False
        self._errlog = LogLimiter(log, repeat_s=ERROR_REPEAT_S)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ControlSource:
        self.source.open()
        self._started_t = self.clock()
        self._thread = threading.Thread(target=self._run, name=f"streamvj-control-{self.index}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.source.close()
        except Exception as exc:  # noqa: BLE001 - closing a vanished peer must not stop the show
            log.debug("control source %s: close failed: %s", self.spec, exc)

    def _run(self) -> None:
        idle = IDLE_MIN_S
        owned = bool(getattr(self.source, "frames_owned", False))
        while not self._stopping.is_set():
            try:
                rgba = self.source.read_latest()
                if rgba is not None:
                    check_rgba_u8(rgba, f"control source {self.spec}")
            except Exception as exc:  # a vanished driver/peer or a bad frame: log, back off, retry
                self.errors += 1
                self._errlog.log(logging.WARNING, f"control source {self.spec} (ControlNet {self.index}) failed: "
                                                  f"{type(exc).__name__}: {exc}; holding its last map, retrying "
                                                  f"every {SOURCE_RETRY_S:g} s")
                self._stopping.wait(SOURCE_RETRY_S)
                continue
            if rgba is None:
                self._stopping.wait(idle)
                idle = min(idle * 2, IDLE_MAX_S)
                continue
            idle = IDLE_MIN_S
            with self._lock:
                i = next(i for i in range(3) if i not in (self._latest_i, self._taken_i))
            if owned:
                self._buffers[i] = rgba
            else:  # the source may reuse its own buffer: copy into ours
                buf = self._buffers[i]
                if buf is None or buf.shape != rgba.shape:
                    buf = self._buffers[i] = np.empty_like(rgba)
                np.copyto(buf, rgba)
            with self._lock:
                self._latest_i, self._fresh, self._last_t = i, True, self.clock()
                self._latest = self._buffers[i]
                self.received += 1

    def take(self) -> np.ndarray | None:
        """The newest map if one arrived since the last take, else None (the pipeline holds the last)."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh, self._taken_i = False, self._latest_i  # not rewritten until the next take
            return self._latest

    def resend(self) -> None:
        """The last map counts as new again (for a pipeline that has not seen it)."""
        with self._lock:
            self._fresh = self._latest is not None

    def age_s(self) -> float:
        """Seconds since the last map (since the start while none came)."""
        with self._lock:
            last = self._last_t
        return self.clock() - (self._started_t if last is None else last)

    @property
    def stale(self) -> bool:
        return self.age_s() >= self.stale_s

    def check_stale(self) -> bool:
        """Say once when the source goes quiet, and once when it is back; returns whether it is stale."""
        stale = self.stale
        if stale and not self._said_stale:
            what = "sent no map yet" if self.received == 0 else f"sent nothing for {self.age_s():.1f} s"
            log.warning("control source %s (ControlNet %d) %s: holding its last map", self.spec, self.index, what)
        elif not stale and self._said_stale:
            log.info("control source %s (ControlNet %d) is back", self.spec, self.index)
        self._said_stale = stale
        return stale

    def status(self) -> dict[str, Any]:
        return {"controlnet": self.index, "source": self.spec, "maps": self.received, "errors": self.errors,
                "age_s": round(self.age_s(), 2), "stale": self.stale}


class ControlFeed:
    """The own sources of the pipeline on air's ControlNets; follows preset switches (`follow`)."""

    def __init__(self, open_source: Callable[[str], FrameSource], clock: Callable[[], float] = time.monotonic,
                 stale_s: float = STALE_S):
        self.open_source, self.clock, self.stale_s = open_source, clock, stale_s
        self.sources: dict[int, ControlSource] = {}
        self._errlog = LogLimiter(log, repeat_s=ERROR_REPEAT_S)

    def follow(self, controlnets: Sequence[Any]) -> None:
        """Open the sources `controlnets` (schema.ControlNetSpec) name and close the rest; a source whose
        spec did not change keeps running (its last map carries over to a new pipeline on the next feed)."""
        wanted = {k: c.source for k, c in enumerate(controlnets) if c.source != CONTROL_FROM_INPUT}
        for k in [k for k, s in self.sources.items() if wanted.get(k) != s.spec]:
            self.sources.pop(k).stop()
        for k, spec in wanted.items():
            if k in self.sources:
                self.sources[k].resend()  # the new pipeline needs the last map too
                continue
            try:
                self.sources[k] = ControlSource(k, spec, self.open_source(spec), self.clock, self.stale_s).start()
            except Exception as exc:  # noqa: BLE001 - drivers raise anything; the show goes on without it
                log.warning("control source %s (ControlNet %d) cannot open: %s; ControlNet %d keeps a black map "
                            "until a preset with a working source is loaded", spec, k, exc, k)

    def feed(self, pipeline: Any) -> None:
        """Render thread, before a frame: each new map into the pipeline's buffer (fitted there)."""
        for k, source in self.sources.items():
            source.check_stale()
            rgba = source.take()
            if rgba is None:
                continue
            try:
                pipeline.set_control_frame(k, rgba)
            except StreamVJError as exc:
                self._errlog.log(logging.WARNING, f"control map from {source.spec} not used: {exc}")

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.sources.values()]

    def summary(self) -> str:
        """For the status line: only what needs a look (a stale source), e.g. "cn1 stale 3s"."""
        return "  ".join(f"cn{s.index} stale {s.age_s():.0f}s" for s in self.sources.values() if s.stale)

    def stop(self) -> None:
        for source in self.sources.values():
            source.stop()
        self.sources.clear()
