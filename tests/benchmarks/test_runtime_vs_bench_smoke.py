"""benchmarks/runtime_vs_bench.py runs end to end at a tiny size and reports a ratio."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import REPO


def test_runtime_vs_bench_prints_both_rates_and_their_ratio():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "runtime_vs_bench.py"), "--size", "64",
                          "--rounds", "1", "--run-frames", "4", "--bench-frames", "3", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["run_fps_median"] > 0 and result["bench_fps_median"] > 0
    assert result["ratio"] == round(result["run_fps_median"] / result["bench_fps_median"], 3)
    assert result["width"] == result["height"] == 64
