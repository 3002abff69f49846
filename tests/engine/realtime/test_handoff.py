"""Output hand-off (engine/realtime/handoff.py) under the real runtime: deferred CUDA downloads,
whole frames through the real pipeline, and skipped frames handed off without a copy."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.errors import FrameError
from engine.realtime.processor import FrameResult, FunctionProcessor
from engine.realtime.runtime import Runtime
from tests.engine.realtime.runtime_fakes import (
    CollectingSink,
    CountingSource,
    FakeProcessor,
    frame_index,
    wait_until,
)


class FakeLanded:
    """Stands in for a CUDA event: records when the render thread waited for the bytes."""

    def __init__(self, log: list[str], index: int) -> None:
        self.log, self.index = log, index

    def synchronize(self) -> None:
        self.log.append(f"wait {self.index}")


class AheadByOne(CountingSource):
    """Produces frame k+1 only once frame k was taken: never more than one frame ahead, so no
    frame is dropped however the threads are scheduled."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.taken = 0

    def read_latest(self):
        return None if self.produced > self.taken else super().read_latest()


def deferred_runtime(runtimes, source: AheadByOne, sink, log: list[str]) -> Runtime:
    """A runtime whose results behave like CUDA ones: downloads finish later, marked by an event.

    Each call returns only once the source has produced the next frame, so one is always
    waiting in the mailbox when a render ends: the situation where deferring pays off.
    """

    def processor(rgba_u8: np.ndarray) -> np.ndarray:
        k = frame_index(rgba_u8)
        log.append(f"call {k}")
        source.taken += 1
        deadline = time.monotonic() + 10
        while source.produced <= k + 1 and source.produced < source.limit and time.monotonic() < deadline:
            time.sleep(0.0005)
        return rgba_u8

    rt = Runtime(FunctionProcessor(processor), source, [sink])
    plain = rt._handoff.to_host

    def to_host(output, output_read):
        buf, landed = plain(output, output_read)
        assert landed is None  # CPU results hand off at once; pretend this one is on a GPU
        return buf, FakeLanded(log, frame_index(output))

    rt._handoff.to_host = to_host
    runtimes.append(rt)
    return rt.start()


def test_cuda_frames_hand_off_after_the_next_launch_and_none_is_left_behind(runtimes):
    log: list[str] = []
    source, sink = AheadByOne(limit=40), CollectingSink()
    rt = deferred_runtime(runtimes, source, sink, log)
    wait_until(lambda: source.produced == 40 and sink.indices and sink.indices[-1] == 39,
               what="the last frame reaches the sink once the source goes quiet")
    calls = [int(e.split()[1]) for e in log if e.startswith("call")]
    waits = [int(e.split()[1]) for e in log if e.startswith("wait")]
    assert waits == calls  # each launched frame is waited for exactly once, in launch order
    wait_until(lambda: rt.frames_rendered == len(calls), what="every launched frame handed off")
    assert set(sink.indices) <= set(calls) and sink.indices == sorted(set(sink.indices))  # in order, once
    for k, nxt in zip(calls, calls[1:]):
        # frame k's bytes are waited for only after the next frame was launched (the overlap)
        assert log.index(f"call {nxt}") < log.index(f"wait {k}")


def test_stop_hands_off_a_pending_cuda_frame(runtimes):
    log: list[str] = []
    source, sink = AheadByOne(limit=3), CollectingSink()
    rt = deferred_runtime(runtimes, source, sink, log)
    wait_until(lambda: rt.frames_rendered == 3, what="three frames")
    rt.stop(timeout=10)
    assert rt._handoff.pending is None and [e for e in log if e.startswith("wait")] == ["wait 0", "wait 1", "wait 2"]


class FrameKeeper:
    """A sink that keeps a copy of every frame it is sent."""

    name = "keeper"

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, rgba_u8: np.ndarray) -> None:
        self.frames.append(rgba_u8.copy())


@pytest.mark.parametrize("device", [
    pytest.param("cpu"),
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]),
])
def test_every_frame_a_sink_gets_is_one_whole_pipeline_output(device, runtimes):
    """The real pipeline under the runtime: on CUDA with graph replays, the upload stream, the
    alternating output buffers and downloads overlapping the next frame. A race anywhere in
    that chain shows up as a frame that is no pipeline output (a mix of two, or stale bytes)."""
    from engine.core.pipeline import StreamPipeline
    from engine.models.load import load_model
    from tests.engine.core.pipelines import make_pipeline

    parts = load_model("tiny", device=device)

    def build() -> StreamPipeline:
        pipe = make_pipeline(parts, device=device, fit_input=True, backend="compile" if device == "cuda" else "none")
        pipe.warm_up()
        return pipe

    pipe, taken = build(), []

    class Recording:
        """The processor: the pipeline, noting which frames it took, in order."""

        needs_input = True
        device = pipe.device
        counters = pipe.counters

        def process(self, rgba_u8: np.ndarray):
            taken.append(rgba_u8.copy())
            return pipe.process(rgba_u8)

        def output_read(self, output, event) -> bool:
            return pipe.output_read(output, event)

    class Lockstep(CountingSource):
        """Frame k+1 comes as soon as the pipeline took frame k: every frame is rendered, and
        on CUDA the next one is always waiting while the last one downloads (the overlap)."""

        def read_latest(self):
            return None if self.produced > len(taken) else super().read_latest()

    frames = 24
    source, keeper = Lockstep(limit=frames), FrameKeeper()
    rt = Runtime(Recording(), source, [keeper])
    runtimes.append(rt)
    rt.start()
    wait_until(lambda: rt.frames_rendered == frames, timeout=60, what="every frame rendered")
    rt.stop(timeout=10)
    reference = build()
    expected = [reference(f).clone().cpu().numpy() for f in taken]
    assert keeper.frames, "the sink got nothing"
    last = -1
    for got in keeper.frames:
        diffs = [int(np.abs(got.astype(int) - e.astype(int)).max()) for e in expected[last + 1:]]
        assert diffs and min(diffs) <= 1, "a delivered frame matches no pipeline output after the previous one"
        last += 1 + diffs.index(min(diffs))


def test_a_skipped_frame_is_handed_off_again_without_a_copy(runtimes, monkeypatch):
    """The similarity filter repeats the last output: the runtime sends the host buffer it
    already has instead of copying the same picture again, and keeps no buffer at stop."""
    class Skipping(FakeProcessor):
        """Every third frame after the first is a 'skip': the last output, returned again."""

        def __init__(self) -> None:
            super().__init__()
            self.last: np.ndarray | None = None
            self.calls = 0

        def process(self, rgba_u8: np.ndarray) -> FrameResult:
            self.calls += 1
            if self.last is not None and self.calls % 3 == 0:
                self.counters.skipped += 1
                return FrameResult(self.last, skipped=True)
            self.last = rgba_u8.copy()
            return FrameResult(self.last)

    processor, sink = Skipping(), CollectingSink()
    source = CountingSource(limit=30)
    rt = Runtime(processor, source, [sink])
    copies = []
    plain = rt._handoff.to_host
    monkeypatch.setattr(rt._handoff, "to_host", lambda *args: (copies.append(1), plain(*args))[1])
    runtimes.append(rt)
    rt.start()
    wait_until(lambda: source.produced == 30 and rt.frames_rendered == processor.calls and processor.calls > 3,
               what="the source drained and every call handed off")
    rt.stop(timeout=10)
    assert processor.counters.skipped >= 1
    assert len(copies) == processor.calls - processor.counters.skipped  # skipped frames were not copied
    # Each frame the sink got is a whole frame (its index readable), in order.
    assert sink.indices == sorted(sink.indices)
    pool = rt._out_pool
    assert rt._handoff.last_out is None and len(pool._free) == pool.size  # every buffer back in the pool


class FakeMpsTensor(torch.Tensor):
    """A CPU tensor that says it lives on Apple's GPU, and refuses .numpy() as an MPS tensor does."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("mps")

    def numpy(self, *args, **kwargs):  # type: ignore[override]
        raise TypeError("can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")


def test_an_mps_output_is_copied_once_into_a_pooled_host_buffer(runtimes):
    """On a Mac the pipeline's output is an MPS tensor: it is copied into the output pool's host
    buffer (copy_ waits for the GPU), never through .numpy(), which MPS refuses."""
    def on_apple_gpu(rgba_u8: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rgba_u8.copy()).as_subclass(FakeMpsTensor)

    sink = CollectingSink()
    rt = Runtime(FunctionProcessor(on_apple_gpu), CountingSource(), [sink])  # no limit: latest-wins may drop some
    runtimes.append(rt)
    rt.start()
    wait_until(lambda: len(sink.indices) >= 3, what="MPS frames at the sink")
    assert rt.render_errors == 0 and sink.indices == sorted(sink.indices)
    buf, landed = rt._handoff.to_host(torch.zeros(2, 3, 4, dtype=torch.uint8).as_subclass(FakeMpsTensor), None)
    assert landed is None and buf.array.shape == (2, 3, 4) and type(buf.array) is np.ndarray
    rt._out_pool.release(buf)
    with pytest.raises(FrameError, match="HxWx4 uint8 array or tensor, got torch.float32"):
        rt._handoff.to_host(torch.zeros(2, 3, 4).as_subclass(FakeMpsTensor), None)
