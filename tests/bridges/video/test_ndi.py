"""NdiSource/NdiSink against a fake `cyndilib` injected at the import boundary, plus real
cyndilib smoke tests (a sender needs no network) and a discovery loopback behind `network`.

The fake keeps the real API's shape (checked against cyndilib 0.1.3): frame-sync capture
into a `VideoFrameSync` read through the buffer protocol, which refuses a new capture
while a view of the previous frame is alive; `write_video_async` takes a 1-D buffer;
`set_video_frame` is refused while the sender is open.
"""

from __future__ import annotations

import enum
import logging
import sys
import types
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from bridges.video.ndi import NdiSink, NdiSource, ndi_frame_rate
from engine.errors import BridgeUnavailable, ConfigError
from engine.realtime.frames import FrameSink, FrameSource
from tests.fake_clock import FakeClock


class FourCC(enum.IntEnum):
    UYVY = 1
    BGRA = 2
    BGRX = 3
    RGBA = 4
    RGBX = 5


class RecvColorFormat(enum.IntEnum):
    RGBX_RGBA = 1


class RecvBandwidth(enum.IntEnum):
    highest = 1


class RemoteSource:
    """What an NDI sender on the network is currently showing."""

    def __init__(self, width: int, height: int, fourcc: FourCC = FourCC.RGBA, pad: int = 0) -> None:
        self.width, self.height, self.fourcc, self.pad = width, height, fourcc, pad
        self.stamp = 0.0
        self.pixels = np.zeros((height, width, 4), dtype=np.uint8)

    def publish(self, seed: int) -> np.ndarray:
        self.pixels = np.random.default_rng(seed).integers(
            0, 256, (self.height, self.width, 4), dtype=np.uint8
        )
        self.stamp += 1.0
        return self.pixels.copy()


class Net:
    def __init__(self) -> None:
        self.sources: dict[str, RemoteSource] = {}
        self.receivers: list[FakeReceiver] = []
        self.senders: list[FakeSender] = []


class FakeVideoFrameSync(bytearray):
    """bytearray gives the buffer protocol; exporting views blocks resizing, like the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.xres = self.yres = 0
        self.fourcc = FourCC.UYVY
        self.stride = 0
        self.stamp = 0.0

    def get_line_stride(self) -> int:
        return self.stride

    def get_timestamp_posix(self) -> float:
        return self.stamp

    def get_timecode_posix(self) -> float:
        return 922337203685.4775  # NDI's "undefined" timecode, constant


class FakeFrameSync:
    def __init__(self, receiver: FakeReceiver) -> None:
        self.receiver = receiver
        self.video: FakeVideoFrameSync | None = None
        self.captures = 0

    def set_video_frame(self, video: FakeVideoFrameSync) -> None:
        self.video = video

    def capture_video(self) -> None:
        video = self.video
        assert video is not None
        try:
            video.append(0)
            video.pop()
        except BufferError:
            raise ValueError("cannot write with view active") from None
        self.captures += 1
        src = self.receiver.current()
        if src is None:
            return  # the frame sync keeps handing back the last frame
        stride = src.width * 4 + src.pad
        data = np.zeros((src.height, stride), dtype=np.uint8)
        pixels = src.pixels[..., [2, 1, 0, 3]] if src.fourcc in (FourCC.BGRA, FourCC.BGRX) else src.pixels
        data[:, : src.width * 4] = pixels.reshape(src.height, -1)
        if src.fourcc in (FourCC.RGBX, FourCC.BGRX):
            data[:, 3 : src.width * 4 : 4] = 7  # undefined padding byte
        video[:] = data.tobytes()
        video.xres, video.yres, video.fourcc, video.stride, video.stamp = (
            src.width,
            src.height,
            src.fourcc,
            stride,
            src.stamp,
        )


class FakeReceiver:
    def __init__(self, net: Net, color_format: Any, bandwidth: Any, recv_name: str = "") -> None:
        assert color_format == RecvColorFormat.RGBX_RGBA and bandwidth == RecvBandwidth.highest
        self.net = net
        net.receivers.append(self)
        self.frame_sync = FakeFrameSync(self)
        self.source: str | None = None
        self.source_obj: RemoteSource | None = None
        self.disconnects = 0

    def set_source(self, src: Any) -> None:
        self.source, self.source_obj = src.name, src.remote

    def disconnect(self) -> None:
        self.source = self.source_obj = None
        self.disconnects += 1

    def current(self) -> RemoteSource | None:
        # Connected only while the very source we attached to is still on the network.
        if self.source is None or self.net.sources.get(self.source) is not self.source_obj:
            return None
        return self.source_obj

    def is_connected(self) -> bool:
        return self.current() is not None


class FakeFinder:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def get_source_names(self) -> list[str]:
        assert self.is_open
        return list(self.net.sources)

    def get_source(self, name: str) -> Any:
        remote = self.net.sources.get(name)
        return None if remote is None else types.SimpleNamespace(name=name, remote=remote)


class FakeVideoSendFrame:
    def __init__(self) -> None:
        self.resolution = (0, 0)
        self.rate = Fraction(0)
        self.fourcc: FourCC | None = None

    def set_resolution(self, width: int, height: int) -> None:
        self.resolution = (width, height)

    def set_frame_rate(self, rate: Fraction) -> None:
        assert isinstance(rate, Fraction)
        self.rate = rate

    def set_fourcc(self, fourcc: FourCC) -> None:
        self.fourcc = fourcc


class FakeSender:
    def __init__(self, net: Net, ndi_name: str, clock_video: bool = True) -> None:
        self.net = net
        net.senders.append(self)
        self.ndi_name = ndi_name
        self.clock_video = clock_video
        self.video_frame: FakeVideoSendFrame | None = None
        self.running = False
        self.opens = 0
        self.written: list[tuple[tuple[int, int], bytes]] = []

    def set_video_frame(self, frame: FakeVideoSendFrame) -> None:
        if self.running:
            raise Exception("Cannot add frame while sender is open")
        self.video_frame = frame

    def open(self) -> None:
        if self.video_frame is None:
            raise Exception("Cannot start sender. No frame objects")
        self.running = True
        self.opens += 1

    def close(self) -> None:
        self.running = False

    def write_video_async(self, data: Any) -> bool:
        if not self.running:
            return False
        view = memoryview(data)
        assert view.ndim == 1 and view.format == "B"
        assert self.video_frame is not None
        w, h = self.video_frame.resolution
        assert view.nbytes == w * h * 4
        self.written.append(((w, h), view.tobytes()))
        return True


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Net:
    n = Net()
    nd = types.ModuleType("cyndilib")
    nd.FourCC = FourCC  # type: ignore[attr-defined]
    nd.RecvColorFormat = RecvColorFormat  # type: ignore[attr-defined]
    nd.RecvBandwidth = RecvBandwidth  # type: ignore[attr-defined]
    nd.Finder = lambda: FakeFinder(n)  # type: ignore[attr-defined]
    nd.Receiver = lambda **kw: FakeReceiver(n, **kw)  # type: ignore[attr-defined]
    nd.VideoFrameSync = FakeVideoFrameSync  # type: ignore[attr-defined]
    nd.Sender = lambda name, **kw: FakeSender(n, name, **kw)  # type: ignore[attr-defined]
    nd.VideoSendFrame = FakeVideoSendFrame  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cyndilib", nd)
    return n


def test_unavailable_without_cyndilib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cyndilib", None)
    ok, message = NdiSource.is_available()
    assert not ok and "pip install 'streamvj[ndi]'" in message
    with pytest.raises(BridgeUnavailable, match="ndi"):
        NdiSink().open()
    with pytest.raises(ConfigError):
        NdiSource("")


def test_source_lifecycle(
    net: Net, caplog: pytest.LogCaptureFixture, logged: Callable[[str], list[str]]
) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.ndi")
    clock = FakeClock(10.0)
    name = "MY-PC (TouchDesigner)"
    src = NdiSource(name, timeout_s=2.0, retry_s=0.5, clock=clock)
    assert isinstance(src, FrameSource)
    src.open()
    assert src.read_latest() is None
    assert logged(f"waiting for NDI source '{name}'")

    remote = RemoteSource(4, 3, pad=8)  # padded rows: the line stride is not width * 4
    net.sources[name] = remote
    expected = remote.publish(1)
    assert src.read_latest() is None  # the finder is asked again only after retry_s
    clock.t += 0.5
    a = src.read_latest()
    assert a is not None and a.shape == (3, 4, 4) and a.flags.c_contiguous
    assert np.array_equal(a, expected)
    assert src.read_latest() is None  # frame sync repeated the same frame
    expected_b = remote.publish(2)
    b = src.read_latest()
    assert b is not a and np.array_equal(b, expected_b) and np.array_equal(a, expected)

    # Vanishes: None, one warning, the receiver is detached after timeout_s.
    del net.sources[name]
    for _ in range(8):
        assert src.read_latest() is None
        clock.t += 0.5
    assert len(logged(f"NDI source '{name}' vanished")) == 1
    assert net.receivers[0].disconnects >= 1

    # Comes back (a new sender instance, another size): found again and received.
    back = RemoteSource(6, 2)
    net.sources[name] = back
    expected_c = back.publish(3)
    clock.t += 0.5
    c = src.read_latest()
    assert c is not None and c.shape == (2, 6, 4) and np.array_equal(c, expected_c)
    assert logged(f"NDI source '{name}' is back")
    assert len(logged("vanished")) == 1
    src.close()


@pytest.mark.parametrize("fourcc", [FourCC.RGBX, FourCC.BGRA, FourCC.BGRX])
def test_source_converts_other_rgb_layouts(net: Net, fourcc: FourCC) -> None:
    clock = FakeClock(10.0)
    remote = RemoteSource(5, 2, fourcc=fourcc)
    net.sources["S"] = remote
    expected = remote.publish(9)
    src = NdiSource("S", clock=clock)
    src.open()
    got = src.read_latest()
    assert got is not None
    assert np.array_equal(got[..., :3], expected[..., :3])
    if fourcc in (FourCC.RGBX, FourCC.BGRX):
        assert np.all(got[..., 3] == 255)
    else:
        assert np.array_equal(got[..., 3], expected[..., 3])


def test_source_skips_unexpected_formats_logging_once(net: Net, logged: Callable[[str], list[str]]) -> None:
    remote = RemoteSource(2, 2, fourcc=FourCC.UYVY)
    net.sources["S"] = remote
    src = NdiSource("S", clock=FakeClock(10.0))
    src.open()
    for seed in range(3):
        remote.publish(seed)
        assert src.read_latest() is None
    assert len(logged("expected RGBA/RGBX")) == 1


def test_sink_sends_and_recreates_frame_on_resize(net: Net) -> None:
    sink = NdiSink("streamvj", fps=30)
    assert isinstance(sink, FrameSink)
    sink.open()
    f1 = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    sink.send(f1)
    sink.send(f1)
    sender = net.senders[0]
    assert sender.ndi_name == "streamvj" and sender.clock_video is False
    frame = sender.video_frame
    assert frame is not None and frame.resolution == (3, 2) and frame.fourcc == FourCC.RGBA
    assert frame.rate == Fraction(30)
    assert sender.written[0] == ((3, 2), f1.tobytes()) and sender.opens == 1

    f2 = np.full((4, 5, 4), 9, dtype=np.uint8)
    sink.send(f2)
    assert len(net.senders) == 1 and sender.opens == 2
    assert sender.video_frame is not frame and sender.video_frame.resolution == (5, 4)
    assert sender.written[-1] == ((5, 4), f2.tobytes())
    sink.close()
    assert not sender.running


@pytest.mark.parametrize(
    ("fps", "rate"),
    [
        (30, Fraction(30)),
        (29.97, Fraction(30000, 1001)),
        (59.94, Fraction(60000, 1001)),
        (23.976, Fraction(24000, 1001)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_frame_rate_fractions(fps: float, rate: Fraction) -> None:
    assert ndi_frame_rate(fps) == rate


# --- real cyndilib -------------------------------------------------------------------------


def test_real_sender_and_receiver_construct_and_poll() -> None:
    pytest.importorskip("cyndilib")
    sink = NdiSink("streamvj-pytest-smoke", fps=30)
    sink.open()
    frame = np.zeros((32, 48, 4), dtype=np.uint8)
    for i in range(3):
        frame[..., 1] = i
        sink.send(frame)
    sink.send(np.zeros((16, 16, 4), dtype=np.uint8))
    sink.close()

    src = NdiSource("NO-SUCH-HOST (streamvj pytest)", clock=FakeClock(10.0))
    src.open()
    assert src.read_latest() is None
    src.close()


@pytest.mark.network
def test_real_ndi_loopback(assert_loopback: Callable[..., None]) -> None:
    """Needs NDI discovery (mDNS) on this machine; skipped where the sender is never listed."""
    cyndilib = pytest.importorskip("cyndilib")
    sink = NdiSink("streamvj-pytest-loopback", fps=30)
    sink.open()
    frame = np.zeros((36, 64, 4), dtype=np.uint8)
    frame[..., 0], frame[..., 3] = 180, 255
    sink.send(frame)
    finder = cyndilib.Finder()
    finder.open()
    full_name = None
    try:
        for _ in range(30):  # up to ~3 s of discovery
            finder.wait_for_sources(0.1)
            listed = [n for n in finder.get_source_names() if n.endswith("(streamvj-pytest-loopback)")]
            if listed:
                full_name = listed[0]
                break
    finally:
        finder.close()
    if full_name is None:
        sink.close()
        pytest.skip("NDI discovery did not list the local sender (no mDNS here)")
    src = NdiSource(full_name)
    src.open()
    assert_loopback(sink, src, frame, tries=300)
