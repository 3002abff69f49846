"""Fakes and helpers shared by the runtime tests: deterministic sources, sinks and processors.

Waits use generous deadlines ("until N frames or 10 s") and assert on counts and identities,
never on wall-clock time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from engine.realtime.processor import Counters, FrameResult
from engine.realtime.runtime import Runtime

H = W = 8


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def make_frame(index: int, h: int = H, w: int = W) -> np.ndarray:
    f = np.zeros((h, w, 4), np.uint8)
    f[..., 0], f[..., 1], f[..., 2], f[..., 3] = index & 255, (index >> 8) & 255, (index >> 16) & 255, 255
    return f


def frame_index(f: np.ndarray) -> int:
    return int(f[0, 0, 0]) | int(f[0, 0, 1]) << 8 | int(f[0, 0, 2]) << 16


def runtime_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streamvj-")]


class CountingSource:
    """A new frame on every read (up to `limit`), its index encoded in the pixels."""

    name = "counting"

    def __init__(self, limit: int | None = None, fail_first: int = 0) -> None:
        self.limit = limit
        self.fail_first = fail_first
        self.produced = 0
        self.reads = 0
        self.opened = self.closed = False
        self._buf = np.zeros((H, W, 4), np.uint8)

    def open(self) -> None:
        self.opened = True

    def read_latest(self) -> np.ndarray | None:
        self.reads += 1
        if self.reads <= self.fail_first:
            raise OSError("capture card unplugged")
        if self.limit is not None and self.produced >= self.limit:
            return None
        time.sleep(0.0005)  # a little time between frames so this thread doesn't hog the GIL
        self._buf[:] = make_frame(self.produced)  # reused buffer: the runtime must copy
        self.produced += 1
        return self._buf

    def close(self) -> None:
        self.closed = True


class CollectingSink:
    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.indices: list[int] = []
        self.threads: set[str] = set()
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def send(self, rgba_u8: np.ndarray) -> None:
        assert rgba_u8.dtype == np.uint8 and rgba_u8.shape[2] == 4 and not rgba_u8.flags.writeable
        self.threads.add(threading.current_thread().name)
        self.indices.append(frame_index(rgba_u8))

    def close(self) -> None:
        self.closed = True


class FakeProcessor:
    """The Processor protocol around `render(rgba_u8) -> rgba_u8` (subclasses say what it does)."""

    needs_input = True
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.counters = Counters()

    def render(self, rgba_u8: np.ndarray) -> np.ndarray:
        return rgba_u8

    def process(self, rgba_u8: np.ndarray | None) -> FrameResult:
        self.counters.frames_in += 1
        output = self.render(rgba_u8)
        self.counters.frames_out += 1
        return FrameResult(output)

    def output_read(self, output, event) -> bool:
        return False


class GatedProcessor(FakeProcessor):
    """Identity processor that waits for the test to let each call through (when gated)."""

    def __init__(self, gated: bool = True) -> None:
        super().__init__()
        self.gated = gated
        self.gate = threading.Semaphore(0)
        self.calls: list[int] = []
        self.produced_at_return: list[int] = []
        self.source: CountingSource | None = None
        self.thread_names: set[str] = set()
        self.inside = False

    def render(self, rgba_u8: np.ndarray) -> np.ndarray:
        self.inside = True
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(frame_index(rgba_u8))
        if self.gated:
            assert self.gate.acquire(timeout=30), "test never released the gate"
        if self.source is not None:
            self.produced_at_return.append(self.source.produced)
        self.inside = False
        return rgba_u8


def start(runtimes: list[Runtime], *args, **kwargs) -> Runtime:
    rt = Runtime(*args, **kwargs)
    runtimes.append(rt)
    return rt.start()
