"""Temporal consistency in the pipeline: off is today's output bit for bit (and runs no bank code),
a bank switched on starts empty, cuts and resets clear the past, and a captured or compiled step
equals eager with the bank and fusion on, live changes and on/off switches included."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.bench_temporal import panning_frames
from engine.config.schema import LiveParams, Preset
from engine.core.feature_bank import BankedSelfAttention
from engine.core.pipeline import StreamPipeline
from engine.core.temporal import Temporal, wanted_mode
from engine.models.load import load_model
from tests.engine.core.pipelines import SIZE, make_pipeline


@pytest.fixture(scope="module")
def bank_parts():
    """A UNet of its own: a bank installs processors on it (the session's tiny_parts stay plain)."""
    return load_model("tiny")


def pan(count: int, start: int = 0) -> list[np.ndarray]:
    return panning_frames(count, SIZE, SIZE, start)


def play(pipe: StreamPipeline, frames: list[np.ndarray]) -> list[torch.Tensor]:
    return [pipe(f).clone() for f in frames]


@pytest.mark.parametrize("fields", [
    {"bank_max": 4},  # installed, M = 0
    {"bank_max": 2, "bank_frames": 2, "bank_strength": 0.0},
    {"bank_max": 2, "bank_frames": 2, "bank_strength": 0.0, "cfg_type": "full", "frame_buffer_size": 2},
    {"bank_max": 2, "bank_fusion": True, "fusion_strength": 0.8, "fusion_threshold": 0.0},  # M = 0: nothing to read
    {"latent_feedback": 0.0, "cut_threshold": 0.0},
])
def test_temporal_off_equals_todays_output_bit_for_bit(tiny_parts, bank_parts, fields):
    common = {k: v for k, v in fields.items() if k in ("cfg_type", "frame_buffer_size")}
    today = make_pipeline(tiny_parts, negative_prompt="", **common)
    temporal = make_pipeline(bank_parts, negative_prompt="", **fields)
    f = fields.get("frame_buffer_size", 1)
    frames = pan(5 * f)
    batches = [np.stack(frames[i:i + f]) for i in range(0, len(frames), f)] if f > 1 else frames
    for a, b in zip(play(today, batches), play(temporal, batches), strict=True):
        assert torch.equal(a, b)


def test_bank_off_runs_the_plain_step_with_no_ring_work(bank_parts):
    pipe = make_pipeline(bank_parts, bank_max=2, bank_frames=2, bank_strength=0.0)
    play(pipe, pan(4))
    state = pipe.temporal.bank.state
    assert state.mode == "off" and int(state.calls) == 0 and int(state.filled) == 0
    assert all(not p.keys.any() for p in pipe.temporal.bank.processors.values())


def test_bank_fusion_and_latent_feedback_change_the_output(tiny_parts, bank_parts):
    frames = pan(6)
    today = play(make_pipeline(tiny_parts), frames)
    banked = play(make_pipeline(bank_parts, bank_max=2, bank_frames=2), frames)
    fused = play(make_pipeline(bank_parts, bank_max=2, bank_fusion=True, bank_frames=2, fusion_strength=1.0,
                                fusion_threshold=0.5), frames)
    fed = play(make_pipeline(tiny_parts, latent_feedback=0.5), frames)
    assert not torch.equal(today[-1], banked[-1]) and not torch.equal(today[-1], fed[-1])
    assert not torch.equal(banked[-1], fused[-1])


def test_fusion_is_allocated_only_when_the_preset_asks(bank_parts, caplog):
    """Without load.bank_fusion a bank has two modes and no output rings; a live fusion_strength then has no
    effect (the bank alone runs, bit for bit) and says so once; a preset that sets one is refused."""
    plain_bank = make_pipeline(bank_parts, bank_max=2, bank_frames=2)
    assert plain_bank.temporal.modes() == ("off", "bank")
    assert all(p.outputs is None for p in plain_bank.temporal.bank.processors.values())
    expected = play(plain_bank, pan(4))
    asked = make_pipeline(bank_parts, bank_max=2, bank_frames=2)
    with caplog.at_level(logging.INFO, logger="streamvj.temporal"):
        for threshold in (0.5, 0.6):  # another temporal change: not said again
            asked.apply_live("temporal", LiveParams(bank_frames=2, fusion_strength=0.8, fusion_threshold=threshold))
    assert caplog.text.count("has no feature fusion") == 1
    assert all(torch.equal(a, b) for a, b in zip(play(asked, pan(4)), expected, strict=True))
    fusing = make_pipeline(bank_parts, bank_max=2, bank_fusion=True, bank_frames=2)
    assert fusing.temporal.modes() == ("off", "bank", "fusion")
    with pytest.raises(ValidationError, match="needs load.bank_fusion: true"):
        Preset.model_validate({"name": "p", "load": {"model": "tiny", "bank_max": 2},
                               "live": {"bank_frames": 2, "fusion_strength": 0.5}})


def test_a_bank_switched_on_starts_empty_and_fills(bank_parts):
    """Two pipelines with the same history (bank on, then off): one switches the bank on again. Its
    first frame is the other's bit for bit (every row attends to itself only: nothing stale from
    before the switch-off), from then on each row attends to what it computed since the switch."""
    on, off = (LiveParams(bank_frames=frames, t_index_list=[20, 40], cut_threshold=0.0) for frames in (3, 0))
    # Each on a UNet of its own: a bank's processors belong to the UNet.
    pipes = [make_pipeline(parts, bank_max=3, bank_frames=3, cut_threshold=0.0) for parts in (bank_parts, load_model("tiny"))]
    for pipe in pipes:
        play(pipe, pan(3))
        pipe.apply_live("temporal", off)
        play(pipe, pan(2, start=3))
    switched, stayed = pipes
    switched.apply_live("temporal", on)
    name = next(iter(switched.temporal.bank.processors))
    processor, attn = switched.temporal.bank.processors[name], bank_parts.unet.get_submodule(name[: -len(".processor")])
    recorded: list[torch.Tensor] = []
    hook = attn.register_forward_pre_hook(lambda module, args: recorded.append(args[0].clone()))
    state = switched.temporal.bank.state
    first = switched(pan(1, start=5)[0]).clone()
    assert torch.equal(first, stayed(pan(1, start=5)[0])) and int(state.filled) == 1
    later = pan(2, start=6)
    changed = [not torch.equal(switched(frame), stayed(frame)) for frame in later]
    hook.remove()
    assert any(changed) and int(state.filled) == 3 and len(recorded) == 3
    newest = int(state.pos) - 1
    for age, hidden in enumerate(reversed(recorded)):  # the ring holds the calls since the switch, newest first
        keys = attn.to_k(hidden).view(2, -1, processor.heads, processor.head_dim).transpose(1, 2)
        torch.testing.assert_close(processor.keys[:, :, (newest - age) % 3], keys, rtol=0, atol=1e-6)


def test_live_changes_keep_every_buffer_and_oversized_m_uses_the_allocation(bank_parts, caplog):
    pipe = make_pipeline(bank_parts, bank_max=2, bank_frames=1)
    buffers = [t.data_ptr() for t in pipe.temporal.tensors()]
    play(pipe, pan(3))
    with caplog.at_level(logging.INFO, logger="streamvj.feature_bank"):
        pipe.apply_live("temporal", LiveParams(bank_frames=8, bank_refresh=3, bank_strength=0.5, latent_feedback=0.4))
    assert int(pipe.temporal.bank.state.frames) == 2 and "bank_max 2" in caplog.text
    with caplog.at_level(logging.INFO, logger="streamvj.feature_bank"):  # another temporal knob turns
        pipe.apply_live("temporal", LiveParams(bank_frames=8, bank_refresh=3, bank_strength=0.7, latent_feedback=0.4))
    assert caplog.text.count("bank_max 2") == 1  # said once per value, not at every temporal change
    play(pipe, pan(3, start=3))
    assert buffers == [t.data_ptr() for t in pipe.temporal.tensors()]


def test_a_scene_cut_clears_the_bank_and_the_feedback_exactly_like_forgetting(bank_parts):
    """A jump to another picture: the same output as a pipeline told to forget at that frame."""
    fields = {"bank_max": 2, "bank_frames": 2, "latent_feedback": 0.5}
    watching = make_pipeline(bank_parts, cut_threshold=0.9, **fields)
    frames = pan(4) + [np.zeros((SIZE, SIZE, 4), np.uint8)] + pan(2, start=40)
    outs = play(watching, frames)
    assert watching.temporal.cuts == 2  # into black, and out of it
    told = make_pipeline(bank_parts, cut_threshold=0.0, **fields)
    expected = []
    for i, frame in enumerate(frames):
        if i in (4, 5):
            told.temporal.forget()
        expected.append(told(frame).clone())
    for a, b in zip(outs, expected, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(outs[-1], play(make_pipeline(bank_parts, cut_threshold=0.0, **fields), frames)[-1])


def test_reset_and_warm_up_leave_no_temporal_trace(bank_parts):
    fields = {"bank_max": 2, "bank_frames": 2, "latent_feedback": 0.5}
    fresh = play(make_pipeline(bank_parts, **fields), pan(4))
    used = make_pipeline(bank_parts, **fields)
    play(used, pan(3, start=20))
    used.reset()
    assert all(torch.equal(a, b) for a, b in zip(play(used, pan(4)), fresh, strict=True))
    warmed = make_pipeline(bank_parts, **fields)
    warmed.warm_up()
    assert all(torch.equal(a, b) for a, b in zip(play(warmed, pan(4)), fresh, strict=True))


def test_captured_step_equals_eager_with_the_bank_on_and_live_changes_never_recapture(bank_parts):
    """Live values and the bank's and fusion's on/off switches, after warm_up: no capture on air."""
    from tests.engine.accel.graph_emulator import EmulatedGraphs

    fields = {"bank_max": 3, "bank_fusion": True, "bank_frames": 2, "latent_feedback": 0.3, "cut_threshold": 0.0}
    changes = [{"bank_frames": 3, "bank_refresh": 2, "bank_strength": 0.6, "latent_feedback": 0.1},
               {"bank_frames": 0},  # bank off
               {"bank_frames": 2, "fusion_strength": 0.7, "fusion_threshold": 0.5},  # back on, with fusion
               {"bank_frames": 2, "fusion_strength": 0.0}]  # fusion off, the bank stays on

    def drive(pipe: StreamPipeline) -> list[torch.Tensor]:
        outs = play(pipe, pan(3))
        for k, change in enumerate(changes):
            pipe.apply_live("temporal", LiveParams(t_index_list=[20, 40], cut_threshold=0.0, **change))
            outs += play(pipe, pan(2, start=3 + 2 * k))
        pipe.temporal.forget()
        return outs + play(pipe, pan(2, start=20))

    expected = drive(make_pipeline(bank_parts, **fields))
    graphed = make_pipeline(bank_parts, **fields)
    step = graphed.step.use_graphs(EmulatedGraphs())
    graphed.warm_up()
    captures = step.captures
    got = drive(graphed)
    assert step.captures == captures  # nothing captured on air, whatever changed live
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.compile
def test_compiled_step_equals_eager_with_bank_and_fusion_on_and_live_changes_never_recompile(bank_parts):
    from torch._dynamo.utils import counters

    fields = {"bank_max": 2, "bank_fusion": True, "bank_frames": 1, "fusion_strength": 0.8, "fusion_threshold": 0.5,
              "latent_feedback": 0.3, "cut_threshold": 0.0}

    def drive(pipe: StreamPipeline) -> list[torch.Tensor]:
        outs = play(pipe, pan(3))
        pipe.apply_live("temporal", LiveParams(bank_frames=2, bank_refresh=2, bank_strength=0.5, fusion_strength=0.4,
                                               fusion_threshold=0.7, latent_feedback=0.0, cut_threshold=0.0))
        return outs + play(pipe, pan(3, start=3))

    expected = drive(make_pipeline(bank_parts, **fields))
    compiled = make_pipeline(bank_parts, backend="compile", **fields)
    before = counters["stats"]["unique_graphs"]
    got = drive(compiled)
    assert compiled.step.compile_error is None
    # One graph per bank mode used (off while priming, fusion after); live changes never recompile.
    assert counters["stats"]["unique_graphs"] - before == 2
    for a, b in zip(expected, got, strict=True):
        assert (a.int() - b.int()).abs().max() <= 1  # inductor may reorder float sums: at most 1 LSB


@pytest.mark.parametrize(("frames", "strength", "fusion", "mode"), [
    (0, 1.0, 0.8, "off"), (2, 0.0, 0.0, "off"), (2, 0.5, 0.0, "bank"), (2, 0.5, 0.3, "fusion"), (1, 0.0, 0.3, "fusion"),
])
def test_the_bank_mode_live_values_ask_for(frames, strength, fusion, mode):
    assert wanted_mode(frames, strength, fusion) == mode


def test_a_bank_mode_the_pipeline_cannot_run_is_refused(bank_parts):
    plain = make_pipeline(bank_parts)
    assert plain.temporal.modes() == ("off",)
    with pytest.raises(ValueError, match="bank mode 'bank': this pipeline has off"):
        plain.temporal.bank_mode(priming=False, mode="bank")
    banked = make_pipeline(bank_parts, bank_max=1, bank_frames=1)
    assert banked.temporal.modes() == ("off", "bank")
    with pytest.raises(ValueError, match="bank mode 'fusion': this pipeline has off, bank"):
        banked.temporal.bank_mode(priming=False, mode="fusion")
    assert banked.temporal.bank_mode(priming=True) == "off" and banked.temporal.bank_mode(priming=False) == "bank"


def test_a_preset_must_allocate_the_bank_it_uses():
    with pytest.raises(ValidationError, match="needs load.bank_max >= 2"):
        Preset.model_validate({"name": "p", "load": {"model": "tiny"}, "live": {"bank_frames": 2}})
    preset = Preset.model_validate({"name": "p", "load": {"model": "tiny", "bank_max": 2}, "live": {"bank_frames": 2}})
    assert preset.live.bank_frames == 2


def test_tensorrt_runs_without_the_bank_and_says_so(caplog):
    parts = load_model("tiny")
    preset = Preset.model_validate({"name": "p", "load": {"model": "tiny", "bank_max": 2}})
    with caplog.at_level(logging.WARNING, logger="streamvj.temporal"):
        temporal = Temporal(parts.unet, preset.load, SimpleNamespace(unet_batch_size=lambda: 2), latent_shape=(4, 8, 8),
                            device=torch.device("cpu"), dtype=torch.float32, backend="tensorrt")
    assert temporal.bank is None and "acceleration: compile" in caplog.text
    assert not any(isinstance(p, BankedSelfAttention) for p in parts.unet.attn_processors.values())


def test_an_sdxl_shaped_model_with_cfg_initialize_banks_every_row():
    parts = load_model("tiny-sdxl")
    pipe = make_pipeline(parts, cfg_type="initialize", negative_prompt="", bank_max=2, bank_frames=2)
    outs = play(pipe, pan(4))
    state = pipe.temporal.bank.state
    assert int(state.filled) == 2 and all(o.shape == (SIZE, SIZE, 4) for o in outs)
    assert all(p.keys.shape[0] == 3 for p in pipe.temporal.bank.processors.values())  # (N + 1) x F rows
