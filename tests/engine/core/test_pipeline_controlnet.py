"""ControlNets in the pipeline: maps from the input (canny, depth) or a source of their own, live
scale and on/off, every variant built in warm-up, nothing run when off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config.schema import ControlNetSpec, LiveParams, LoadSettings
from engine.core.pipeline import StreamPipeline
from engine.errors import ConfigError, FrameError
from engine.models.controlnet import ControlNetParts, build_random_controlnet
from engine.models.depth import build_random_depth_model
from engine.models.load import load_model
from tests.engine.core.pipelines import SIZE

CANNY_FROM_INPUT = {"model": "random", "preprocessor": "canny"}
OWN_SOURCE = {"model": "random", "source": "shm:streamvj_depth", "preprocessor": "passthrough"}


@pytest.fixture(scope="module")
def parts():
    return load_model("tiny-random")


def frame(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 4), np.uint8)
    img[size // 4:3 * size // 4, size // 4:3 * size // 4] = rng.integers(0, 256, 4)  # edges for canny
    return img + rng.integers(0, 40, img.shape, dtype=np.uint8)


def make(parts, controlnets=(), backend="none", depth=None, **live) -> StreamPipeline:
    specs = [ControlNetSpec(**c) for c in controlnets]
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, cfg_type="self", controlnets=specs)
    loaded = [ControlNetParts(build_random_controlnet(parts.unet, seed=k), depth) for k in range(len(specs))]
    return StreamPipeline(parts, load, LiveParams(t_index_list=[20, 40], **live), backend=backend,
                          controlnets=loaded)


def play(pipe, count=4, control=None):
    outs = []
    for i in range(count):
        if control is not None:
            pipe.set_control_frame(control, frame(100 + i, 48))
        outs.append(pipe(frame(i)).clone())
    return outs


def test_controlnets_change_the_picture_and_each_map_source_works(parts):
    plain = play(make(parts))
    guided = play(make(parts, [CANNY_FROM_INPUT, OWN_SOURCE]), control=1)
    assert not torch.equal(plain[-1], guided[-1])


def test_all_off_runs_no_controlnet_and_equals_none_bit_for_bit(parts):
    pipe = make(parts, [CANNY_FROM_INPUT], controlnet_0_enabled=False)
    calls = []
    pipe.stream.control.calls[0] = lambda *args: calls.append(1)  # would fail the step if it ran
    for a, b in zip(play(make(parts)), play(pipe), strict=True):
        assert torch.equal(a, b)
    assert calls == []


def test_scale_zero_equals_no_controlnet_bit_for_bit(parts):
    for a, b in zip(play(make(parts)), play(make(parts, [CANNY_FROM_INPUT], controlnet_0_scale=0.0)), strict=True):
        assert torch.equal(a, b)


def test_live_scale_and_on_off_apply_on_the_next_frame(parts):
    pipe = make(parts, [CANNY_FROM_INPUT, CANNY_FROM_INPUT])
    pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=False, controlnet_1_scale=0.5, canny_low=0.3,
                                             canny_high=0.1))
    assert pipe.controls.on == (1,)
    assert float(pipe.stream.control.scale_rows[1][0]) == 0.5
    assert (float(pipe.controls.canny.low), float(pipe.controls.canny.high)) == pytest.approx((0.1, 0.3))
    pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=False, controlnet_1_enabled=False))
    assert pipe.controls.on == ()


def test_a_map_of_another_size_is_fitted_like_the_input_and_holds(parts):
    pipe = make(parts, [OWN_SOURCE])
    wide = np.zeros((30, 90, 4), np.uint8)
    wide[:, 30:60] = 200  # the centre third: what a cover fit keeps of a 3:1 map
    pipe.set_control_frame(0, wide)
    assert pipe.controls.own_u8[(0, "shm:streamvj_depth")].shape == (1, SIZE, SIZE, 4)
    assert int(pipe.controls.own_u8[(0, "shm:streamvj_depth")][0, SIZE // 2, SIZE // 2, 0]) == 200
    pipe(frame(0))
    pipe(frame(1))  # no new map: the last one holds
    assert int(pipe.controls.own_u8[(0, "shm:streamvj_depth")][0, SIZE // 2, SIZE // 2, 0]) == 200


@pytest.mark.parametrize(("k", "bad", "error", "message"), [
    (0, np.zeros((SIZE, SIZE, 4), np.uint8), ConfigError, "no source of its own"),
    (5, np.zeros((SIZE, SIZE, 4), np.uint8), ConfigError, "no source of its own"),
    (1, np.zeros((SIZE, SIZE, 4), np.float32), FrameError, "uint8"),
    (1, np.zeros((SIZE, SIZE, 3), np.uint8), FrameError, "RGBA|4"),
])
def test_bad_control_frames_are_refused_clearly(parts, k, bad, error, message):
    pipe = make(parts, [CANNY_FROM_INPUT, OWN_SOURCE])
    with pytest.raises(error, match=message):
        pipe.set_control_frame(k, bad)


def test_depth_from_the_input_runs_in_the_step(parts):
    depth = build_random_depth_model().eval().requires_grad_(False)
    spec = {"model": "random", "preprocessor": "depth", "depth_resolution": 56}
    outs = play(make(parts, [spec], depth=depth))
    assert not torch.equal(outs[-1], play(make(parts))[-1])


def test_txt2img_takes_its_maps_from_its_own_source(parts):
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, cfg_type="none", mode="txt2img",
                        controlnets=[ControlNetSpec(**OWN_SOURCE)])
    pipe = StreamPipeline(parts, load, LiveParams(t_index_list=[20, 40]),
                          controlnets=[ControlNetParts(build_random_controlnet(parts.unet))])
    pipe.set_control_frame(0, frame(3))
    assert pipe().shape == (SIZE, SIZE, 4)


def test_warm_up_captures_every_controlnet_variant_before_the_show(parts):
    """Graphs for FX off/on times every on/off subset, made in warm-up; the captured steps (canny
    included) have no host sync, and switching a ControlNet on air captures nothing."""
    from engine.config.schema import LiveParams as Live
    from tests.engine.accel.graph_emulator import EmulatedGraphs

    warmed = make(parts, [CANNY_FROM_INPUT])
    step = warmed.step.use_graphs(EmulatedGraphs())
    warmed.warm_up()
    assert step.captures == 2 * 2  # FX off/on x ControlNet off/on
    fresh = make(parts, [CANNY_FROM_INPUT])
    for a, b in zip(play(fresh, count=2), play(warmed, count=2), strict=True):
        assert torch.equal(a, b)
    warmed.apply_live("controlnet", Live(controlnet_0_enabled=False))
    warmed(frame(9))
    assert step.captures == 2 * 2


def test_warm_up_makes_every_variant_and_lets_dynamo_keep_them_all(parts, monkeypatch):
    """4 ControlNets (16 on/off subsets) x 3 feature bank modes (fusion too) x FX off/on = 96 variants, more than
    dynamo keeps by default: past its limit a variant would run eagerly on air, silently."""
    import torch._dynamo.config as dynamo_config

    from tests.engine.accel.graph_emulator import EmulatedGraphs

    before = dynamo_config.recompile_limit, dynamo_config.accumulated_recompile_limit
    dynamo_config.recompile_limit = 8  # its default (a config module: not for monkeypatch, whose undo deletes)
    try:
        specs = [ControlNetSpec(**CANNY_FROM_INPUT) for _ in range(4)]
        load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, bank_max=1, bank_fusion=True,
                            controlnets=specs)
        loaded = [ControlNetParts(build_random_controlnet(parts.unet, seed=k)) for k in range(4)]
        pipe = StreamPipeline(load_model("tiny-random"), load, LiveParams(t_index_list=[20, 40]), controlnets=loaded)
        pipe.step.use_graphs(EmulatedGraphs())
        ran: list[tuple] = []
        monkeypatch.setattr(pipe, "_run_step", lambda fx, control, bank: ran.append((fx, control, bank)))
        pipe.warm_up()
        assert len(ran) == len(set(ran)) == 16 * 3 * 2
        assert dynamo_config.recompile_limit >= len(ran)
    finally:
        dynamo_config.recompile_limit, dynamo_config.accumulated_recompile_limit = before


def test_too_few_loaded_controlnets_is_an_error(parts):
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, controlnets=[ControlNetSpec(**OWN_SOURCE)])
    with pytest.raises(ConfigError, match="names 1 ControlNet"):
        StreamPipeline(parts, load, LiveParams(t_index_list=[20, 40]))


def test_controlnets_work_beside_the_feature_bank(parts):
    """The bank wraps the UNet call (engine/core/feature_bank.py): the residuals pass through it."""
    specs = [ControlNetSpec(**CANNY_FROM_INPUT)]

    def banked(controlnets):
        load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, bank_max=2,
                            controlnets=specs if controlnets else [])
        loaded = [ControlNetParts(build_random_controlnet(parts.unet))] if controlnets else []
        return StreamPipeline(parts, load, LiveParams(t_index_list=[20, 40], bank_frames=2), controlnets=loaded)

    plain, guided = play(banked(False)), play(banked(True))
    assert not torch.equal(plain[-1], guided[-1])


def test_controlnets_with_the_same_input_and_preprocessor_share_one_map(parts):
    depth = build_random_depth_model().eval().requires_grad_(False)
    calls = []
    depth.register_forward_hook(lambda *args: calls.append(1))
    spec = {"model": "random", "preprocessor": "depth", "depth_resolution": 56}
    pipe = make(parts, [spec, spec], depth=depth)
    pipe(frame(0))  # priming: N = 2 steps on one frame
    assert len(calls) == 1  # once per frame: not per ControlNet, nor per priming step
    pipe(frame(1))
    assert len(calls) == 2


def test_a_controlnet_switched_back_on_gives_the_frames_in_flight_the_newest_map(parts):
    specs = [ControlNetSpec(model="random", preprocessor="passthrough")]
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, controlnets=specs)
    pipe = StreamPipeline(parts, load, LiveParams(t_index_list=[10, 30, 45]),
                          controlnets=[ControlNetParts(build_random_controlnet(parts.unet))])
    solid = [np.full((SIZE, SIZE, 4), v, np.uint8) for v in (40, 120, 200)]
    pipe(solid[0])  # primed: every slot holds the map of 40
    pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=False))
    pipe(solid[1])
    pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=True))
    pipe(solid[2])
    carried = pipe.stream.control.map_buf[0][:, 0, 0, 0]  # slots 1 and 2 after that frame
    assert carried.tolist() == pytest.approx([200 / 255, 200 / 255])  # not the stale 40 from before
