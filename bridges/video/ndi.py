"""NDI through `cyndilib` (the 'ndi' extra; its wheels bundle the NDI runtime).

Checked against cyndilib 0.1.3: `Receiver(color_format=, bandwidth=, recv_name=)` owns a
`frame_sync`; `FrameSync.capture_video()` fills a `VideoFrameSync` that is read through the
buffer protocol (one flat uint8 buffer, `get_line_stride()` bytes per row) and refuses a new
capture while a view of the last one is alive. `Sender.write_video_async` takes a 1-D uint8
buffer and copies it into the `VideoSendFrame`'s own buffers, and `set_video_frame` is
refused while the sender is open.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from engine.errors import BridgeUnavailable, ConfigError
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.ndi")

_MISSING = "NDI needs the 'ndi' extra: pip install 'streamvj[ndi]'"


def _ndi_available() -> tuple[bool, str]:
    try:
        importlib.import_module("cyndilib")
    except ImportError as exc:
        return False, f"{_MISSING} ({exc})"
    return True, ""


def _require_cyndilib() -> Any:
    """The cyndilib module, or BridgeUnavailable naming the extra to install."""
    ok, message = _ndi_available()
    if not ok:
        raise BridgeUnavailable(message)
    return importlib.import_module("cyndilib")


def ndi_frame_rate(fps: float) -> Fraction:
    """`fps` as the exact fraction NDI expects: 29.97 -> 30000/1001 (NTSC rates), 30 -> 30/1."""
    ntsc = round(fps * 1.001)
    if fps != int(fps) and abs(fps * 1.001 - ntsc) < 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


class NdiSource:
    """Receives the NDI source called `source_name` (as NDI lists it: "MACHINE (Name)").

    A `Finder` looks for the source every `retry_s` until it appears; the receiver asks for
    RGBX/RGBA at the highest bandwidth and captures through NDI's frame sync, which always
    hands back the best frame for now (repeating the last one): a frame counts as new when
    its timestamp/timecode changed. A source that stays disconnected for `timeout_s` is
    logged once as vanished and looked up again (it may come back on another address).
    Returned arrays alternate between two buffers: each stays valid until the next-but-one
    frame returned.
    """

    def __init__(
        self,
        source_name: str,
        timeout_s: float = 2.0,
        retry_s: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not source_name:
            raise ConfigError("NDI source needs a source name, e.g. 'ndi:MY-PC (TouchDesigner)'")
        self.source_name = source_name
        self.name = f"ndi:{source_name}"
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self._nd: Any = None
        self._finder: Any = None
        self._receiver: Any = None
        self._video: Any = None
        self._attached = False
        self._connected_once = False
        self._vanished = False
        self._waiting_logged = False
        self._bad_format_logged = False
        self._next_search = 0.0
        self._last_connected = 0.0
        self._last_id: tuple[float, float] | None = None
        self._outs: list[np.ndarray] = []
        self._turn = 0

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _ndi_available()

    def open(self) -> None:
        self._nd = nd = _require_cyndilib()
        self._finder = nd.Finder()
        self._finder.open()  # starts the finder's own discovery thread; lookups below are cheap
        self._receiver = nd.Receiver(
            color_format=nd.RecvColorFormat.RGBX_RGBA,
            bandwidth=nd.RecvBandwidth.highest,
            recv_name="streamvj",
        )
        self._video = nd.VideoFrameSync()
        self._receiver.frame_sync.set_video_frame(self._video)
        self._rgba = {nd.FourCC.RGBA, nd.FourCC.RGBX}
        self._bgra = {nd.FourCC.BGRA, nd.FourCC.BGRX}
        self._no_alpha = {nd.FourCC.RGBX, nd.FourCC.BGRX}
        self._attached = False
        self._next_search = self._clock()

    def _search(self, now: float) -> bool:
        """Attach the receiver to the source if the finder lists it now."""
        if now < self._next_search:
            return False
        self._next_search = now + self._retry_s
        source = None
        if self.source_name in self._finder.get_source_names():
            source = self._finder.get_source(self.source_name)
        if source is None:
            if not self._connected_once and not self._waiting_logged:
                log.info("waiting for NDI source '%s'", self.source_name)
                self._waiting_logged = True
            return False
        self._receiver.set_source(source)
        self._attached = True
        self._last_connected = now
        self._last_id = None
        if self._vanished:
            log.info("NDI source '%s' is back", self.source_name)
        else:
            log.info("NDI receiver attached to '%s'", self.source_name)
        self._vanished = False
        self._connected_once = True
        return True

    def read_latest(self) -> np.ndarray | None:
        if self._receiver is None:
            raise RuntimeError("NdiSource.read_latest() called before open()")
        now = self._clock()
        if not self._attached and not self._search(now):
            return None
        if self._receiver.is_connected():
            self._last_connected = now
        elif now - self._last_connected >= self._timeout_s:
            if not self._vanished:
                log.warning("NDI source '%s' vanished; waiting for it to return", self.source_name)
                self._vanished = True
            self._receiver.disconnect()
            self._attached = False
            return None
        self._receiver.frame_sync.capture_video()
        return self._convert()

    def _convert(self) -> np.ndarray | None:
        video = self._video
        width, height = video.xres, video.yres
        if width <= 0 or height <= 0:
            return None
        # The frame sync repeats its last frame until a new one arrives: same stamps, same frame.
        frame_id = (video.get_timestamp_posix(), video.get_timecode_posix())
        if frame_id == self._last_id:
            return None
        fourcc = video.fourcc
        if fourcc not in self._rgba and fourcc not in self._bgra:
            if not self._bad_format_logged:
                log.warning(
                    "NDI source '%s' sent %s frames, expected RGBA/RGBX; skipping", self.source_name, fourcc
                )
                self._bad_format_logged = True
            return None
        if not self._outs or self._outs[0].shape[:2] != (height, width):
            self._outs = [np.empty((height, width, 4), dtype=np.uint8) for _ in range(2)]
            log.info("NDI source '%s' is %dx%d", self.source_name, width, height)
        out = self._outs[self._turn]
        stride = video.get_line_stride() or width * 4
        with memoryview(video) as view:
            flat = np.frombuffer(view, dtype=np.uint8)
            if flat.size < stride * (height - 1) + width * 4:
                del flat
                return None
            rows = np.lib.stride_tricks.as_strided(flat, (height, width, 4), (stride, 4, 1), writeable=False)
            if fourcc in self._bgra:
                out[..., 0] = rows[..., 2]
                out[..., 1] = rows[..., 1]
                out[..., 2] = rows[..., 0]
                out[..., 3] = rows[..., 3]
            else:
                np.copyto(out, rows)
            # Drop the numpy views before the memoryview closes: releasing the last view is
            # what hands the frame back to NDI, and a live one blocks the next capture.
            del rows, flat
        if fourcc in self._no_alpha:
            out[..., 3] = 255  # the X byte is padding, not alpha
        self._last_id = frame_id
        self._turn ^= 1
        return out

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.disconnect()
        if self._finder is not None:
            self._finder.close()
        self._receiver = None
        self._finder = None
        self._video = None


class NdiSink:
    """Publishes frames as the NDI source `name` at a nominal `fps`.

    The frame's size is only known at the first `send`, so the sender is created then; a
    size change closes it, swaps in a new `VideoSendFrame` and reopens (cyndilib refuses
    to change the frame while the sender is open). `clock_video` is off: the render loop
    is the clock, and a clocked send would block the sink thread to pace it.
    """

    def __init__(self, name: str = "streamvj", fps: float = 30.0) -> None:
        if not name:
            raise ConfigError("NDI sink needs a name")
        if not (fps > 0 and math.isfinite(fps)):
            raise ConfigError(f"NDI sink fps must be a finite number > 0, got {fps!r}")
        self.ndi_name = name
        self.fps = fps
        self.name = f"ndi:{name}"
        self._nd: Any = None
        self._sender: Any = None
        self._size: tuple[int, int] | None = None
        self._failing = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _ndi_available()

    def open(self) -> None:
        self._nd = _require_cyndilib()
        self._size = None

    def _start(self, width: int, height: int) -> None:
        nd = self._nd
        if self._sender is not None:
            self._sender.close()
        frame = nd.VideoSendFrame()
        frame.set_resolution(width, height)
        frame.set_frame_rate(ndi_frame_rate(self.fps))
        frame.set_fourcc(nd.FourCC.RGBA)
        sender = self._sender if self._sender is not None else nd.Sender(self.ndi_name, clock_video=False)
        sender.set_video_frame(frame)
        sender.open()
        self._sender = sender
        self._size = (width, height)
        log.info("NDI sender '%s' sending %dx%d RGBA", self.ndi_name, width, height)

    def send(self, rgba_u8: np.ndarray) -> None:
        if self._nd is None:
            raise RuntimeError("NdiSink.send() called before open()")
        check_rgba_u8(rgba_u8, self.name)
        height, width = rgba_u8.shape[:2]
        if self._size != (width, height):
            self._start(width, height)
        # reshape(-1) is a view of the C-contiguous frame: the 1-D buffer cyndilib asks for.
        if self._sender.write_video_async(rgba_u8.reshape(-1)):
            if self._failing:
                log.info("NDI sender '%s' is sending again", self.ndi_name)
                self._failing = False
        elif not self._failing:
            log.warning("NDI sender '%s' is not running; frames are dropped", self.ndi_name)
            self._failing = True

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
        self._sender = None
        self._size = None
