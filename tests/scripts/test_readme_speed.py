"""benchmarks/readme_speed.py: the bench command per README row, the README table it writes, and one real
(tiny, 64x64) row through `run_engine.py bench --json` so the script keeps up with the command's output."""

from __future__ import annotations

import json
import sys

from tests.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import readme_speed as rs  # noqa: E402


def test_the_rows_are_readmes_table_then_the_compile_comparison():
    assert [(r.width, r.t_index) for r in rs.TABLE_ROWS] == [(256, (32,)), (256, (32, 45)), (512, (32,)),
                                                             (512, (32, 45))]
    assert all(r.baseline and r.acceleration == "none" for r in rs.TABLE_ROWS)
    twin = [r for r in rs.TABLE_ROWS if (r.width, r.t_index) == (rs.COMPILE_ROW.width, rs.COMPILE_ROW.t_index)]
    assert len(twin) == 1  # the compile sentence compares against a row measured in the same run


def test_bench_command_asks_for_exactly_readmes_configuration():
    cmd = rs.bench_command(rs.TABLE_ROWS[1], frames=20, warmup=3, python="py")
    assert cmd[:3] == ["py", str(REPO / "run_engine.py"), "bench"]
    flags = dict(zip(cmd[3:-3:2], cmd[4:-3:2]))
    assert flags == {"--model": "tiny", "--device": "cpu", "--dtype": "float32", "--cfg": "self", "--width": "256",
                     "--height": "256", "--t-index": "32,45", "--frames": "20", "--warmup": "3"}
    assert cmd[-3:] == ["--json", "--baseline", "autopipeline"]
    compiled = rs.bench_command(rs.COMPILE_ROW, frames=20, warmup=3)
    assert compiled[-3:] == ["--json", "--acceleration", "compile"] and "--baseline" not in compiled


def fake_result() -> dict:
    def row(r: rs.Row, fps: float, ms: float, **extra) -> dict:
        return {"row": {"width": r.width, "height": r.height, "t_index": list(r.t_index),
                        "acceleration": r.acceleration, "baseline": r.baseline},
                "fps": fps, "ms_median": ms, "ms_p90": ms * 1.1, "unet_ms_median": ms / 2, "torch": "2.13.0+cpu",
                "threads": 2, **extra}

    rows = [row(r, 1000 / (10 * (i + 1)), 10.0 * (i + 1), baseline={"fps": 5.0}, speedup_vs_baseline=1.5)
            for i, r in enumerate(rs.TABLE_ROWS)]
    rows.append(row(rs.COMPILE_ROW, 80.0, 12.5))
    return {"machine": {"cpu": "Test CPU 9000", "logical_cpus": 2, "torch": "2.13.0+cpu", "torch_threads": 2,
                        "date": "2026-01-01 00:00 UTC"},
            "load_before": [0.5, 0.4, 0.3], "load_after": [1.0, 0.5, 0.3], "frames": 20, "warmup": 3, "rows": rows}


def test_markdown_names_the_machine_and_gives_every_row():
    text = rs.markdown(fake_result())
    assert "Test CPU 9000 (2 logical CPUs, torch 2.13.0+cpu with 2 threads, no GPU)" in text
    assert "20 frames after 3 warm-up" in text and "load average 0.5 before, 1.0 after" in text
    assert "| 256x256 | 2 (`32,45`) | 50.0 | 20.0 / 22.0 | 10.0 | 5.0 | 1.50x | ? |" in text
    assert text.count("\n| 512x512 |") == 2
    # compile 12.5 ms against the 256x256 2-step eager row's 20.0 ms
    assert "80.0 fps against 50.0 eager (12.5 vs 20.0 ms median), 1.60x (other processes took ? of" in text


def test_markdown_says_how_busy_the_machine_was():
    result = fake_result()
    result["rows"][0]["others_cpu_pct"], result["rows"][2]["others_cpu_pct"] = 3.5, 12.0
    text = rs.markdown(result)
    assert "other processes used at most 12.0% of the CPU during a row" in text
    assert text.count(" | 12% |") == 1 and text.count(" | 4% |") == 1  # 3.5 rounds to 4


def test_render_prints_the_markdown_of_a_saved_run(tmp_path, capsys):
    saved = tmp_path / "speed.out"
    saved.write_text("some table\n\n" + json.dumps(fake_result()) + "\n")
    assert rs.main(["--render", str(saved)]) == 0
    assert "Test CPU 9000" in capsys.readouterr().out


def test_one_real_row_through_the_bench_command():
    row = rs.Row(64, 64, (32,))
    got = rs.measure_row(row, frames=2, warmup=1, timeout=600)
    if sys.platform == "linux":
        assert 0.0 <= got["others_cpu_pct"] <= 100.0
    assert got["row"]["width"] == 64
    for key in ("fps", "ms_median", "ms_p90", "unet_ms_median", "torch", "threads", "speedup_vs_baseline"):
        assert key in got, f"bench --json lost {key!r}"
    assert got["width"] == 64 and got["frames"] == 2 and got["baseline"]["fps"] > 0
    assert "64x64" in rs.markdown({"machine": {**rs.machine(), "torch": got["torch"], "torch_threads": 2},
                                   "load_before": None, "load_after": None, "frames": 2, "warmup": 1,
                                   "rows": [got]})


def test_waiting_for_a_quiet_cpu_gives_up_after_its_limit_and_stops_at_a_quiet_window():
    if rs.machine_cpu_s() is None:
        assert rs.wait_until_idle(5.0) == 0.0  # nothing to measure with: no wait
        return
    assert rs.wait_until_idle(0.3, idle_pct=101.0, window_s=0.1) >= 0.3  # never that idle: waits it out
    assert rs.wait_until_idle(60.0, idle_pct=0.0, window_s=0.1) < 60.0  # any window is quiet enough


def test_a_row_disturbed_by_other_processes_is_measured_again_and_the_quietest_try_kept(monkeypatch):
    others = iter([50.0, 2.0] + [40.0, 30.0, 35.0] * 10)
    calls = []

    def fake_row(row, frames, warmup, timeout):
        calls.append(row)
        return {"row": {"width": row.width}, "others_cpu_pct": next(others), "fps": 1.0, "torch": "t", "threads": 2}

    monkeypatch.setattr(rs, "measure_row", fake_row)
    result = rs.measure(5, 1, with_compile=False, timeout=10, max_others_pct=5.0, tries=3, log=lambda s: None)
    first, second = result["rows"][:2]
    assert (first["tries"], first["others_cpu_pct"]) == (2, 2.0)  # quiet on the second try: stop there
    assert (second["tries"], second["others_cpu_pct"]) == (3, 30.0)  # never quiet: the quietest of three
    assert len(calls) == 2 + 3 + 3 + 3
