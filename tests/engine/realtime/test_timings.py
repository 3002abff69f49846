from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.realtime.timings import STAGES, Ring, Timings, rate
from tests.fake_clock import FakeClock


def test_ring_keeps_the_last_samples_in_fixed_memory():
    ring = Ring(4)
    values = ring.values
    for v in range(10):
        ring.add(float(v))
    assert ring.values is values and len(values) == 4
    assert len(ring) == 4 and ring.count == 10
    assert ring.samples().tolist() == [6.0, 7.0, 8.0, 9.0]
    ring.clear()
    assert len(ring) == 0 and ring.samples().tolist() == []


def test_ring_partial_fill_is_in_order():
    ring = Ring(8)
    for v in (3.0, 1.0, 2.0):
        ring.add(v)
    assert ring.samples().tolist() == [3.0, 1.0, 2.0]


def test_ring_rejects_empty_size():
    with pytest.raises(ValueError):
        Ring(0)


def test_stage_percentiles_in_ms():
    t = Timings(window=100, clock=FakeClock())
    for ms in range(1, 101):  # 1..100 ms
        t.record("model", ms / 1000)
    snap = t.snapshot()["stages"]["model"]
    assert snap["n"] == 100
    assert snap["median_ms"] == pytest.approx(50.5)
    assert snap["p90_ms"] == pytest.approx(90.1)
    assert snap["p99_ms"] == pytest.approx(99.01)


def test_window_forgets_old_samples():
    t = Timings(window=10, clock=FakeClock())
    for _ in range(50):
        t.record("send", 1.0)
    for _ in range(10):
        t.record("send", 0.002)
    assert t.snapshot()["stages"]["send"]["p99_ms"] == pytest.approx(2.0)


def test_every_stage_is_reported_even_before_samples():
    snap = Timings(clock=FakeClock()).snapshot()
    assert set(STAGES) <= set(snap["stages"])
    assert snap["stages"]["receive"] == {"median_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "n": 0}
    assert snap["fps"] == 0.0 and snap["latency_ms"] == 0.0 and snap["skip_ratio"] == 0.0


def test_stages_a_processor_names_appear_by_name():
    t = Timings(clock=FakeClock())
    t.record("vae", 0.010)
    assert t.snapshot()["stages"]["vae"]["median_ms"] == pytest.approx(10.0)


def test_latency_fps_and_skip_ratio_from_frame_out():
    clock = FakeClock(0.0)
    t = Timings(window=64, clock=clock)
    for i in range(30):  # 30 fps, 40 ms arrival -> handoff, every third frame skipped
        now = i / 30
        t.frame_out(now - 0.040, now, skipped=i % 3 == 0)
    clock.t = 29 / 30
    snap = t.snapshot()
    assert snap["fps"] == pytest.approx(30.0)
    assert snap["latency_ms"] == pytest.approx(40.0)
    assert snap["latency_p99_ms"] == pytest.approx(40.0)
    assert snap["skip_ratio"] == pytest.approx(10 / 30)


def test_fps_falls_while_output_is_stalled():
    clock = FakeClock(0.0)
    t = Timings(clock=clock)
    for i in range(30):
        t.tick("in", i / 30)
    clock.t = 29 / 30
    assert t.snapshot()["fps_in"] == pytest.approx(30.0)
    clock.t = 1.5  # half a second without a frame
    assert 0 < t.snapshot()["fps_in"] < 25
    clock.t = 10.0  # everything left the horizon
    assert t.snapshot()["fps_in"] == 0.0


def test_rate_edge_cases():
    assert rate(np.array([]), 1.0) == 0.0
    assert rate(np.array([1.0]), 1.0) == 0.0
    assert rate(np.array([1.0, 1.0]), 1.0) == 0.0
    assert rate(np.array([0.0, 0.5, 1.0]), 1.0) == pytest.approx(2.0)


def test_counts_and_reset():
    t = Timings(clock=FakeClock())
    t.count("dropped_input")
    t.count("dropped_input", 2)
    t.record("model", 0.1)
    assert t.snapshot()["counts"] == {"dropped_input": 3}
    t.reset()
    snap = t.snapshot()
    assert snap["counts"] == {} and snap["stages"]["model"]["n"] == 0


def test_recording_from_many_threads():
    t = Timings(window=1000, clock=FakeClock())

    def worker() -> None:
        for _ in range(2000):
            t.record("send", 0.001)
            t.tick("sent", 1.0)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert t._stages["send"].count == 8000
    assert t._rates["sent"].count == 8000
