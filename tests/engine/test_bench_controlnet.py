"""`bench --controlnet`: 0, 1 and 2 ControlNets timed side by side in one run, and the preprocessor alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bench import bench_plan
from engine.bench_controlnet import run_controlnet_bench
from engine.config.cli import build_parser


@pytest.mark.parametrize("preprocessor", ["canny", "depth"])
def test_the_table_has_a_row_per_controlnet_count_and_the_preprocessor_cost(preprocessor):
    plan = bench_plan({"model": "tiny-random", "width": 64, "height": 64, "device": "cpu"}, [20, 40],
                      frames=2, warmup=1)
    table, result = run_controlnet_bench(plan, preprocessor, depth_model="random", depth_resolution=56)
    for row in ("0 ControlNets", "1 ControlNet ", "2 ControlNets", f"preprocessor {preprocessor} alone"):
        assert row in table
    assert set(result["controlnets"]) == {"0", "1", "2"} and result["preprocess_ms_median"] > 0
    assert all(r["fps"] > 0 for r in result["controlnets"].values())


def test_the_command_line_offers_the_schemas_preprocessors():
    parser = build_parser({name: print for name in ("run", "presets", "bridges", "osc", "bench")}, Path("."))
    args = parser.parse_args(["bench", "--controlnet", "depth", "--depth-model", "depth-anything/x"])
    assert (args.controlnet, args.depth_model) == ("depth", "depth-anything/x")
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--controlnet", "pose"])
