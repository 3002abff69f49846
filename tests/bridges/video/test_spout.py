"""SpoutSource/SpoutSink against a fake SpoutGL + OpenGL.GL injected at the import boundary.

The fake mimics the SDK behaviour the bridge relies on: the call that connects (or sees a
new size) reports isUpdated() and copies nothing; pixels arrive in the requested GL order
only when it matches the sender's texture format (a mismatch hands over native bytes, the
red/blue-swap bug); a receiver that knew a sender stays stuck after that sender restarts.
Like WGL, a fake Spout object's GL context is current on the thread that created it, and only
while no other object created one there since: every call made anywhere else is recorded as a
violation, which every test checks for at its end.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import pytest

from bridges.video.spout import SpoutSink, SpoutSource
from engine.errors import BridgeUnavailable, FrameError
from engine.realtime.frames import FrameSink, FrameSource
from tests.fake_clock import FakeClock

GL_RGBA = 0x1908
GL_BGRA = 0x80E1
_instance_ids = itertools.count(1)
_current = threading.local()  # the GL context current on each thread, as WGL keeps it
T = TypeVar("T")


class FakeSender:
    def __init__(self, width: int, height: int, fmt: int = 28) -> None:
        self.instance = next(_instance_ids)
        self.fmt = fmt
        self.count = 0
        self.pixels = np.zeros((height, width, 4), dtype=np.uint8)

    def publish(self, seed: int) -> np.ndarray:
        h, w = self.pixels.shape[:2]
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
        self.count += 1
        return self.pixels.copy()

    def resize(self, width: int, height: int) -> None:
        self.pixels = np.zeros((height, width, 4), dtype=np.uint8)


class World:
    def __init__(self) -> None:
        self.senders: dict[str, FakeSender] = {}
        self.receivers: list[FakeReceiver] = []
        self.spout_senders: list[FakeSpoutSender] = []
        self.send_ok = True
        self.violations: list[str] = []
        self.release_gate: threading.Event | None = None  # set: releases block until it is set (a stuck driver)


class GLObject:
    """What a Spout object shares: a hidden GL context that is current on one thread."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.gl_thread: int | None = None
        self.gl_open = False

    def createOpenGL(self) -> bool:
        self.gl_thread = threading.get_ident()
        _current.context = self
        self.gl_open = True
        return True

    def closeOpenGL(self) -> bool:
        self.on_gl("closeOpenGL")
        _current.context = None
        self.gl_open = False
        return True

    def on_gl(self, call: str) -> None:
        here = threading.current_thread().name
        if self.gl_thread != threading.get_ident():
            self.world.violations.append(f"{type(self).__name__}.{call} on {here}, not the thread of its context")
        elif getattr(_current, "context", None) is not self:
            self.world.violations.append(f"{type(self).__name__}.{call} on {here} with another context current")


class FakeReceiver(GLObject):
    def __init__(self, world: World) -> None:
        super().__init__(world)
        world.receivers.append(self)
        self.name = ""
        self.bound: int | None = None
        self.size = (0, 0)
        self.fmt = 0
        self.updated = False
        self.connected = False
        self.new = False
        self.last_count = -1
        self.requested: list[int] = []
        self.released = False

    def setReceiverName(self, name: str) -> None:
        self.on_gl("setReceiverName")
        self.name = name

    def releaseReceiver(self) -> None:
        self.on_gl("releaseReceiver")
        if self.world.release_gate is not None:
            self.world.release_gate.wait(30)
        self.released = True

    def _sender(self) -> tuple[str, FakeSender] | None:
        if self.name:
            sender = self.world.senders.get(self.name)
            return (self.name, sender) if sender else None
        return next(iter(self.world.senders.items()), None)

    def receiveImage(self, buf: np.ndarray | None, gl_format: int, invert: bool, fbo: int) -> bool:
        self.on_gl("receiveImage")
        assert invert is False and fbo == 0
        self.requested.append(gl_format)
        found = self._sender()
        if found is None or (self.bound is not None and found[1].instance != self.bound):
            self.connected = False  # gone, or restarted: this receiver is stuck
            return False
        _, sender = found
        self.connected = True
        h, w = sender.pixels.shape[:2]
        if self.bound is None or (w, h) != self.size or sender.fmt != self.fmt:
            self.bound, self.size, self.fmt = sender.instance, (w, h), sender.fmt
            self.updated = True
            return True
        if buf is None:
            return True
        assert buf.shape == (h, w, 4) and buf.flags.c_contiguous
        native_bgra = sender.fmt == 87
        wants_bgra = gl_format == GL_BGRA
        data = sender.pixels[..., [2, 1, 0, 3]] if (native_bgra or wants_bgra) else sender.pixels
        buf[...] = data
        self.new = sender.count != self.last_count
        self.last_count = sender.count
        return True

    def isUpdated(self) -> bool:
        updated, self.updated = self.updated, False
        return updated

    def isConnected(self) -> bool:
        return self.connected

    def isFrameNew(self) -> bool:
        return self.new

    def getSenderWidth(self) -> int:
        return self.size[0]

    def getSenderHeight(self) -> int:
        return self.size[1]

    def getSenderFormat(self) -> int:
        return self.fmt

    def getSenderName(self) -> int:
        return self.size[0]  # the real binding's bug: this returns the width

    def getActiveSender(self) -> str:
        return next(iter(self.world.senders), "")


class FakeSpoutSender(GLObject):
    def __init__(self, world: World) -> None:
        super().__init__(world)
        world.spout_senders.append(self)
        self.name = ""
        self.sent: list[tuple[np.ndarray, int, int, int, bool, int]] = []
        self.syncs: list[str] = []
        self.released = False

    def setSenderName(self, name: str) -> None:
        self.on_gl("setSenderName")
        self.name = name

    def sendImage(
        self, buf: np.ndarray, width: int, height: int, gl_format: int, invert: bool, fbo: int
    ) -> bool:
        self.on_gl("sendImage")
        assert buf.flags.c_contiguous and buf.nbytes >= width * height * 4
        self.sent.append((buf.copy(), width, height, gl_format, invert, fbo))
        return self.world.send_ok

    def setFrameSync(self, name: str) -> None:
        self.on_gl("setFrameSync")
        self.syncs.append(name)

    def releaseSender(self) -> None:
        self.on_gl("releaseSender")
        self.released = True


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World()
    spoutgl = types.ModuleType("SpoutGL")
    spoutgl.SpoutReceiver = lambda: FakeReceiver(w)  # type: ignore[attr-defined]
    spoutgl.SpoutSender = lambda: FakeSpoutSender(w)  # type: ignore[attr-defined]
    opengl = types.ModuleType("OpenGL")
    gl = types.ModuleType("OpenGL.GL")
    gl.GL_RGBA = GL_RGBA  # type: ignore[attr-defined]
    gl.GL_BGRA = GL_BGRA  # type: ignore[attr-defined]
    opengl.GL = gl  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "SpoutGL", spoutgl)
    monkeypatch.setitem(sys.modules, "OpenGL", opengl)
    monkeypatch.setitem(sys.modules, "OpenGL.GL", gl)
    yield w
    assert w.violations == []


@pytest.fixture
def opened(world: World) -> Iterator[Callable[[T], T]]:
    """opened(bridge): the bridge, opened; closed when the test ends (its GL thread with it)."""
    bridges: list = []

    def open_it(bridge: T) -> T:
        bridge.open()  # type: ignore[attr-defined]
        bridges.append(bridge)
        return bridge

    yield open_it
    for bridge in bridges:
        bridge.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("streamvj-spout")]


def test_unavailable_without_spoutgl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "SpoutGL", None)
    for cls in (SpoutSource, SpoutSink):
        ok, message = cls.is_available()
        assert not ok and "pip install 'streamvj[spout]'" in message and "\n" not in message
        with pytest.raises(BridgeUnavailable, match="spout"):
            cls().open()


def test_source_lifecycle(
    world: World, opened: Callable, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamvj.spout")
    clock = FakeClock(50.0)
    src = opened(SpoutSource("TDOut", retry_s=1.0, stale_s=100.0, clock=clock))
    assert isinstance(src, FrameSource)
    assert world.receivers == []  # created on the polling thread, at the first read

    # No sender yet.
    assert src.read_latest() is None
    assert world.receivers[0].gl_open and world.receivers[0].name == "TDOut"
    assert logged("waiting for Spout sender 'TDOut'")

    # Sender appears: the update call returns nothing, the next call the frame.
    sender = FakeSender(4, 2)
    world.senders["TDOut"] = sender
    expected = sender.publish(1)
    assert src.read_latest() is None
    a = src.read_latest()
    assert a is not None and a.shape == (2, 4, 4) and np.array_equal(a, expected)
    assert src.read_latest() is None  # nothing new

    # Next frame lands in the other buffer; the first stays intact.
    expected_b = sender.publish(2)
    b = src.read_latest()
    assert b is not a and np.array_equal(b, expected_b) and np.array_equal(a, expected)

    # Size change: reallocate to the sender's size.
    sender.resize(6, 3)
    expected_c = sender.publish(3)
    assert src.read_latest() is None
    c = src.read_latest()
    assert c.shape == (3, 6, 4) and np.array_equal(c, expected_c)
    assert len(world.receivers) == 1

    # Sender vanishes: None, and one warning however long it stays away.
    del world.senders["TDOut"]
    for _ in range(5):
        assert src.read_latest() is None
        clock.t += 0.6
    assert len(logged("Spout sender 'TDOut' vanished")) == 1
    assert world.receivers[0].released and not world.receivers[0].gl_open

    # It restarts as BGRA: a fresh receiver connects, asks for BGRA and swaps once.
    restarted = FakeSender(5, 2, fmt=87)
    world.senders["TDOut"] = restarted
    expected_d = restarted.publish(4)
    assert src.read_latest() is None
    d = src.read_latest()
    assert d is not None and np.array_equal(d, expected_d)
    assert world.receivers[-1].requested[-1] == GL_BGRA
    assert len(world.receivers) == 2
    assert logged("Spout sender 'TDOut' is back")
    assert logged("BGRA, swapped to RGBA")
    assert len(logged("vanished")) == 1
    src.close()
    assert world.receivers[-1].released


def test_source_recreates_a_receiver_that_went_stale(
    world: World, opened: Callable, logged: Callable[[str], list[str]]
) -> None:
    clock = FakeClock(50.0)
    sender = FakeSender(2, 2)
    world.senders["A"] = sender
    sender.publish(1)
    src = opened(SpoutSource("A", stale_s=5.0, clock=clock))
    src.read_latest()
    assert src.read_latest() is not None
    for _ in range(3):
        clock.t += 2.0
        assert src.read_latest() is None
    assert world.receivers[0].released  # quietly released after 5 s without a new frame
    assert not logged("vanished")
    expected = sender.publish(2)
    assert src.read_latest() is None  # a fresh receiver's update call
    assert len(world.receivers) == 2
    assert np.array_equal(src.read_latest(), expected)


def test_source_without_name_uses_active_sender(
    world: World, opened: Callable, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.spout")
    world.senders["Resolume Out"] = FakeSender(3, 3)
    world.senders["Resolume Out"].publish(7)
    src = opened(SpoutSource("", clock=FakeClock(50.0)))
    src.read_latest()
    assert src.read_latest() is not None
    assert world.receivers[0].name == ""
    assert logged("Spout sender 'Resolume Out' is 3x3")


def test_sink_sends_rgba_and_frame_sync(world: World, opened: Callable) -> None:
    sink = opened(SpoutSink("streamvj-out", clock=FakeClock(50.0)))
    assert isinstance(sink, FrameSink)
    frame = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    sink.send(frame)
    sink.send(np.zeros((5, 7, 4), dtype=np.uint8))
    spout = world.spout_senders[0]
    assert spout.name == "streamvj-out"
    buf, w, h, fmt, invert, fbo = spout.sent[0]
    assert np.array_equal(buf, frame) and (w, h, fmt, invert, fbo) == (3, 2, GL_RGBA, False, 0)
    assert spout.sent[1][1:3] == (7, 5)
    assert spout.syncs == ["streamvj-out", "streamvj-out"]
    with pytest.raises(FrameError):
        sink.send(np.zeros((2, 3, 4), dtype=np.float32))
    sink.close()
    assert spout.released


def test_sink_failure_is_logged_once_and_recreated(
    world: World, opened: Callable, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.spout")
    clock = FakeClock(50.0)
    sink = opened(SpoutSink("out", retry_s=1.0, clock=clock))
    frame = np.zeros((2, 2, 4), dtype=np.uint8)
    world.send_ok = False
    for _ in range(4):
        sink.send(frame)
        clock.t += 0.4
    assert len(logged("could not send")) == 1
    assert world.spout_senders[0].released
    failed_senders = len(world.spout_senders)
    assert 1 < failed_senders <= 3  # recreated at most once per retry_s
    world.send_ok = True
    clock.t += 1.0
    sink.send(frame)
    assert logged("sending again")


# ---- the GL context's thread ---------------------------------------------------------------------


def test_every_spout_call_runs_on_the_bridges_own_thread(world: World, opened: Callable) -> None:
    """The runtime reads a source on its source thread and closes it from the main thread once
    that thread ended; WGL wants the context created, used and destroyed on one thread."""
    sender = FakeSender(2, 2)
    world.senders["TD"] = sender
    sender.publish(1)
    src = opened(SpoutSource("TD", clock=FakeClock(50.0)))
    got: list = []

    def source_thread() -> None:
        got.extend(src.read_latest() for _ in range(2))

    reader = threading.Thread(target=source_thread, name="streamvj-source")
    reader.start()
    reader.join(30)
    assert got[1] is not None
    src.close()  # from the main thread, after the reader ended
    receiver = world.receivers[0]
    assert receiver.released and not receiver.gl_open
    assert receiver.gl_thread not in (threading.get_ident(), reader.ident)
    assert world.violations == []


def test_a_source_and_a_sink_on_one_caller_thread_keep_their_own_contexts(world: World, opened: Callable) -> None:
    """Creating a second context makes it current on that thread: had the sink and the source
    run their calls on one thread, the source would have received with the sink's context."""
    sender = FakeSender(2, 2)
    world.senders["TD"] = sender
    src = opened(SpoutSource("TD", clock=FakeClock(50.0)))
    sink = opened(SpoutSink("out", clock=FakeClock(50.0)))
    frame = np.zeros((2, 2, 4), np.uint8)
    received = 0
    for k in range(4):
        sender.publish(k)
        sink.send(frame)
        received += src.read_latest() is not None
    assert received == 3  # the first read connects (isUpdated) and copies nothing
    assert world.receivers[0].gl_thread != world.spout_senders[0].gl_thread
    assert world.violations == []


def test_a_driver_stuck_in_release_does_not_hang_close(
    world: World, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.WARNING, logger="streamvj.spout")
    world.senders["TD"] = FakeSender(2, 2)
    src = SpoutSource("TD", clock=FakeClock(50.0), close_timeout_s=0.2)
    src.open()
    src.read_latest()
    world.release_gate = threading.Event()
    try:
        src.close()  # returns although releaseReceiver never does
        assert logged("Spout receiver 'TD'") and logged("leaving it to the end of the process")
        with pytest.raises(RuntimeError, match="before open"):
            src.read_latest()
    finally:
        world.release_gate.set()
    gl_threads = [t for t in threading.enumerate() if t.name == "streamvj-spout-in"]
    for t in gl_threads:
        t.join(30)  # the fake driver returned: the thread finishes its call and waits for no more
    assert world.receivers[0].released


def test_sink_close_releases_on_its_thread(world: World) -> None:
    sink = SpoutSink("out", clock=FakeClock(50.0))
    sink.open()
    sink.send(np.zeros((2, 2, 4), np.uint8))
    sink.close()
    sender = world.spout_senders[0]
    assert sender.released and not sender.gl_open and sender.gl_thread != threading.get_ident()
    assert not [t for t in threading.enumerate() if t.name == "streamvj-spout-out"]


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="Spout is Windows-only")
def test_real_spout_loopback(assert_loopback: Callable[..., None]) -> None:
    pytest.importorskip("SpoutGL")
    sink = SpoutSink("streamvj-test-loopback")
    src = SpoutSource("streamvj-test-loopback")
    sink.open()
    src.open()
    frame = np.zeros((64, 96, 4), dtype=np.uint8)
    frame[..., 0], frame[..., 3] = 200, 255
    assert_loopback(sink, src, frame, tries=200)
