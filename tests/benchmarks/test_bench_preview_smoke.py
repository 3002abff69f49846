"""benchmarks/bench_preview.py runs its three set-ups and reports what the preview's threads did."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_preview_bench_measures_all_setups():
    from bench_preview import SETUPS, bench, table

    result = bench(size=64, seconds=1.5, rounds=1)
    assert all(result[s]["fps"] > 0 for s in SETUPS)
    assert result["off"]["preview_threads_cpu_ms_per_s"] == 0.0
    assert result["watching"]["pictures_per_s"] > 0 and result["idle"]["pictures_per_s"] == 0
    assert result["watching"]["preview_threads_cpu_ms_per_s"] > 0 and result["watching"]["encode_ms"] > 0
    assert "watching" in table(result)
