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

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.realtime.processor import FunctionProcessor
from engine.realtime.runtime import Runtime
from tests.engine.realtime.runtime_fakes import (
    CollectingSink,
    CountingSource,
    GatedProcessor,
    make_frame,
    runtime_threads,
    start,
    wait_until,
)
from tests.paths import REPO


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
        rt = start(runtimes, FunctionProcessor(flaky), CountingSource(), [sink])
        wait_until(lambda: len(calls) >= 10 and len(sink.indices) >= 5, what="frames after the errors")
    stats = rt.stats()
    assert stats["render_errors"] == 3
    assert stats["error"] == "ValueError: latents went NaN"
    logged = [r for r in caplog.records if "latents went NaN" in r.getMessage()]
    assert len(logged) == 1  # the same message within 5 s is logged once
    assert "processor failed on frame" in logged[0].getMessage()


def test_bad_processor_output_is_an_error_not_a_crash(runtimes):
    rt = start(runtimes, FunctionProcessor(lambda f: f[..., :3].copy()), CountingSource(), [CollectingSink()])
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
    rt = start(runtimes, FunctionProcessor(generate, needs_input=False), None, [sink], target_fps=200)
    wait_until(lambda: len(sink.indices) >= 5 and len(calls) >= 5, what="generated frames")
    assert set(calls) == {()}
    assert "streamvj-source" not in runtime_threads()
    assert rt.stats()["frames_rendered"] >= 5


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
    assert set(s["stages"]) >= {"receive", "params", "preprocess", "model", "postprocess", "send"}


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
        Runtime(FunctionProcessor(lambda f: f), None, [], target_fps=fps)


def test_tiny_model_end_to_end_from_the_test_pattern(runtimes, tiny_parts):
    from bridges.video.files import NullSink
    from bridges.video.pattern import PatternSource
    from tests.engine.core.pipelines import make_pipeline

    pipe = make_pipeline(tiny_parts, seed_rng=None)
    frames: list[np.ndarray] = []

    class KeepSink(CollectingSink):
        def send(self, rgba_u8: np.ndarray) -> None:
            frames.append(rgba_u8.copy())

    null = NullSink()
    rt = start(runtimes, pipe, PatternSource(64, 64, fps=30), [null, KeepSink()])
    wait_until(lambda: len(frames) >= 5 and null.count >= 5, timeout=60, what="model frames")
    s = rt.stats()
    assert s["unet_calls"] >= 5 and s["frames_in"] >= 5 and s["render_errors"] == 0
    assert s["stages"]["model"]["n"] >= 5 and s["stages"]["preprocess"]["n"] >= 5  # the pipeline's own stage
    assert all(f.shape == (64, 64, 4) and f.dtype == np.uint8 for f in frames)
    assert all(bool((f[..., 3] == 255).all()) for f in frames)
    assert rt.stop(timeout=30)
    assert runtime_threads() == []


SCRIPT = """
import threading, sys
import numpy as np
from bridges.video.files import NullSink
from bridges.video.pattern import PatternSource
from engine.realtime.processor import FunctionProcessor
from engine.realtime.runtime import Runtime

rt = Runtime(FunctionProcessor(lambda f: f), PatternSource(32, 32, fps=60), [NullSink()], target_fps=30)
# Runs on the render thread once started, i.e. after run_until_signal installed its handlers.
rt.call_soon(lambda: print("READY", flush=True))
ok = rt.run_until_signal()
left = [t.name for t in threading.enumerate() if t.name.startswith("streamvj-")]
print("STOPPED", ok, left, flush=True)
"""


def stop_runtime_process(tmp_path, stop_signal: int, **popen: object) -> tuple[subprocess.Popen, str, str]:
    """Run SCRIPT, wait for READY, send `stop_signal`; assert a clean exit; (process, stdout, stderr)."""
    script = tmp_path / "run_small.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    try:
        line = proc.stdout.readline()  # blocks until the runtime started (or the process died)
        assert line.strip() == "READY", proc.stderr.read()
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "STOPPED True []" in out
    return proc, out, err


def test_sigterm_stops_a_runtime_process_cleanly(tmp_path):
    proc, _, err = stop_runtime_process(tmp_path, signal.SIGTERM, start_new_session=True)
    assert "Traceback" not in err
    with pytest.raises(ProcessLookupError):  # nothing left in its process group
        os.killpg(proc.pid, 0)


def test_ctrl_break_stops_run_until_signal_like_ctrl_c(runtimes, monkeypatch, caplog):
    """Windows' Ctrl-Break (SIGBREAK, faked with SIGUSR1 here) is a stop signal too: without a
    handler its default action kills the process without closing bridges."""
    fake_break = signal.SIGUSR1
    monkeypatch.setattr(signal, "SIGBREAK", fake_break, raising=False)
    before = signal.getsignal(fake_break)
    rt = Runtime(FunctionProcessor(lambda f: f), CountingSource(), [CollectingSink()])
    runtimes.append(rt)

    def press_ctrl_break() -> None:
        wait_until(lambda: rt.frames_rendered >= 2, what="frames before Ctrl-Break")
        os.kill(os.getpid(), fake_break)

    presser = threading.Thread(target=press_ctrl_break, daemon=True)
    presser.start()
    with caplog.at_level(logging.INFO, logger="streamvj.runtime"):
        assert rt.run_until_signal(timeout=10)
    presser.join(10)
    assert not rt.running and runtime_threads() == []
    assert "received Ctrl-Break (SIGBREAK): stopping" in caplog.text
    assert signal.getsignal(fake_break) is before  # the previous handler is back


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="Ctrl-Break is a Windows console event")
def test_ctrl_break_stops_a_runtime_process_cleanly_on_windows(tmp_path):
    # CTRL_BREAK_EVENT reaches a process group: the child gets its own, so pytest is not hit.
    stop_runtime_process(tmp_path, signal.CTRL_BREAK_EVENT, creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
