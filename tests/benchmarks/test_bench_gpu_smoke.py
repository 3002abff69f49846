"""benchmarks/bench_gpu.py runs end to end on the CPU (tiny model, two frames, no compiling)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import REPO as ROOT


def test_cpu_smoke_run_prints_a_table_and_json():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--tiny", "--frames", "2",
         "--warmup", "1", "--no-compile"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["gpu"] == "cpu" and result["torch"] and result["width"] == 64
    variants = {(r["steps"], r["variant"]) for r in result["results"]}
    assert variants == {(s, v) for s in (1, 4) for v in ("eager", "diffusers AutoPipelineForImage2Image")}
    for row in result["results"]:
        assert row["fps"] > 0 and row["ms_p90"] >= row["ms_median"] > 0
        assert row.get("backend", "eager") == "eager"  # streamvj rows say what ran; diffusers' has none
    assert set(result["speedups"]) == {"1_step", "4_step"}
    assert "ms median" in proc.stderr  # the table


def test_no_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--frames", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
