from __future__ import annotations

import numpy as np
import pytest

from engine.bench import bench_plan
from engine.bench_temporal import PAN_PX, SETTINGS, mean_change, panning_frames, run_temporal_bench


def test_panning_frames_move_by_pan_px_a_frame():
    a, b = panning_frames(2, 16, 24)
    assert a.shape == (16, 24, 4) and a.dtype == np.uint8 and (a[..., 3] == 255).all()
    assert np.array_equal(a[:, PAN_PX:], b[:, :-PAN_PX])  # the same texture, shifted
    assert not np.array_equal(a, b)
    assert np.array_equal(panning_frames(1, 16, 24, start=1)[0], b)


def test_mean_change_is_the_mean_absolute_rgb_step():
    import torch

    frames = [torch.zeros(2, 2, 4, dtype=torch.uint8), torch.full((2, 2, 4), 6, dtype=torch.uint8),
              torch.full((2, 2, 4), 3, dtype=torch.uint8)]
    assert mean_change(frames) == pytest.approx(4.5)


def test_temporal_bench_measures_every_setting_side_by_side():
    plan = bench_plan({"model": "tiny", "width": 64, "height": 64, "device": "cpu"}, [32, 45], frames=3, warmup=1)
    table, result = run_temporal_bench(plan)
    rows = result["settings"]
    assert [r["name"] for r in rows] == [name for name, _ in SETTINGS]
    for row in rows:
        assert row["flicker"] > 0 and row["ms_median"] > 0 and row["cpu_ms_median"] > 0 and row["input_change"] > 0
        assert row["name"] in table
    by_name = {r["name"]: r for r in rows}
    # An installed bank with M = 0 is bit-exact with no bank: the same outputs, so the same flicker.
    off = by_name["off (no bank installed)"]["output_change"]
    assert by_name["bank installed, off (M=0)"]["output_change"] == off
    assert by_name["bank M=2"]["output_change"] != off
    assert by_name["bank M=2 + fusion 0.8 @0.9"]["output_change"] != by_name["bank M=2"]["output_change"]
    assert "flicker =" in table and result["model"] == "tiny" and result["backend"] == "none"
