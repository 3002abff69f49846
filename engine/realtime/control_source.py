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

A ControlNet may list several sources (live `controlnet_<k>_source` picks one). All of them
are opened and read while the preset is on air, so a switch shows the new source's latest
map at once (an NDI or Spout receiver takes a while to connect; a video file to open), and
a switch never opens anything on the render thread. Only the chosen source's maps are
uploaded; the others' newest map waits on the host. A source that cannot open is said once;
a ControlNet switched to it sees a black map.

On CUDA the maps are read into pinned host buffers (on the source's thread), so the upload
(engine/accel/device_io.py, on its own stream) is truly asynchronous; a buffer is rewritten
only after the upload's event says the copy is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.config.schema import CONTROL_FROM_INPUT
from engine.config.transport_specs import split_spec
from engine.errors import StreamVJError
from engine.realtime.frames import FrameSource, check_rgba_u8
from engine.realtime.log_limit import LogLimiter
from engine.realtime.source_reader import IDLE_MAX_S, IDLE_MIN_S, SOURCE_RETRY_S

log = logging.getLogger("streamvj.control")

STALE_S = 2.0  # a control source silent this long is reported as stale (its last map holds)
ERROR_REPEAT_S = 5.0
# Host buffers per source: the newest map, the one the render thread took last, one whose upload may
# still be running (taken a frame earlier), and the one being written.
BUFFERS = 4


class ControlSource:
    """ControlNet `index`'s own source `spec` on a thread of its own; `take` returns a map once, when new.
    `pinned`: read into page-locked host memory (CUDA uploads from it run asynchronously)."""

    def __init__(self, index: int, spec: str, source: FrameSource, clock: Callable[[], float] = time.monotonic,
                 stale_s: float = STALE_S, pinned: bool = False):
        self.index, self.spec, self.source, self.clock, self.stale_s = index, spec, source, clock, stale_s
        self.pinned = pinned
        # A still image sends its map once (and again when the file changes): silence is its normal state.
        self.still = split_spec(spec)[0] == "image"
        self.received = 0
        self.errors = 0
        self._lock = threading.Lock()
        # Host buffers used in turn (allocated again only when the map size changes).
        self._buffers: list[np.ndarray | None] = [None] * BUFFERS
        self._latest_i: int | None = None
        self._taken_i: int | None = None
        self._uploading: dict[int, Any] = {}  # buffer -> the event of an upload from it that may still run
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
        # Adopt a source's own fresh arrays as they are, unless they must be copied into pinned memory.
        adopt = bool(getattr(self.source, "frames_owned", False)) and not self.pinned
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
            i = None if rgba is None else self._free_buffer()
            if i is None:  # nothing new (or every buffer still in use: this map is dropped, latest wins)
                self._stopping.wait(idle)
                idle = min(idle * 2, IDLE_MAX_S)
                continue
            idle = IDLE_MIN_S
            if adopt:
                self._buffers[i] = rgba
            else:  # the source may reuse its own buffer: copy into ours
                buf = self._buffers[i]
                if buf is None or buf.shape != rgba.shape:
                    buf = self._buffers[i] = self._new_buffer(rgba.shape)
                np.copyto(buf, rgba)
            with self._lock:
                self._latest_i, self._fresh, self._last_t = i, True, self.clock()
                self._latest = self._buffers[i]
                self.received += 1

    def _new_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.pinned:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()
        return np.empty(shape, np.uint8)

    def _free_buffer(self) -> int | None:
        """A buffer neither newest, nor taken, nor read by an upload still running."""
        with self._lock:
            for i in range(BUFFERS):
                if i in (self._latest_i, self._taken_i):
                    continue
                event = self._uploading.get(i)
                if event is not None:
                    if not event.query():
                        continue
                    del self._uploading[i]
                return i
        return None

    def take(self) -> np.ndarray | None:
        """The newest map if one arrived since the last take, else None (the pipeline holds the last)."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh, self._taken_i = False, self._latest_i  # not rewritten until the next take
            return self._latest

    def uploaded(self, event: Any) -> None:
        """The map taken last is being copied until `event` (CUDA; None: copied already): its buffer is not
        rewritten before, even after the next take."""
        if event is None:
            return
        with self._lock:
            if self._taken_i is not None:
                self._uploading[self._taken_i] = event

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
        return self.age_s() >= self.stale_s and not (self.still and self.received > 0)

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
    """The own sources of the pipeline on air's ControlNets, every listed choice; follows preset switches
    (`follow`) and feeds the pipeline the maps of the sources its ControlNets use now (`feed`).
    `pinned`: host buffers in page-locked memory (default: when torch sees a CUDA GPU)."""

    def __init__(self, open_source: Callable[[str], FrameSource], clock: Callable[[], float] = time.monotonic,
                 stale_s: float = STALE_S, pinned: bool | None = None):
        self.open_source, self.clock, self.stale_s = open_source, clock, stale_s
        self.pinned = torch.cuda.is_available() if pinned is None else pinned
        self.sources: dict[tuple[int, str], ControlSource] = {}  # (ControlNet, spec) -> its running source
        # The sources fed on the last frame; replaced, never changed in place (the status thread reads it).
        self.active: frozenset[tuple[int, str]] = frozenset()
        self._missing: dict[tuple[int, str], str] = {}  # listed sources that cannot open -> why
        self._said_missing: set[tuple[int, str]] = set()
        self._errlog = LogLimiter(log, repeat_s=ERROR_REPEAT_S)

    def follow(self, controlnets: Sequence[Any]) -> None:
        """Open every own source `controlnets` (schema.ControlNetSpec) list and close the rest; a source whose
        (ControlNet, spec) did not change keeps running (its last map carries over to a new pipeline)."""
        wanted = [(k, s) for k, c in enumerate(controlnets) for s in c.sources if s != CONTROL_FROM_INPUT]
        for key in [key for key in self.sources if key not in wanted]:
            self.sources.pop(key).stop()
        self._missing = {key: why for key, why in self._missing.items() if key in wanted}
        self._said_missing.clear()
        self.active = frozenset()
        for k, spec in wanted:
            if (k, spec) in self.sources:
                self.sources[(k, spec)].resend()  # the new pipeline needs the last map too
                continue
            try:
                self.sources[(k, spec)] = ControlSource(k, spec, self.open_source(spec), self.clock, self.stale_s,
                                                        pinned=self.pinned).start()
                self._missing.pop((k, spec), None)
            except Exception as exc:  # noqa: BLE001 - drivers raise anything; the show goes on without it
                self._missing[(k, spec)] = str(exc)
                log.warning("control source %s (ControlNet %d) cannot open: %s; ControlNet %d sees a black map while "
                            "it uses this source, until a preset with a working one is loaded", spec, k, exc, k)

    def feed(self, pipeline: Any) -> None:
        """Render thread, before a frame: the new map of each source a running ControlNet uses now into the
        pipeline's buffer (fitted there; on CUDA uploaded on its own stream)."""
        controls = pipeline.controls
        active = set()
        for k in range(controls.count):
            spec = controls.fed_source(k)
            if spec is None:
                continue
            source = self.sources.get((k, spec))
            if source is None:
                if (k, spec) not in self._said_missing:
                    self._said_missing.add((k, spec))
                    why = self._missing.get((k, spec), "not opened")
                    log.warning("ControlNet %d uses control source %s, which could not open (%s): a black map",
                                k, spec, why)
                continue
            self._said_missing.discard((k, spec))
            active.add((k, spec))
            source.check_stale()
            rgba = source.take()
            if rgba is None:
                continue
            try:
                source.uploaded(pipeline.set_control_frame(k, rgba, spec))
            except StreamVJError as exc:
                self._errlog.log(logging.WARNING, f"control map from {spec} not used: {exc}")
        self.active = frozenset(active)

    def status(self) -> list[dict[str, Any]]:
        return [{**s.status(), "active": key in self.active} for key, s in list(self.sources.items())]

    def summary(self) -> str:
        """For the status line: only what needs a look (a stale source in use), e.g. "cn1 stale 3s"."""
        return "  ".join(f"cn{s.index} stale {s.age_s():.0f}s" for key, s in list(self.sources.items())
                         if key in self.active and s.stale)

    def stop(self) -> None:
        for source in self.sources.values():
            source.stop()
        self.sources.clear()
        self.active = frozenset()
