from __future__ import annotations

import logging
import os
import sys
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bridges.video.files import ImageFileSource, MediaFileError, NullSink, PngSequenceSink, VideoFileSource
from bridges.video.pattern import render_pattern
from engine.errors import BridgeUnavailable, ConfigError, FrameError, StreamVJError
from engine.realtime.frames import FrameSink, FrameSource
from tests.fake_clock import FakeClock


def test_png_sink_to_image_source_round_trip(tmp_path: Path) -> None:
    frames = [render_pattern(i, 40, 24) for i in range(3)]
    sink = PngSequenceSink(tmp_path / "out" / "seq", prefix="shot")
    assert isinstance(sink, FrameSink)
    sink.open()
    for frame in frames:
        sink.send(frame)
    sink.close()
    written = sorted((tmp_path / "out" / "seq").iterdir())
    assert [p.name for p in written] == ["shot_000000.png", "shot_000001.png", "shot_000002.png"]

    for path, frame in zip(written, frames, strict=True):
        src = ImageFileSource(path)
        assert isinstance(src, FrameSource)
        src.open()
        got = src.read_latest()
        assert got is not None and got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, frame)
        assert src.read_latest() is None  # a still image arrives once
        src.close()


def test_png_sink_every_nth(tmp_path: Path) -> None:
    sink = PngSequenceSink(tmp_path, every=3)
    sink.open()
    for i in range(7):
        sink.send(render_pattern(i, 16, 16))
    assert sink.frames_seen == 7 and sink.frames_written == 3
    assert np.array_equal(np.asarray(Image.open(tmp_path / "frame_000001.png")), render_pattern(3, 16, 16))


@pytest.mark.parametrize("prefix", ["../evil", "a/b", "a\\b", ""])
def test_png_sink_refuses_prefixes_that_leave_the_folder(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError):
        PngSequenceSink(tmp_path, prefix=prefix)


def test_png_sink_rejects_bad_frames(tmp_path: Path) -> None:
    sink = PngSequenceSink(tmp_path)
    sink.open()
    with pytest.raises(FrameError):
        sink.send(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ConfigError):
        PngSequenceSink(tmp_path, every=0)


def test_image_source_converts_rgb_jpeg_to_rgba(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 10), (200, 30, 40)).save(path, quality=95)
    src = ImageFileSource(path)
    src.open()
    frame = src.read_latest()
    assert frame.shape == (10, 20, 4)
    assert np.all(frame[..., 3] == 255)
    assert abs(int(frame[5, 10, 0]) - 200) < 8 and abs(int(frame[5, 10, 1]) - 30) < 8


def test_non_image_file_is_a_specific_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(MediaFileError, match="notes.png") as info:
        ImageFileSource(path).open()
    assert isinstance(info.value, StreamVJError)


def test_missing_image_is_a_specific_error(tmp_path: Path) -> None:
    with pytest.raises(MediaFileError, match="not found.*missing.png"):
        ImageFileSource(tmp_path / "missing.png").open()
    with pytest.raises(MediaFileError, match="not a file"):
        ImageFileSource(tmp_path).open()


def test_image_source_reloads_when_the_file_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "live.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    clock = FakeClock(0.0)
    src = ImageFileSource(path, poll_s=0.5, clock=clock)
    src.open()
    first = src.read_latest()
    assert first is not None and tuple(first[0, 0]) == (10, 20, 30, 255)

    Image.new("RGBA", (8, 8), (90, 80, 70, 255)).save(path)
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert src.read_latest() is None  # not polled yet
    clock.t = 0.6
    second = src.read_latest()
    assert second is not None and tuple(second[0, 0]) == (90, 80, 70, 255)
    assert tuple(first[0, 0]) == (10, 20, 30, 255)  # the earlier frame was not overwritten

    path.write_text("broken")
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    with caplog.at_level(logging.WARNING, logger="streamvj.files"):
        for step in range(3):
            clock.t = 1.2 + step
            assert src.read_latest() is None
    assert len([r for r in caplog.records if "keeping the last image" in r.getMessage()]) == 1


def test_null_sink_counts_and_keeps_nothing() -> None:
    sink = NullSink()
    assert isinstance(sink, FrameSink)
    sink.open()
    for i in range(5):
        sink.send(render_pattern(i, 16, 8))
    assert sink.count == 5 and sink.last_shape == (8, 16, 4)
    with pytest.raises(FrameError):
        sink.send(np.zeros((8, 16, 4), dtype=np.float32))
    sink.close()


# --- video: PyAV is replaced at the import boundary --------------------------------------


class _FakeVideoFrame:
    def __init__(self, index: int) -> None:
        self.index = index

    def to_ndarray(self, format: str) -> np.ndarray:
        assert format == "rgba"
        frame = np.zeros((6, 8, 4), dtype=np.uint8)
        frame[..., 0] = self.index
        frame[..., 3] = 255
        return frame


class _FakeContainer:
    def __init__(self, n_frames: int) -> None:
        self.n_frames = n_frames
        stream = types.SimpleNamespace(average_rate=Fraction(10), guessed_rate=None, thread_type="")
        self.streams = types.SimpleNamespace(video=[stream])
        self.seeks = 0
        self.closed = False

    def seek(self, offset: int) -> None:
        assert offset == 0
        self.seeks += 1

    def decode(self, video: int) -> Any:
        return (_FakeVideoFrame(i) for i in range(self.n_frames))

    def close(self) -> None:
        self.closed = True


def _fake_av(monkeypatch: pytest.MonkeyPatch, n_frames: int = 5) -> list[_FakeContainer]:
    opened: list[_FakeContainer] = []

    def open_(path: str) -> _FakeContainer:
        opened.append(_FakeContainer(n_frames))
        return opened[-1]

    monkeypatch.setitem(sys.modules, "av", types.SimpleNamespace(open=open_))
    return opened


def test_video_source_unavailable_without_pyav(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    ok, message = VideoFileSource.is_available()
    assert not ok and "pip install 'streamvj[video]'" in message
    with pytest.raises(BridgeUnavailable, match="video"):
        VideoFileSource(tmp_path / "clip.mp4").open()


def test_video_source_paces_to_file_rate_and_loops(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    opened = _fake_av(monkeypatch, n_frames=5)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0")
    clock = FakeClock(0.0)
    src = VideoFileSource(path, clock=clock)
    src.open()

    def red(frame: np.ndarray | None) -> int | None:
        return None if frame is None else int(frame[0, 0, 0])

    assert red(src.read_latest()) == 0
    clock.t = 0.05
    assert src.read_latest() is None
    clock.t = 0.1
    assert red(src.read_latest()) == 1
    clock.t = 0.35
    assert red(src.read_latest()) == 3  # frame 2 decoded and dropped
    clock.t = 0.45
    assert red(src.read_latest()) == 4
    clock.t = 0.55
    assert red(src.read_latest()) == 0  # looped
    assert opened[0].seeks == 2
    src.close()
    assert opened[0].closed


def test_video_source_without_loop_ends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_av(monkeypatch, n_frames=2)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0")
    clock = FakeClock(0.0)
    src = VideoFileSource(path, loop=False, clock=clock)
    src.open()
    assert src.read_latest() is not None
    clock.t = 0.1
    assert src.read_latest() is not None
    clock.t = 0.2
    assert src.read_latest() is None
    clock.t = 5.0
    assert src.read_latest() is None


def test_video_source_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_av(monkeypatch)
    with pytest.raises(MediaFileError, match="clip.mp4"):
        VideoFileSource(tmp_path / "clip.mp4").open()


def test_real_video_file_decodes_at_its_rate_and_loops(tmp_path):
    """A real encoded file through PyAV (the `video` extra), not a fake decoder."""
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(10):
        image = np.full((48, 64, 3), i * 25, np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()

    now = [0.0]
    source = VideoFileSource(path, clock=lambda: now[0])
    source.open()
    try:
        levels = []
        for i in range(24):
            now[0] = (i + 0.5) / 10  # mid-way through frame i of the file's 10 fps
            frame = source.read_latest()
            if frame is not None:
                assert frame.shape == (48, 64, 4) and frame.dtype == np.uint8
                levels.append(int(frame[..., 0].mean()))
    finally:
        source.close()
    assert levels[:10] == sorted(levels[:10]) and levels[9] > levels[0] + 150  # plays in order
    assert min(levels[10:]) < 30  # and starts over
