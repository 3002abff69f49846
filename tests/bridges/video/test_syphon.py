"""SyphonSource/SyphonSink against fake `syphon` and `Metal` modules at the import boundary.

Mirrors syphon-python's Metal API (SyphonServerDirectory().servers, SyphonMetalClient with
is_valid / has_new_frame / new_frame_image, SyphonMetalServer.publish_frame_texture) and
PyObjC's MTLTexture getBytes/replaceRegion calls on a buffer.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bridges.video.syphon import SyphonSink, SyphonSource
from engine.errors import BridgeUnavailable, ConfigError
from engine.realtime.frames import FrameSink, FrameSource

RGBA8 = 70
BGRA8 = 80
RGBA16F = 115


class FakeTexture:
    def __init__(self, width: int, height: int, pixel_format: int, rgba: np.ndarray | None = None) -> None:
        self._w, self._h, self._fmt = width, height, pixel_format
        self.rgba = rgba if rgba is not None else np.zeros((height, width, 4), dtype=np.uint8)
        self.uploads = 0

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h

    def pixelFormat(self) -> int:
        return self._fmt

    def getBytes_bytesPerRow_bytesPerImage_fromRegion_mipmapLevel_slice_(
        self, buf: Any, bytes_per_row: int, bytes_per_image: int, region: Any, level: int, slice_: int
    ) -> None:
        assert region == (0, 0, self._w, self._h) and level == 0 and slice_ == 0
        assert bytes_per_row == self._w * 4 and bytes_per_image == self._w * self._h * 4
        native = self.rgba[..., [2, 1, 0, 3]] if self._fmt == BGRA8 else self.rgba
        memoryview(buf).cast("B")[:] = native.tobytes()

    def replaceRegion_mipmapLevel_withBytes_bytesPerRow_(
        self, region: Any, level: int, data: Any, bytes_per_row: int
    ) -> None:
        assert region == (0, 0, self._w, self._h) and level == 0 and bytes_per_row == self._w * 4
        self.rgba = np.frombuffer(bytes(memoryview(data)), dtype=np.uint8).reshape(self._h, self._w, 4)
        self.uploads += 1


class Server:
    """A Syphon server published by some other app."""

    def __init__(self, name: str, app_name: str, width: int, height: int, fmt: int = BGRA8) -> None:
        self.description = types.SimpleNamespace(name=name, app_name=app_name, uuid=id(self), raw=self)
        self.width, self.height, self.fmt = width, height, fmt
        self.count = 0
        self.texture: FakeTexture | None = None

    def publish(self, seed: int) -> np.ndarray:
        rgba = np.random.default_rng(seed).integers(0, 256, (self.height, self.width, 4), dtype=np.uint8)
        self.texture = FakeTexture(self.width, self.height, self.fmt, rgba)
        self.count += 1
        return rgba.copy()


class World:
    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.clients: list[FakeClient] = []
        self.published: list[FakeMetalServer] = []
        self.directory_interval: float | None = None


class FakeClient:
    def __init__(self, world: World, description: Any) -> None:
        self.world = world
        self.server: Server = description.raw
        self.seen = 0
        self.stopped = False
        world.clients.append(self)

    @property
    def is_valid(self) -> bool:
        return not self.stopped and self.server in self.world.servers

    @property
    def has_new_frame(self) -> bool:
        return self.server.count != self.seen

    @property
    def new_frame_image(self) -> FakeTexture | None:
        self.seen = self.server.count
        return self.server.texture

    def stop(self) -> None:
        self.stopped = True


class FakeDevice:
    def newTextureWithDescriptor_(self, descriptor: Any) -> FakeTexture:
        return FakeTexture(descriptor.width, descriptor.height, descriptor.fmt)


class FakeMetalServer:
    def __init__(self, world: World, name: str) -> None:
        self.name = name
        self.device = FakeDevice()
        self.frames: list[np.ndarray] = []
        self.textures: list[FakeTexture] = []
        self.stopped = False
        world.published.append(self)

    def publish_frame_texture(self, texture: FakeTexture) -> None:
        if not self.textures or self.textures[-1] is not texture:
            self.textures.append(texture)
        self.frames.append(texture.rgba.copy())

    def stop(self) -> None:
        self.stopped = True


class FakeClock:
    def __init__(self) -> None:
        self.t = 5.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()

    class Directory:
        def __init__(self) -> None:
            self.run_loop_interval = 1.0

        @property
        def servers(self) -> list[Any]:
            w.directory_interval = self.run_loop_interval
            return [s.description for s in w.servers]

    syphon = types.ModuleType("syphon")
    syphon.SyphonServerDirectory = Directory  # type: ignore[attr-defined]
    syphon.SyphonMetalClient = lambda description: FakeClient(w, description)  # type: ignore[attr-defined]
    syphon.SyphonMetalServer = lambda name: FakeMetalServer(w, name)  # type: ignore[attr-defined]

    metal = types.ModuleType("Metal")
    metal.MTLPixelFormatRGBA8Unorm = RGBA8  # type: ignore[attr-defined]
    metal.MTLPixelFormatBGRA8Unorm = BGRA8  # type: ignore[attr-defined]
    metal.MTLRegionMake2D = lambda x, y, w_, h_: (x, y, w_, h_)  # type: ignore[attr-defined]
    metal.MTLTextureDescriptor = types.SimpleNamespace(  # type: ignore[attr-defined]
        texture2DDescriptorWithPixelFormat_width_height_mipmapped_=lambda fmt, width, height, mip: (
            types.SimpleNamespace(fmt=fmt, width=width, height=height, mip=mip)
        )
    )
    monkeypatch.setitem(sys.modules, "syphon", syphon)
    monkeypatch.setitem(sys.modules, "Metal", metal)
    return w


def test_unavailable_without_syphon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "syphon", None)
    for cls in (SyphonSource, SyphonSink):
        ok, message = cls.is_available()
        assert not ok and "pip install 'streamvj[syphon]'" in message
        with pytest.raises(BridgeUnavailable, match="syphon"):
            cls().open()
    with pytest.raises(ConfigError):
        SyphonSink("")


def test_source_lifecycle(
    world: World, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.syphon")
    clock = FakeClock()
    src = SyphonSource("TD Out", retry_s=1.0, clock=clock)
    assert isinstance(src, FrameSource)
    src.open()
    assert src.read_latest() is None
    assert world.directory_interval is not None and world.directory_interval < 0.01
    assert logged("waiting for Syphon server 'TD Out'")

    server = Server("TD Out", "TouchDesigner", 4, 3, fmt=BGRA8)
    world.servers.append(server)
    expected = server.publish(1)
    assert src.read_latest() is None  # searched again only after retry_s
    clock.t += 1.0
    a = src.read_latest()
    assert a is not None and a.shape == (3, 4, 4) and np.array_equal(a, expected)  # BGRA swapped
    assert src.read_latest() is None
    expected_b = server.publish(2)
    b = src.read_latest()
    assert b is not a and np.array_equal(b, expected_b) and np.array_equal(a, expected)

    server.width, server.height = 6, 2  # size change: reallocated
    expected_c = server.publish(3)
    c = src.read_latest()
    assert c.shape == (2, 6, 4) and np.array_equal(c, expected_c)

    world.servers.remove(server)
    for _ in range(4):
        assert src.read_latest() is None
        clock.t += 0.4
    assert len(logged("Syphon server 'TD Out' vanished")) == 1
    assert world.clients[0].stopped

    back = Server("TD Out", "TouchDesigner", 5, 5, fmt=RGBA8)
    world.servers.append(back)
    expected_d = back.publish(4)
    clock.t += 1.0
    d = src.read_latest()
    assert d is not None and np.array_equal(d, expected_d)
    assert logged("Syphon server 'TD Out' is back")
    assert len(world.clients) == 2
    src.close()
    assert world.clients[1].stopped


def test_source_matches_app_name_and_first_server(world: World) -> None:
    world.servers.append(Server("", "Resolume Arena", 2, 2))
    world.servers.append(Server("Main", "MadMapper", 2, 2))
    by_app = SyphonSource("Resolume Arena", clock=FakeClock())
    by_app.open()
    by_app.read_latest()
    assert world.clients[-1].server is world.servers[0]
    by_name = SyphonSource("Main", clock=FakeClock())
    by_name.open()
    by_name.read_latest()
    assert world.clients[-1].server is world.servers[1]
    first = SyphonSource("", clock=FakeClock())
    first.open()
    first.read_latest()
    assert world.clients[-1].server is world.servers[0]


def test_source_skips_unsupported_formats_logging_once(
    world: World, logged: Callable[[str], list[str]]
) -> None:
    server = Server("HDR", "App", 2, 2, fmt=RGBA16F)
    world.servers.append(server)
    src = SyphonSource("HDR", clock=FakeClock())
    src.open()
    for seed in range(3):
        server.publish(seed)
        assert src.read_latest() is None
    assert len(logged("expected 8-bit RGBA/BGRA")) == 1


def test_sink_publishes_and_recreates_texture_on_resize(world: World) -> None:
    sink = SyphonSink("streamvj")
    assert isinstance(sink, FrameSink)
    sink.open()
    server = world.published[0]
    assert server.name == "streamvj"
    f1 = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    sink.send(f1)
    sink.send(f1)
    f2 = np.full((4, 5, 4), 3, dtype=np.uint8)
    sink.send(f2)
    assert len(server.textures) == 2
    assert server.textures[0].pixelFormat() == RGBA8 and server.textures[0].uploads == 2
    assert np.array_equal(server.frames[0], f1) and np.array_equal(server.frames[-1], f2)
    sink.close()
    assert server.stopped


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Syphon is macOS-only")
def test_real_syphon_loopback(assert_loopback: Callable[..., None]) -> None:
    pytest.importorskip("syphon")
    sink = SyphonSink("streamvj-test-loopback")
    sink.open()
    frame = np.zeros((48, 64, 4), dtype=np.uint8)
    frame[..., 2], frame[..., 3] = 220, 255
    src = SyphonSource("streamvj-test-loopback")
    src.open()
    assert_loopback(sink, src, frame, tries=300)
