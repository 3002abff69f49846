"""Syphon (macOS) through `syphon-python`'s Metal classes, with PyObjC's `Metal` for textures.

Both are the 'syphon' extra (macOS only) and are imported lazily. Syphon has no usable
new-frame callback from Python, so the source polls `has_new_frame`. Pixels move with
Metal's own `getBytes`/`replaceRegion` straight from/into our numpy buffers, as
syphon-python's helpers do, but without their per-frame `bytes` copies.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.errors import BridgeUnavailable, ConfigError
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.syphon")

_MISSING = "Syphon needs the 'syphon' extra on macOS: pip install 'streamvj[syphon]'"


def _import_syphon() -> tuple[Any, Any]:
    return importlib.import_module("syphon"), importlib.import_module("Metal")


def _syphon_available() -> tuple[bool, str]:
    try:
        _import_syphon()
    except ImportError as exc:
        return False, f"{_MISSING} ({exc})"
    return True, ""


def _require_syphon() -> tuple[Any, Any]:
    """syphon and Metal, or BridgeUnavailable naming the extra to install."""
    ok, message = _syphon_available()
    if not ok:
        raise BridgeUnavailable(message)
    return _import_syphon()


class SyphonSource:
    """Receives from the Syphon server `server_name` ("" = the first one listed).

    A server matches on its name, or on its app name (many apps publish one unnamed
    server). The directory is searched every `retry_s` until the server appears; a
    client that turns invalid (server quit) is logged once as vanished, stopped, and the
    search resumes. Returned arrays alternate between two buffers: each stays valid until
    the next-but-one frame returned.
    """

    def __init__(
        self,
        server_name: str = "",
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.server_name = server_name
        self.name = f"syphon:{server_name}" if server_name else "syphon"
        self._label = server_name or "(first server)"
        self._retry_s = retry_s
        self._clock = clock
        self._syphon: Any = None
        self._metal: Any = None
        self._directory: Any = None
        self._client: Any = None
        self._connected_once = False
        self._vanished = False
        self._waiting_logged = False
        self._bad_format_logged = False
        self._next_search = 0.0
        self._outs: list[np.ndarray] = []
        self._rx: np.ndarray | None = None
        self._turn = 0

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _syphon_available()

    def open(self) -> None:
        self._syphon, self._metal = _require_syphon()
        self._directory = self._syphon.SyphonServerDirectory()
        # `servers` pumps the run loop for run_loop_interval seconds (default 1 s): keep it short.
        self._directory.run_loop_interval = 0.001
        metal = self._metal
        self._rgba_formats = {
            metal.MTLPixelFormatRGBA8Unorm,
            getattr(metal, "MTLPixelFormatRGBA8Unorm_sRGB", -1),
        }
        self._bgra_formats = {
            metal.MTLPixelFormatBGRA8Unorm,
            getattr(metal, "MTLPixelFormatBGRA8Unorm_sRGB", -1),
        }
        self._next_search = self._clock()

    def _find(self) -> Any:
        servers = self._directory.servers
        if not self.server_name:
            return servers[0] if servers else None
        for server in servers:
            if server.name == self.server_name:
                return server
        for server in servers:
            if server.app_name == self.server_name:
                return server
        return None

    def _search(self, now: float) -> bool:
        if now < self._next_search:
            return False
        self._next_search = now + self._retry_s
        description = self._find()
        if description is None:
            if not self._connected_once and not self._waiting_logged:
                log.info("waiting for Syphon server '%s'", self._label)
                self._waiting_logged = True
            return False
        self._client = self._syphon.SyphonMetalClient(description)
        if self._vanished:
            log.info("Syphon server '%s' is back", self._label)
        else:
            log.info("Syphon client connected to '%s' (%s)", description.name, description.app_name)
        self._vanished = False
        self._connected_once = True
        return True

    def read_latest(self) -> np.ndarray | None:
        if self._directory is None:
            raise RuntimeError("SyphonSource.read_latest() called before open()")
        now = self._clock()
        if self._client is None and not self._search(now):
            return None
        client = self._client
        if not client.is_valid:
            if not self._vanished:
                log.warning("Syphon server '%s' vanished; waiting for it to return", self._label)
                self._vanished = True
            client.stop()
            self._client = None
            self._next_search = now + self._retry_s
            return None
        if not client.has_new_frame:
            return None
        texture = client.new_frame_image
        if texture is None:
            return None
        return self._copy(texture)

    def _copy(self, texture: Any) -> np.ndarray | None:
        width, height = int(texture.width()), int(texture.height())
        pixel_format = texture.pixelFormat()
        swap = pixel_format in self._bgra_formats
        if not swap and pixel_format not in self._rgba_formats:
            if not self._bad_format_logged:
                log.warning(
                    "Syphon server '%s' sends pixel format %s, expected 8-bit RGBA/BGRA; skipping",
                    self._label,
                    pixel_format,
                )
                self._bad_format_logged = True
            return None
        if width <= 0 or height <= 0:
            return None
        if not self._outs or self._outs[0].shape[:2] != (height, width):
            self._outs = [np.empty((height, width, 4), dtype=np.uint8) for _ in range(2)]
            self._rx = None
            log.info("Syphon server '%s' is %dx%d", self._label, width, height)
        if swap and self._rx is None:
            self._rx = np.empty((height, width, 4), dtype=np.uint8)
        out = self._outs[self._turn]
        target = self._rx if swap and self._rx is not None else out
        region = self._metal.MTLRegionMake2D(0, 0, width, height)
        texture.getBytes_bytesPerRow_bytesPerImage_fromRegion_mipmapLevel_slice_(
            target, width * 4, width * height * 4, region, 0, 0
        )
        if target is not out:
            out[..., 0] = target[..., 2]
            out[..., 1] = target[..., 1]
            out[..., 2] = target[..., 0]
            out[..., 3] = target[..., 3]
        self._turn ^= 1
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.stop()
        self._client = None
        self._directory = None


class SyphonSink:
    """Publishes frames as the Syphon Metal server `name`.

    One RGBA8 Metal texture, recreated when the frame size changes; each frame is
    uploaded with `replaceRegion` and published with `publish_frame_texture` (rgba_u8
    rows are top-down, Metal's texture origin is top-left: no flip).
    """

    def __init__(self, name: str = "streamvj") -> None:
        if not name:
            raise ConfigError("Syphon sink needs a server name")
        self.server_name = name
        self.name = f"syphon:{name}"
        self._metal: Any = None
        self._server: Any = None
        self._texture: Any = None
        self._region: Any = None
        self._size: tuple[int, int] | None = None

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return _syphon_available()

    def open(self) -> None:
        syphon, self._metal = _require_syphon()
        self._server = syphon.SyphonMetalServer(self.server_name)
        self._size = None
        log.info("Syphon server '%s' started", self.server_name)

    def _make_texture(self, width: int, height: int) -> None:
        metal = self._metal
        descriptor = metal.MTLTextureDescriptor.texture2DDescriptorWithPixelFormat_width_height_mipmapped_(
            metal.MTLPixelFormatRGBA8Unorm, width, height, False
        )
        self._texture = self._server.device.newTextureWithDescriptor_(descriptor)
        self._region = metal.MTLRegionMake2D(0, 0, width, height)
        self._size = (width, height)
        log.info("Syphon server '%s' publishing %dx%d", self.server_name, width, height)

    def send(self, rgba_u8: np.ndarray) -> None:
        if self._server is None:
            raise RuntimeError("SyphonSink.send() called before open()")
        check_rgba_u8(rgba_u8, self.name)
        height, width = rgba_u8.shape[:2]
        if self._size != (width, height):
            self._make_texture(width, height)
        self._texture.replaceRegion_mipmapLevel_withBytes_bytesPerRow_(self._region, 0, rgba_u8, width * 4)
        self._server.publish_frame_texture(self._texture)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None
        self._texture = None
        self._size = None
