from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from bridges.video.preview import Preview, PreviewSink, PreviewSource
from engine.errors import ConfigError
from engine.realtime.frames import FrameSink
from tests.waiting import wait_for


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

def frame(h: int = 64, w: int = 96, value: int = 128) -> np.ndarray:
    out = np.full((h, w, 4), value, np.uint8)
    out[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    return out


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, jpeg: bytes) -> None:
        with self.lock:
            self.got.append((kind, jpeg))


def test_nothing_is_copied_or_made_while_nobody_watches() -> None:
    preview = Preview(clock=Clock()).start()
    try:
        preview.offer("output", frame())
        assert preview._taps["output"].buf is None  # not even copied
    finally:
        preview.stop()
    assert preview.stats()["output"]["made"] == 0


def test_throttled_to_fps_per_kind() -> None:
    clock, got = Clock(), Collector()
    preview = Preview(fps=4, clock=clock)
    preview.on_jpeg = got
    preview.watch(True)
    preview.start()
    try:
        preview.offer("output", frame())
        wait_for(lambda: len(got.got) == 1, "the first picture")
        for _ in range(10):  # the same instant: none due
            preview.offer("output", frame())
        preview.offer("input", frame())  # another kind has its own schedule
        wait_for(lambda: len(got.got) == 2, "the input picture")
        clock.t += 0.26
        preview.offer("output", frame())
        wait_for(lambda: len(got.got) == 3, "the next picture")
        assert [k for k, _ in got.got] == ["output", "input", "output"]
    finally:
        preview.stop()


def test_a_due_frame_is_skipped_while_the_encoder_is_busy() -> None:
    clock = Clock()
    preview = Preview(fps=60, clock=clock)  # not started: the encoder never takes the buffer
    preview.watch(True)
    preview.offer("output", frame(value=1))
    clock.t += 1
    preview.offer("output", frame(value=2))  # busy: skipped, never waited for
    assert preview._taps["output"].buf[0, 0, 1] == 1


def test_jpeg_is_scaled_down_to_max_side_and_keeps_the_aspect() -> None:
    preview = Preview(max_side=48)
    img = Image.open(io.BytesIO(preview.encode(frame(64, 96))))
    assert img.format == "JPEG" and img.size == (48, 32) and img.mode == "RGB"
    small = Image.open(io.BytesIO(preview.encode(frame(16, 24))))
    assert small.size == (24, 16)  # never scaled up


def test_no_allocation_per_frame_while_the_size_holds() -> None:
    clock = Clock()
    preview = Preview(fps=60, clock=clock).start()
    preview.watch(True)
    try:
        preview.offer("output", frame())
        buf = preview._taps["output"].buf
        for _ in range(5):
            wait_for(lambda: not preview._taps["output"].busy, "the encoder")
            clock.t += 1
            preview.offer("output", frame())
        assert preview._taps["output"].buf is buf
        wait_for(lambda: not preview._taps["output"].busy, "the encoder")
        clock.t += 1
        preview.offer("output", frame(32, 32))  # a new size: a new buffer, once
        assert preview._taps["output"].buf.shape == (32, 32, 4)
    finally:
        preview.stop()


@pytest.mark.parametrize("kw", [{"fps": 0}, {"fps": 120}, {"max_side": 8}, {"quality": 100}])
def test_bad_settings_are_config_errors(kw: dict) -> None:
    with pytest.raises(ConfigError):
        Preview(**kw)


def test_sink_offers_output_frames() -> None:
    preview = Preview(clock=Clock())
    preview.watch(True)
    sink = PreviewSink(preview)
    assert isinstance(sink, FrameSink) and PreviewSink.is_available() == (True, "")
    sink.open()
    sink.send(frame(value=9))
    sink.close()
    assert preview._taps["output"].buf[0, 0, 1] == 9


class IntoSource:
    name = "into"
    frames_owned = False

    def __init__(self) -> None:
        self.opened = self.closed = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        self.opened = True

    def read_latest(self) -> np.ndarray | None:
        return frame(value=3)

    def read_latest_into(self, acquire: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray | None:
        out = acquire((64, 96, 4))
        out[:] = frame(value=4)
        return out

    def close(self) -> None:
        self.closed = True


class PlainSource:
    name = "plain"
    frames_owned = True

    def read_latest(self) -> np.ndarray | None:
        return None


def test_source_passes_frames_through_with_the_fast_paths_it_wraps() -> None:
    preview = Preview(clock=Clock())
    preview.watch(True)
    inner = IntoSource()
    src = PreviewSource(inner, preview)
    src.open()
    assert inner.opened and src.name == "into" and src.frames_owned is False
    buf = np.zeros((64, 96, 4), np.uint8)
    assert src.read_latest_into(lambda shape: buf) is buf  # the pooled buffer, uncopied
    assert preview._taps["input"].buf[0, 0, 1] == 4
    src.close()
    assert inner.closed

    plain = PreviewSource(PlainSource(), preview)
    assert plain.frames_owned is True and not hasattr(plain, "read_latest_into")
    assert plain.read_latest() is None


def test_source_leaves_a_malformed_frame_for_the_runtime_to_refuse() -> None:
    class Bad(PlainSource):
        def read_latest(self) -> np.ndarray:
            return np.zeros((4, 4, 3), np.uint8)

    preview = Preview(clock=Clock())
    preview.watch(True)
    src = PreviewSource(Bad(), preview)
    assert src.read_latest().shape == (4, 4, 3)
    assert preview._taps["input"].buf is None
