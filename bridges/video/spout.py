"""Spout (Windows) through `SpoutGL`: receive a sender's texture as rgba_u8, publish ours.

SpoutGL and PyOpenGL are imported lazily, so this module imports everywhere; they are the
'spout' extra (Windows only). A Spout object's hidden GL context (`createOpenGL`, needed
headless) is current on one thread, and its hidden window can only be destroyed there, so
each SpoutSource / SpoutSink runs every Spout call on its own `GLThread`
(bridges/video/gl_thread.py, started by `open`): the context is created on the first
`read_latest` / `send`, used, and released by `close`, all on that thread, although the
runtime reads on its source thread and closes from the main thread.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bridges.video.gl_thread import GLThread, GLThreadStuck
from engine.errors import BridgeUnavailable
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.spout")

_MISSING = "Spout needs the 'spout' extra on Windows: pip install 'streamvj[spout]'"

# Sender texture formats (DXGI_FORMAT) whose bytes are B, G, R, A: we receive them in their
# own order and swap once, instead of trusting the readback to convert (a red/blue swap
# is the classic Spout bug report). Everything else is requested as GL_RGBA.
_DXGI_RGBA = 28  # DXGI_FORMAT_R8G8B8A8_UNORM
_DXGI_BGRA = 87  # DXGI_FORMAT_B8G8R8A8_UNORM
_BGRA_FORMATS = frozenset({_DXGI_BGRA})
CLOSE_TIMEOUT_S = 5.0  # a driver stuck in a release call must not hang the engine's shutdown


def _import_spout() -> tuple[Any, Any]:
    return importlib.import_module("SpoutGL"), importlib.import_module("OpenGL.GL")


def _spout_available() -> tuple[bool, str]:
    try:
        _import_spout()
    except ImportError as exc:
        return False, f"{_MISSING} ({exc})"
    return True, ""


def _require_spout() -> tuple[Any, Any]:
    """SpoutGL and OpenGL.GL, or BridgeUnavailable naming the extra to install."""
    ok, message = _spout_available()
    if not ok:
        raise BridgeUnavailable(message)
    return _import_spout()


def _with_gl_context(spout_object: Any) -> Any:
    """A new SpoutReceiver/SpoutSender, once its hidden OpenGL context is created."""
    if not spout_object.createOpenGL():
        raise BridgeUnavailable("Spout: could not create an OpenGL context (is a GPU driver installed?)")
    return spout_object


def _close_on(gl: GLThread | None, release: Callable[[], None], what: str, timeout: float) -> None:
    """Run `release` on the object's GL thread, then end that thread; a stuck driver is logged."""
    if gl is None:
        return
    try:
        gl.call(release, timeout=timeout)
    except GLThreadStuck as exc:
        log.warning("%s: %s; leaving it to the end of the process", what, exc)
        return
    finally:
        gl.stop(timeout)


def _bgra_to_rgba(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    dst[..., 0] = src[..., 2]
    dst[..., 1] = src[..., 1]
    dst[..., 2] = src[..., 0]
    dst[..., 3] = src[..., 3]
    return dst


class SpoutSource:
    """Receives from the Spout sender `sender_name` ("" = the active sender).

    Follows SpoutGL's receive loop: `receiveImage` into a reused buffer; on `isUpdated()`
    reallocate to the sender's size and re-read its format; a frame is copied out (and
    red/blue-swapped for BGRA senders, in the same pass) only when `isFrameNew()`. A sender that stops answering for `retry_s` is logged once as vanished
    and the receiver is released and recreated (Spout receivers can stick to a dead sender
    otherwise); a connected sender that sends nothing new for `stale_s` gets the same
    quiet recreate. Returned arrays alternate between two buffers: each stays valid until
    the next-but-one frame returned.
    """

    def __init__(
        self,
        sender_name: str = "",
        retry_s: float = 1.0,
        stale_s: float = 5.0,
        clock: Callable[[], float] = time.perf_counter,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.sender_name = sender_name
        self.name = f"spout:{sender_name}" if sender_name else "spout"
        self._retry_s = retry_s
        self._stale_s = stale_s
        self._clock = clock
        self._close_timeout_s = close_timeout_s
        self._gl: GLThread | None = None
        self._read_on_gl = self._read  # bound once: no allocation per poll
        self._spout: Any = None
        self._gl_rgba = 0
        self._gl_bgra = 0
        self._receiver: Any = None
        self._rx_format = 0
        self._swap = False
        self._rx: np.ndarray | None = None
        self._outs: list[np.ndarray] = []
        self._turn = 0
        self._width = 0
        self._height = 0
        self._label = sender_name or "(active sender)"
        self._logged_shape: tuple[int, int, int] | None = None
        self._connected_once = False
        self._vanished = False
        self._waiting_logged = False
        self._missing_since: float | None = None
        self._last_new = 0.0
        self._opened = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _spout_available()

    def open(self) -> None:
        self._spout, gl = _require_spout()
        self._gl_rgba = gl.GL_RGBA
        self._gl_bgra = gl.GL_BGRA
        self._rx_format = self._gl_rgba
        self._gl = GLThread("streamvj-spout-in")
        self._opened = True

    def _create_receiver(self) -> None:
        receiver = _with_gl_context(self._spout.SpoutReceiver())
        if self.sender_name:
            receiver.setReceiverName(self.sender_name)
        self._receiver = receiver
        self._rx = None
        self._outs = []
        self._width = self._height = 0
        self._rx_format = self._gl_rgba
        self._swap = False

    def _release_receiver(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.releaseReceiver()
            receiver.closeOpenGL()

    def _reallocate(self, width: int, height: int, sender_format: int) -> None:
        self._swap = sender_format in _BGRA_FORMATS
        self._rx_format = self._gl_bgra if self._swap else self._gl_rgba
        if width <= 0 or height <= 0:
            self._outs, self._rx = [], None
            return
        if (width, height) != (self._width, self._height) or not self._outs:
            self._outs = [np.zeros((height, width, 4), dtype=np.uint8) for _ in range(2)]
            self._width, self._height = width, height
        if self._rx is None or self._rx.shape[:2] != (height, width):
            self._rx = np.zeros((height, width, 4), dtype=np.uint8)
        # getActiveSender, not getSenderName: the binding maps getSenderName to the width.
        # Early SpoutGL releases lack getActiveSender; the label is only for logs then.
        active = getattr(self._receiver, "getActiveSender", None)
        if not self.sender_name and active is not None:
            self._label = str(active()) or self._label
        shape = (width, height, sender_format)
        if shape == self._logged_shape:
            return
        self._logged_shape = shape
        log.info(
            "Spout sender '%s' is %dx%d, format %d%s",
            self._label,
            width,
            height,
            sender_format,
            " (BGRA, swapped to RGBA)" if self._swap else "",
        )

    def _alive(self, now: float) -> None:
        if self._vanished:
            log.info("Spout sender '%s' is back (%dx%d)", self._label, self._width, self._height)
        elif not self._connected_once:
            log.info("Spout receiver connected to '%s'", self._label)
        self._vanished = False
        self._connected_once = True
        self._missing_since = None

    def _missing(self, now: float) -> None:
        if self._missing_since is None:
            self._missing_since = now
            if not self._connected_once and not self._waiting_logged:
                log.info("waiting for Spout sender '%s'", self._label)
                self._waiting_logged = True
            return
        if self._vanished or not self._connected_once or now - self._missing_since < self._retry_s:
            return
        # Recreate once per disappearance: a receiver that knew the old sender can stay stuck
        # on it after a restart, while a fresh one connects when the sender comes back.
        log.warning("Spout sender '%s' vanished; waiting for it to return", self._label)
        self._vanished = True
        self._release_receiver()

    def read_latest(self) -> np.ndarray | None:
        if not self._opened or self._gl is None:
            raise RuntimeError("SpoutSource.read_latest() called before open()")
        return self._gl.call(self._read_on_gl)

    def _read(self) -> np.ndarray | None:
        """One poll, on the GL thread."""
        if self._receiver is None:
            self._create_receiver()
        receiver = self._receiver
        now = self._clock()
        # Spout writes into the buffer on every call, new frame or not: receive into scratch
        # and copy out only new frames, so returned frames are never overwritten in place.
        received = receiver.receiveImage(self._rx, self._rx_format, False, 0)
        if receiver.isUpdated():
            # Spout skips the pixel copy on the call that reports the update: nothing to return yet.
            self._reallocate(
                receiver.getSenderWidth(), receiver.getSenderHeight(), receiver.getSenderFormat()
            )
            self._alive(now)
            self._last_new = now
            return None
        rx = self._rx
        if not received or rx is None or not receiver.isConnected():
            self._missing(now)
            return None
        self._alive(now)
        if not receiver.isFrameNew():
            if now - self._last_new >= self._stale_s:
                log.debug(
                    "Spout sender '%s' sent nothing for %.1f s; recreating the receiver",
                    self._label,
                    self._stale_s,
                )
                self._release_receiver()
                self._last_new = now
            return None
        self._last_new = now
        out = self._outs[self._turn]
        self._turn ^= 1
        if self._swap:
            _bgra_to_rgba(rx, out)
        else:
            np.copyto(out, rx)
        return out

    def close(self) -> None:
        gl, self._gl = self._gl, None
        self._opened = False
        _close_on(gl, self._release_receiver, f"Spout receiver '{self._label}'", self._close_timeout_s)


class SpoutSink:
    """Publishes frames as the Spout sender `sender_name`.

    `sendImage(frame, w, h, GL_RGBA, invert=False, 0)`: rgba_u8 rows are already top-down,
    which is what Spout receivers expect from a pixel upload; then `setFrameSync` so
    receivers that wait on the frame event wake up. A size change needs nothing: Spout
    resizes the shared texture itself. A failed send is logged once and the sender is
    recreated, at most every `retry_s`.
    """

    def __init__(
        self,
        sender_name: str = "streamvj",
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.sender_name = sender_name
        self.name = f"spout:{sender_name}"
        self._retry_s = retry_s
        self._clock = clock
        self._close_timeout_s = close_timeout_s
        self._gl: GLThread | None = None
        self._send_on_gl = self._send  # bound once: no allocation per frame
        self._frame: np.ndarray | None = None  # the frame being sent, only during send()
        self._spout: Any = None
        self._gl_rgba = 0
        self._sender: Any = None
        self._failing = False
        self._next_retry = 0.0
        self._opened = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _spout_available()

    def open(self) -> None:
        self._spout, gl = _require_spout()
        self._gl_rgba = gl.GL_RGBA
        self._gl = GLThread("streamvj-spout-out")
        self._opened = True

    def _create_sender(self) -> None:
        sender = _with_gl_context(self._spout.SpoutSender())
        sender.setSenderName(self.sender_name)
        self._sender = sender

    def _release_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.releaseSender()
            sender.closeOpenGL()

    def send(self, rgba_u8: np.ndarray) -> None:
        if not self._opened or self._gl is None:
            raise RuntimeError("SpoutSink.send() called before open()")
        check_rgba_u8(rgba_u8, self.name)
        self._frame = rgba_u8
        try:
            self._gl.call(self._send_on_gl)
        finally:
            self._frame = None  # the caller's buffer goes back to its pool after send()

    def _send(self) -> None:
        """One frame, on the GL thread."""
        rgba_u8 = self._frame
        assert rgba_u8 is not None
        now = self._clock()
        if self._sender is None:
            if now < self._next_retry:
                return
            self._create_sender()
        height, width = rgba_u8.shape[:2]
        if self._sender.sendImage(rgba_u8, width, height, self._gl_rgba, False, 0):
            self._sender.setFrameSync(self.sender_name)
            if self._failing:
                log.info("Spout sender '%s' is sending again (%dx%d)", self.sender_name, width, height)
                self._failing = False
            return
        if not self._failing:
            log.warning(
                "Spout sender '%s' could not send a %dx%d frame; recreating it",
                self.sender_name,
                width,
                height,
            )
            self._failing = True
        self._release_sender()
        self._next_retry = now + self._retry_s

    def close(self) -> None:
        gl, self._gl = self._gl, None
        self._opened = False
        _close_on(gl, self._release_sender, f"Spout sender '{self.sender_name}'", self._close_timeout_s)
