"""benchmarks/bench_overhead.py's control-path measurement runs and reports sane numbers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_control_path_measures_frames():
    from bench_overhead import bench_control_path

    result = bench_control_path(50)
    assert result["frames"] == 50 and result["p99_ms"] >= result["median_ms"] > 0
