"""benchmarks/runtime_e2e.py, cold_start.py and engine_process.py: the arithmetic and parsing behind their numbers.

The scripts themselves run end to end in the GPU check's dry run (tests/scripts/test_gpu_check.py).
"""

from __future__ import annotations

import os

from benchmarks import cold_start, runtime_e2e
from benchmarks.engine_process import EngineSettings, compile_lines, parse_summary, write_preset

MS = 1_000_000


def test_latency_is_switch_to_first_changed_output_within_that_scene():
    switches = [0, 100 * MS, 200 * MS, 300 * MS]  # the first is the start, not a switch
    outputs = [(1, 10 * MS, 0.0), (2, 50 * MS, 0.5),  # rounding-sized changes are not a new scene
               (3, 112 * MS, 30.0), (4, 130 * MS, 25.0),  # the second change of one switch is not counted
               (5, 250 * MS, 1.0),  # scene 2 never showed before the next switch
               (6, 318 * MS, 40.0)]
    lat, missed = runtime_e2e.latencies(switches, outputs)
    assert lat == [12.0, 18.0] and missed == 1


def test_jitter_is_the_p99_distance_from_the_median_interval():
    stamps = [k * 10 * MS for k in range(101)]
    stamps[50] += 3 * MS  # one late frame: two intervals off by 3 ms
    out = runtime_e2e.jitter(stamps)
    assert out["interval_median_ms"] == 10.0 and out["jitter_p99_ms"] == 3.0
    assert runtime_e2e.jitter(stamps[:2]) == {}


def test_runs_exit_line_and_compile_lines_are_read_back():
    lines = ["12:00:00 INFO streamvj.compile: torch.compile: graph 0/0 ready in 3.0 s, from the cache\n",
             "12:00:05 INFO run_engine: stopped after 120 frames (19.6 fps over 6.1 s; 21.0 fps at the end; 2 skipped)\n"]
    assert parse_summary(lines) == {"frames": 120, "fps_average": 19.6, "seconds": 6.1, "fps_at_end": 21.0,
                                    "skipped": 2}
    assert parse_summary(lines[:1]) is None
    assert compile_lines(lines) == ["torch.compile: graph 0/0 ready in 3.0 s, from the cache"]
    assert cold_start.warm_up_seconds(["x pipeline warmed up in 12.5 s (compile)"]) == 12.5


def test_written_preset_is_a_valid_preset(tmp_path):
    from engine.config.preset_files import load_preset

    settings = EngineSettings(model="tiny", size=64, acceleration="compile", t_index=(20, 40), similarity=True)
    preset = load_preset(write_preset(tmp_path, "p", settings, "pattern:64x64@240", ["null", "shm:x"]))
    assert preset.load.acceleration == "compile" and preset.load.sinks == ["null", "shm:x"]
    assert list(preset.live.t_index_list) == [20, 40] and preset.live.similarity_enabled is True


def test_cpu_time_of_a_process_is_read_where_proc_exists():
    own = cold_start.cpu_seconds(os.getpid())
    assert own is None or own >= 0
    assert cold_start.cpu_seconds(2**22 + 12345) is None  # no such process


def test_cold_start_runs_on_its_own_caches_only(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/somewhere")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/else")
    env = cold_start.cache_env(tmp_path)
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and "TRITON_CACHE_DIR" not in env
    assert env["STREAMVJ_COMPILE_CACHE"] == str(tmp_path / "inductor")
    assert env["STREAMVJ_TRT_CACHE"] == str(tmp_path / "trt") and env["PATH"] == os.environ["PATH"]
