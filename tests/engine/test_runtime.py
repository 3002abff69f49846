"""Runtime tests with fake, deterministic sources/sinks/processors; no wall-clock assertions.

Waits use generous deadlines ("until N frames or 10 s") and assert on counts and identities.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
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


class GatedProcessor:
    """Identity processor that waits for the test to let each call through (when gated)."""

    def __init__(self, gated: bool = True) -> None:
        self.gated = gated
        self.gate = threading.Semaphore(0)
        self.calls: list[int] = []
        self.produced_at_return: list[int] = []
        self.source: CountingSource | None = None
        self.thread_names: set[str] = set()
        self.inside = False

    def __call__(self, rgba_u8: np.ndarray) -> np.ndarray:
        self.inside = True
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(frame_index(rgba_u8))
        if self.gated:
            assert self.gate.acquire(timeout=30), "test never released the gate"
        if self.source is not None:
            self.produced_at_return.append(self.source.produced)
        self.inside = False
        return rgba_u8


@pytest.fixture
def runtimes():
    started: list[Runtime] = []
    yield started
    for rt in started:
        rt.stop(timeout=10)


def start(runtimes: list[Runtime], *args, **kwargs) -> Runtime:
    rt = Runtime(*args, **kwargs)
    runtimes.append(rt)
    return rt.start()


def test_slow_processor_drops_frames_never_queues_them(runtimes):
    src, proc, sink = CountingSource(), GatedProcessor(), CollectingSink()
    proc.source = src
    rt = start(runtimes, proc, src, [sink])
    for i in range(6):
        wait_until(lambda i=i: len(proc.calls) > i, what=f"call {i}")
        before = src.produced
        wait_until(lambda before=before: src.produced >= before + 5, what="the source to move on")
        proc.gate.release()
    wait_until(lambda: len(proc.calls) >= 7, what="call 7")
    # Each call gets the newest frame from while the previous call ran, not the next in line:
    for k in range(1, 7):
        assert proc.calls[k] >= proc.produced_at_return[k - 1] - 2
        assert proc.calls[k] - proc.calls[k - 1] >= 3
    stats = rt.stats()
    assert stats["dropped_input"] > 0
    assert stats["frames_received"] >= 30
    proc.gated = False
    proc.gate.release()


def test_slow_sink_does_not_stall_the_render_loop(runtimes):
    release = threading.Event()
    entered = threading.Event()

    class BlockingSink(CollectingSink):
        def send(self, rgba_u8: np.ndarray) -> None:
            entered.set()
            release.wait(30)
            super().send(rgba_u8)

    slow, fast = BlockingSink("slow"), CollectingSink("fast")
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(), [slow, fast])
    assert entered.wait(10)
    rendered, fast_seen = rt.frames_rendered, len(fast.indices)
    wait_until(lambda: rt.frames_rendered >= rendered + 20 and len(fast.indices) >= fast_seen + 20,
               what="render and fast sink to keep going")
    assert slow.indices == []  # still blocked in its first send
    stats = rt.stats()
    assert stats["sinks"]["slow"]["dropped"] > 0
    assert stats["sinks"]["slow"]["sent"] == 0
    release.set()
    wait_until(lambda: len(slow.indices) >= 2, what="the slow sink to resume")
    assert slow.indices == sorted(set(slow.indices))


def test_a_held_buffer_is_never_overwritten_while_the_render_loop_continues(runtimes):
    checked: list[bool] = []
    rt_ref: list[Runtime] = []

    class HoldingSink(CollectingSink):
        def send(self, rgba_u8: np.ndarray) -> None:
            copy = rgba_u8.copy()
            rt = rt_ref[0]
            start_count = rt.frames_rendered
            wait_until(lambda: rt.frames_rendered >= start_count + 5, what="renders during a send")
            checked.append(bool(np.array_equal(copy, rgba_u8)))

    sink = HoldingSink()
    rt = Runtime(GatedProcessor(gated=False), CountingSource(), [sink], target_fps=500)
    runtimes.append(rt)
    rt_ref.append(rt)
    rt.start()
    wait_until(lambda: len(checked) >= 4, what="held sends")
    assert all(checked)


def test_pacing_repeats_the_last_frame_while_the_processor_is_held(runtimes):
    src, proc, sink = CountingSource(), GatedProcessor(), CollectingSink()
    proc.gate.release()  # exactly one call goes through, the second is held
    rt = start(runtimes, proc, src, [sink], target_fps=200)
    wait_until(lambda: len(sink.indices) >= 15, what="paced sends")
    assert rt.frames_rendered == 1
    assert len(set(sink.indices)) == 1  # the same frame, again and again, at the target rate
    stats = rt.stats()["sinks"]["collect"]
    assert stats["sent"] == 1 and stats["repeated"] >= 14
    proc.gated = False
    proc.gate.release()
    wait_until(lambda: len(set(sink.indices)) >= 3, what="new frames after the hold")


def test_unpaced_sinks_send_each_new_output_once(runtimes):
    sink = CollectingSink()
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(limit=200), [sink])
    wait_until(lambda: rt.frames_received == 200, what="all frames received")
    wait_until(lambda: sink.indices and sink.indices[-1] == 199, what="the last frame sent")
    assert sink.indices == sorted(set(sink.indices))  # no repeats, in order
    s = rt.stats()
    assert s["sinks"]["collect"]["sent"] + s["sinks"]["collect"]["dropped"] == s["frames_rendered"]
    assert s["frames_rendered"] + s["dropped_input"] == 200


def test_processor_error_on_one_frame_is_logged_and_the_runtime_survives(runtimes, caplog):
    calls: list[int] = []

    def flaky(rgba_u8: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) in (3, 4, 5):
            raise ValueError("latents went NaN")
        return rgba_u8

    sink = CollectingSink()
    with caplog.at_level(logging.WARNING, logger="streamvj.runtime"):
        rt = start(runtimes, flaky, CountingSource(), [sink])
        wait_until(lambda: len(calls) >= 10 and len(sink.indices) >= 5, what="frames after the errors")
    stats = rt.stats()
    assert stats["render_errors"] == 3
    assert stats["error"] == "ValueError: latents went NaN"
    logged = [r for r in caplog.records if "latents went NaN" in r.getMessage()]
    assert len(logged) == 1  # the same message within 5 s is logged once
    assert "processor failed on frame" in logged[0].getMessage()


def test_bad_processor_output_is_an_error_not_a_crash(runtimes):
    rt = start(runtimes, lambda f: f[..., :3].copy(), CountingSource(), [CollectingSink()])
    wait_until(lambda: rt.render_errors >= 3, what="errors")
    assert "HxWx4 uint8" in rt.stats()["error"]
    assert rt.running


def test_call_soon_runs_on_the_render_thread_between_frames(runtimes):
    proc = GatedProcessor(gated=False)
    rt = start(runtimes, proc, CountingSource(), [CollectingSink()])
    wait_until(lambda: len(proc.calls) >= 3, what="frames")
    seen: list[tuple[str, bool]] = []

    def action() -> str:
        seen.append((threading.current_thread().name, proc.inside))
        return "applied"

    futures = [rt.call_soon(action) for _ in range(20)]
    assert [f.result(timeout=10) for f in futures] == ["applied"] * 20
    assert {name for name, _ in seen} == {"streamvj-render"} == proc.thread_names
    assert not any(inside for _, inside in seen)


def test_call_soon_runs_while_no_input_arrives_and_errors_reach_the_future(runtimes):
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(limit=0), [])
    assert rt.call_soon(lambda: threading.current_thread().name).result(timeout=10) == "streamvj-render"

    def bad() -> None:
        raise ConfigError("strength must be in 0..1")

    with pytest.raises(ConfigError):
        rt.call_soon(bad).result(timeout=10)
    assert rt.running


def test_replace_processor_swaps_between_frames(runtimes):
    sink = CollectingSink()
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(), [sink])
    wait_until(lambda: len(sink.indices) >= 3, what="frames")
    marker = make_frame(0x77)
    rt.replace_processor(lambda f: marker).result(timeout=10)
    wait_until(lambda: sink.indices[-1] == 0x77, what="the new processor's output")


def test_pause_holds_the_last_output_and_resume_continues(runtimes):
    sink = CollectingSink()
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(), [sink], target_fps=200)
    wait_until(lambda: rt.frames_rendered >= 5, what="frames")
    rt.pause()
    rt.call_soon(lambda: None).result(timeout=10)  # the render loop has seen the pause
    held = rt.frames_rendered
    assert rt.stats()["state"] == "paused"
    sent_before = len(sink.indices)
    wait_until(lambda: len(sink.indices) >= sent_before + 10, what="repeats while paused")
    assert rt.frames_rendered == held
    assert len(set(sink.indices[sent_before + 1:])) == 1  # the held frame, repeated
    rt.resume()
    wait_until(lambda: rt.frames_rendered >= held + 5, what="frames after resume")
    assert rt.stats()["state"] == "running"


def test_txt2img_without_a_source(runtimes):
    calls: list[tuple] = []

    def generate(*args) -> np.ndarray:
        calls.append(args)
        return make_frame(len(calls))

    sink = CollectingSink()
    rt = start(runtimes, generate, None, [sink], target_fps=200)
    wait_until(lambda: len(sink.indices) >= 5 and len(calls) >= 5, what="generated frames")
    assert set(calls) == {()}
    assert "streamvj-source" not in runtime_threads()
    assert rt.stats()["frames_rendered"] >= 5


def test_source_errors_are_retried(runtimes, caplog):
    src = CountingSource(fail_first=2)
    with caplog.at_level(logging.WARNING, logger="streamvj.runtime"):
        rt = start(runtimes, GatedProcessor(gated=False), src, [CollectingSink()])
        wait_until(lambda: rt.frames_rendered >= 3, what="frames after the source recovered")
    assert rt.stats()["counts"]["source_errors"] == 2
    assert any("capture card unplugged" in r.getMessage() for r in caplog.records)


def test_sink_errors_are_logged_once_and_the_sink_retried(runtimes, caplog):
    class FlakySink(CollectingSink):
        fails = 0

        def send(self, rgba_u8: np.ndarray) -> None:
            if self.fails < 5:
                self.fails += 1
                raise ConnectionError("receiver went away")
            super().send(rgba_u8)

    sink = FlakySink("flaky")
    with caplog.at_level(logging.INFO, logger="streamvj.runtime"):
        rt = start(runtimes, GatedProcessor(gated=False), CountingSource(), [sink])
        wait_until(lambda: len(sink.indices) >= 3, what="sends after recovery")
    assert rt.stats()["sinks"]["flaky"]["errors"] == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("receiver went away" in m for m in messages) == 1
    assert any("recovered" in m for m in messages)


def test_on_stats_is_called_from_the_runtime(runtimes):
    got: list[dict] = []
    start(runtimes, GatedProcessor(gated=False), CountingSource(), [CollectingSink()], on_stats=got.append)
    wait_until(lambda: len(got) >= 1, timeout=15, what="a stats callback")
    s = got[0]
    for key in ("state", "fps", "fps_in", "latency_ms", "latency_p99_ms", "skip_ratio", "dropped_input",
                "frames_rendered", "stages", "sinks"):
        assert key in s
    assert set(s["stages"]) >= {"receive", "preprocess", "model", "postprocess", "send"}


def test_control_hook_runs_before_every_frame_on_the_render_thread(runtimes):
    names: list[str] = []
    proc = GatedProcessor(gated=False)
    start(runtimes, proc, CountingSource(), [], control=lambda: names.append(threading.current_thread().name))
    wait_until(lambda: len(proc.calls) >= 5, what="frames")
    assert set(names) == {"streamvj-render"} and len(names) >= len(proc.calls) - 1


def test_stop_joins_every_thread_and_closes_endpoints(runtimes):
    class BadCloseSink(CollectingSink):
        def close(self) -> None:
            raise OSError("driver refused")

    src, a, b = CountingSource(), BadCloseSink("bad"), CollectingSink("good")
    rt = Runtime(GatedProcessor(gated=False), src, [[a, b], CollectingSink("c")], target_fps=120,
                 on_stats=lambda s: None)
    rt.start()
    assert src.opened and a.opened and b.opened
    names = runtime_threads()
    assert {"streamvj-source", "streamvj-render", "streamvj-sink-0", "streamvj-sink-1", "streamvj-stats"} <= set(names)
    wait_until(lambda: len(b.indices) >= 3, what="frames")
    assert rt.stop(timeout=10) is True
    assert runtime_threads() == []
    assert src.closed and b.closed  # a failing close did not keep the others open
    assert rt.stop() is True  # idempotent
    assert rt.stats()["state"] == "stopped"
    with pytest.raises(RuntimeError):
        rt.call_soon(lambda: None).result(timeout=1)


def test_a_failing_open_closes_what_was_opened():
    class BadOpenSink(CollectingSink):
        def open(self) -> None:
            raise ConfigError("NDI name in use")

    src, good = CountingSource(), CollectingSink()
    rt = Runtime(GatedProcessor(gated=False), src, [good, BadOpenSink()])
    with pytest.raises(ConfigError, match="NDI name in use"):
        rt.start()
    assert src.closed and good.closed
    assert runtime_threads() == []


def test_sinks_with_the_same_name_get_separate_stats(runtimes):
    a, b = CollectingSink(), CollectingSink()
    rt = start(runtimes, GatedProcessor(gated=False), CountingSource(), [a, b])
    wait_until(lambda: len(a.indices) >= 2 and len(b.indices) >= 2, what="frames on both sinks")
    assert set(rt.stats()["sinks"]) == {"collect#0", "collect#1"}


@pytest.mark.parametrize("fps", [0, -5, True, 5000])
def test_bad_target_fps_is_a_config_error(fps):
    with pytest.raises(ConfigError, match="target_fps"):
        Runtime(lambda f: f, None, [], target_fps=fps)


def test_tiny_model_end_to_end_from_the_test_pattern(runtimes, tiny_parts):
    from bridges.files import NullSink
    from bridges.pattern import PatternSource
    from engine.pipeline import StreamPipeline, StreamSettings

    pipe = StreamPipeline(tiny_parts, StreamSettings(width=64, height=64, t_index_list=[20, 40]))
    frames: list[np.ndarray] = []

    class KeepSink(CollectingSink):
        def send(self, rgba_u8: np.ndarray) -> None:
            frames.append(rgba_u8.copy())

    null = NullSink()
    rt = start(runtimes, pipe, PatternSource(64, 64, fps=30), [null, KeepSink()])
    wait_until(lambda: len(frames) >= 5 and null.count >= 5, timeout=60, what="model frames")
    s = rt.stats()
    assert s["unet_calls"] >= 5 and s["frames_in"] >= 5 and s["render_errors"] == 0
    assert s["stages"]["model"]["n"] >= 5
    assert all(f.shape == (64, 64, 4) and f.dtype == np.uint8 for f in frames)
    assert all(bool((f[..., 3] == 255).all()) for f in frames)
    assert rt.stop(timeout=30)
    assert runtime_threads() == []


SCRIPT = """
import threading, sys
import numpy as np
from bridges.files import NullSink
from bridges.pattern import PatternSource
from engine.runtime import Runtime

rt = Runtime(lambda f: f, PatternSource(32, 32, fps=60), [NullSink()], target_fps=30)
# Runs on the render thread once started, i.e. after run_until_signal installed its handlers.
rt.call_soon(lambda: print("READY", flush=True))
ok = rt.run_until_signal()
left = [t.name for t in threading.enumerate() if t.name.startswith("streamvj-")]
print("STOPPED", ok, left, flush=True)
"""


def test_sigterm_stops_a_runtime_process_cleanly(tmp_path):
    script = tmp_path / "run_small.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # blocks until the runtime started (or the process died)
        assert line.strip() == "READY", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "STOPPED True []" in out
    assert "received SIGTERM" not in err or "Traceback" not in err
    with pytest.raises(ProcessLookupError):  # nothing left in its process group
        os.killpg(proc.pid, 0)


class FakeLanded:
    """Stands in for a CUDA event: records when the render thread waited for the bytes."""

    def __init__(self, log: list[str], index: int) -> None:
        self.log, self.index = log, index

    def synchronize(self) -> None:
        self.log.append(f"wait {self.index}")


def deferred_runtime(runtimes, source, sink, log: list[str]) -> Runtime:
    """A runtime whose results behave like CUDA ones: downloads finish later, marked by an event.

    Each call returns only once the source has produced a newer frame, so one is always
    waiting in the mailbox when a render ends: the situation where deferring pays off.
    """

    def processor(rgba_u8: np.ndarray) -> np.ndarray:
        k = frame_index(rgba_u8)
        log.append(f"call {k}")
        deadline = time.monotonic() + 10
        while source.produced <= k + 1 and source.produced < source.limit and time.monotonic() < deadline:
            time.sleep(0.0005)
        return rgba_u8

    rt = Runtime(processor, source, [sink])
    plain = rt._to_host

    def to_host(result):
        buf, landed = plain(result)
        assert landed is None  # CPU results hand off at once; pretend this one is on a GPU
        return buf, FakeLanded(log, frame_index(result))

    rt._to_host = to_host
    runtimes.append(rt)
    return rt.start()


def test_cuda_frames_hand_off_after_the_next_launch_and_none_is_left_behind(runtimes):
    log: list[str] = []
    source, sink = CountingSource(limit=40), CollectingSink()
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
    source, sink = CountingSource(limit=3), CollectingSink()
    rt = deferred_runtime(runtimes, source, sink, log)
    wait_until(lambda: rt.frames_rendered == 3, what="three frames")
    rt.stop(timeout=10)
    assert rt._pending is None and [e for e in log if e.startswith("wait")] == ["wait 0", "wait 1", "wait 2"]


class IntoSource(CountingSource):
    """A source that fills the runtime's buffer itself, and sometimes loses the race (torn read)."""

    name = "into"

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.asked = 0

    def read_latest_into(self, acquire):
        if self.produced >= self.limit:
            return None
        out = acquire((H, W, 4))
        self.asked += 1
        if self.asked % 3 == 0:  # every third read is torn: the buffer is left unfilled
            return None
        time.sleep(0.0005)
        out[:] = make_frame(self.produced)
        self.produced += 1
        return out


def test_sources_that_read_into_the_pool_skip_the_copy_and_return_unfilled_buffers(runtimes):
    source, sink = IntoSource(limit=30), CollectingSink()
    rt = start(runtimes, lambda f: f, source, [sink])
    wait_until(lambda: source.produced == 30 and sink.indices and sink.indices[-1] == 29, what="all frames")
    assert sink.indices == sorted(set(sink.indices))
    pool = rt._in_pool
    wait_until(lambda: len(pool._free) == pool.size, what="every input buffer back in the pool")
    assert pool.allocated == pool.size  # torn reads returned their buffers: the pool never grew


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
    import random

    from engine.models import load_model
    from engine.pipeline import StreamPipeline, StreamSettings

    parts = load_model("tiny", device=device)
    settings = dict(width=64, height=64, t_index_list=[20, 40], cfg_type="self", fit_input=True,
                    acceleration="compile" if device == "cuda" else "none")

    def build() -> StreamPipeline:
        pipe = StreamPipeline(parts, StreamSettings(**settings), device=device, rng=random.Random(0))
        pipe.warm_up()
        return pipe

    pipe, taken = build(), []

    class Recording:
        """The processor: the pipeline, noting which frames it took, in order."""

        device = pipe.device
        counters = pipe.counters

        def __call__(self, rgba_u8: np.ndarray):
            taken.append(rgba_u8.copy())
            return pipe(rgba_u8)

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
    from types import SimpleNamespace

    class Skipping:
        """Every third frame after the first is a 'skip': the last output, returned again."""

        def __init__(self) -> None:
            self.counters = SimpleNamespace(skipped=0)
            self.last: np.ndarray | None = None
            self.calls = 0

        def __call__(self, rgba_u8: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.last is not None and self.calls % 3 == 0:
                self.counters.skipped += 1
                return self.last
            self.last = rgba_u8.copy()
            return self.last

    processor, sink = Skipping(), CollectingSink()
    source = CountingSource(limit=30)
    rt = Runtime(processor, source, [sink])
    copies = []
    plain = rt._to_host
    monkeypatch.setattr(rt, "_to_host", lambda result: (copies.append(1), plain(result))[1])
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
    assert rt._last_out is None and len(pool._free) == pool.size  # every buffer back in the pool
