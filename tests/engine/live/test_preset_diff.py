from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.config.schema import Preset
from engine.live.preset_diff import plan_switch


def preset(**load: Any) -> Preset:
    return Preset.model_validate({"name": "p", "load": {"model": "tiny", **load}})


def test_live_only() -> None:
    plan = plan_switch(preset(), Preset.model_validate({"name": "q", "load": {"model": "tiny"},
                                                        "live": {"guidance_scale": 3.0}}))
    assert plan.live_only and plan.restart_only == []


def test_load_time_fields_need_a_rebuild_bridges_a_restart() -> None:
    plan = plan_switch(preset(), preset(width=256, sinks=["null"]))
    assert plan.rebuild == ["load.width"] and plan.restart_only == ["load.sinks"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to CUDA here")
@pytest.mark.parametrize(
    "old, new",
    [
        ({"device": "cpu"}, {"device": "auto"}),
        ({"dtype": "float32"}, {"dtype": "auto"}),
        ({"acceleration": "none"}, {"acceleration": "auto"}),
        ({"device": "cpu", "dtype": "float32", "acceleration": "none"}, {}),
    ],
)
def test_spellings_that_resolve_the_same_need_no_rebuild(old: dict, new: dict) -> None:
    assert plan_switch(preset(**old), preset(**new)).live_only


def test_values_that_resolve_differently_do() -> None:
    assert plan_switch(preset(dtype="float32"), preset(dtype="bfloat16")).rebuild == ["load.dtype"]
    assert plan_switch(preset(acceleration="none"), preset(acceleration="compile")).rebuild == ["load.acceleration"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unresolvable_device_is_left_to_the_build() -> None:
    assert plan_switch(preset(device="cpu"), preset(device="cuda")).rebuild == ["load.device"]
