"""ControlNet maps: the map step apart from the frame step, live source and preprocessor choices among the
preset's (switched without a compile or capture, reaching the frames in flight), refused choices, maps that
travel with their frames, own sources' maps through the upload path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.config.schema import ControlNetSpec, LiveParams, LoadSettings, Preset
from engine.core.control_maps import ControlMaps, rgba_u8_to_rgb01
from engine.core.pipeline import StreamPipeline
from engine.errors import ConfigError
from engine.live.applier import LiveApplier
from engine.models.controlnet import ControlNetParts, build_random_controlnet, load_controlnets
from engine.models.load import load_model
from tests.engine.accel.graph_emulator import EmulatedGraphs
from tests.engine.core.pipelines import SIZE

SWITCHABLE = {"model": "random", "preprocessor": ["canny", "passthrough"]}
SOURCES = {"model": "random", "source": ["shm:a", "shm:b", "shm:c"], "preprocessor": "passthrough"}


@pytest.fixture(scope="module")
def parts():
    return load_model("tiny-random")


def make(parts, controlnets, t_index_list=(10, 30, 45), backend="none", **live) -> StreamPipeline:
    specs = [ControlNetSpec(**c) for c in controlnets]
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, cfg_type="self", controlnets=specs)
    loaded = [ControlNetParts(build_random_controlnet(parts.unet, seed=k)) for k in range(len(specs))]
    return StreamPipeline(parts, load, LiveParams(t_index_list=list(t_index_list), **live), controlnets=loaded,
                          backend=backend)


def frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((SIZE, SIZE, 4), np.uint8)
    img[SIZE // 4:3 * SIZE // 4, SIZE // 4:3 * SIZE // 4] = rng.integers(0, 256, 4)  # edges for canny
    return img + rng.integers(0, 40, img.shape, dtype=np.uint8)


def solid(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 4), value, np.uint8)


def rgb01(rgba: np.ndarray) -> torch.Tensor:
    return rgba_u8_to_rgb01(torch.from_numpy(rgba)[None], torch.float32)


def graphed(pipe: StreamPipeline) -> tuple:
    """Both steps under the CUDA graph emulator, warmed up as before a show; their capture counters."""
    frame_step = pipe.step.use_graphs(EmulatedGraphs())
    map_step = pipe.controls.step.use_graphs(EmulatedGraphs())
    pipe.warm_up()
    return frame_step, map_step


def test_a_live_preprocessor_switch_replays_a_warmed_map_step_and_reaches_the_frames_in_flight(parts):
    pipe = make(parts, [SWITCHABLE])
    frame_step, map_step = graphed(pipe)
    assert map_step.captures == 2  # (input, canny) and (input, passthrough): every listed choice
    captures = (frame_step.captures, map_step.captures)
    pipe(frame(0))
    edges = pipe.controls.newest[0]
    assert set(edges.unique().tolist()) <= {0.0, 1.0} and edges.sum() > 0  # canny
    pipe.apply_live("control_choice", LiveParams(controlnet_0_preprocessor="passthrough"))
    pipe(frame(1))
    assert torch.equal(pipe.controls.newest[0], rgb01(frame(1)))  # the next frame's map is the new one
    carried = pipe.stream.control.map_buf[0]  # slots 1 and 2: the frames in flight take it too
    assert torch.equal(carried, rgb01(frame(1)).expand(2, -1, -1, -1))
    assert (frame_step.captures, map_step.captures) == captures  # nothing compiled or captured on air


def test_a_live_source_switch_shows_that_sources_newest_map_and_black_before_its_first(parts):
    pipe = make(parts, [SOURCES])
    frame_step, map_step = graphed(pipe)
    captures = (frame_step.captures, map_step.captures)
    pipe.set_control_frame(0, solid(50), "shm:a")
    pipe.set_control_frame(0, solid(150), "shm:b")
    pipe(frame(0))
    assert torch.equal(pipe.controls.newest[0], rgb01(solid(50)))  # the first listed: shm:a
    pipe.apply_live("control_choice", LiveParams(controlnet_0_source="shm:b"))
    assert pipe.controls.fed_source(0) == "shm:b"
    pipe(frame(1))
    assert torch.equal(pipe.controls.newest[0], rgb01(solid(150)))
    assert torch.equal(pipe.stream.control.map_buf[0], rgb01(solid(150)).expand(2, -1, -1, -1))
    pipe.apply_live("control_choice", LiveParams(controlnet_0_source="shm:c"))  # no map from it yet
    pipe(frame(2))
    assert float(pipe.controls.newest[0].abs().sum()) == 0.0
    assert (frame_step.captures, map_step.captures) == captures


def test_switches_under_graphs_equal_the_same_switches_eager(parts):
    def drive(pipe):
        outs = [pipe(frame(0)).clone()]
        pipe.apply_live("control_choice", LiveParams(controlnet_0_preprocessor="passthrough"))
        outs.append(pipe(frame(1)).clone())
        pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=False))
        outs.append(pipe(frame(2)).clone())
        pipe.apply_live("controlnet", LiveParams(controlnet_0_enabled=True, controlnet_0_scale=0.5))
        pipe.apply_live("control_choice", LiveParams(controlnet_0_preprocessor="canny"))
        outs.append(pipe(frame(3)).clone())
        return outs

    expected = drive(make(parts, [SWITCHABLE]))
    pipe = make(parts, [SWITCHABLE])
    graphed(pipe)
    for e, g in zip(expected, drive(pipe), strict=True):
        assert torch.equal(e, g)
    assert not torch.equal(expected[0], expected[1])


def test_each_slot_is_guided_by_the_map_of_the_frame_it_holds(parts):
    """What makes the batch equal each frame's N steps one after another (tests/engine/core/test_controlnet.py):
    the map step makes the newest frame's map once, and the carried maps move on with their frames."""
    pipe = make(parts, [{"model": "random", "source": "shm:a", "preprocessor": "passthrough"}])
    seen = []
    controlnet = pipe.stream.control.calls[0]

    def recording(x, t, hidden, maps, pooled, time_ids):
        seen.append([round(v * 255) for v in maps[:, 0, 0, 0].tolist()])
        return controlnet(x, t, hidden, maps, pooled, time_ids)

    pipe.stream.control.calls[0] = recording
    for value in (40, 120, 200):
        pipe.set_control_frame(0, solid(value))
        pipe(frame(value))
    # Priming: 3 steps on the first frame fill the slots one by one; then each frame's map enters slot 0.
    assert seen == [[40, 0, 0], [40, 40, 0], [40, 40, 40], [120, 40, 40], [200, 120, 40]]


def test_a_choice_the_preset_does_not_list_is_refused_once_and_the_old_one_stays(parts, caplog):
    pipe = make(parts, [SWITCHABLE, SOURCES])
    wanted = {"controlnet_0_preprocessor": "depth", "controlnet_1_source": "shm:b", "controlnet_1_preprocessor": "canny"}
    with pytest.raises(ConfigError) as refused:
        pipe.apply_live("control_choice", LiveParams(**wanted))
    assert str(refused.value) == (
        "controlnet_0_preprocessor 'depth' is not among the preset's choices (canny, passthrough); ControlNet 0 "
        "keeps canny; controlnet_1_preprocessor 'canny' is not among the preset's choices (passthrough); "
        "ControlNet 1 keeps passthrough")
    assert pipe.controls.chosen == [("input", "canny"), ("shm:b", "passthrough")]  # the valid source applied
    pipe = make(parts, [SWITCHABLE, SOURCES])
    applier = LiveApplier(pipe)
    with caplog.at_level(logging.WARNING, logger="streamvj.live"):
        for scale in (0.5, 0.6):  # a scale changing every frame neither retries nor re-logs the refused choice
            applier.apply(LiveParams(t_index_list=[10, 30, 45], controlnet_0_scale=scale, **wanted))
        # The refused values stay in the store: a later, valid choice change does not say them again.
        applier.apply(LiveParams(t_index_list=[10, 30, 45], controlnet_0_scale=0.6, **wanted,
                                 controlnet_0_source="input"))
        applier.apply(LiveParams(t_index_list=[10, 30, 45], controlnet_0_scale=0.6,
                                 **{**wanted, "controlnet_1_source": "shm:a"}))
    assert caplog.text.count("live control_choice change not applied") == 1, caplog.text
    assert float(pipe.stream.control.scale_rows[0][0]) == pytest.approx(0.6)
    assert pipe.controls.chosen == [("input", "canny"), ("shm:a", "passthrough")]
    with pytest.raises(ConfigError, match="'depth' is not among"):  # sent again after a valid one: said again
        pipe.apply_live("control_choice", LiveParams(controlnet_0_preprocessor="passthrough"))
        pipe.apply_live("control_choice", LiveParams(controlnet_0_preprocessor="depth"))


def test_a_pipeline_built_with_a_choice_its_preset_does_not_list_is_refused(parts):
    with pytest.raises(ConfigError, match="controlnet_0_preprocessor 'depth' is not among the preset's choices"):
        make(parts, [SWITCHABLE], controlnet_0_preprocessor="depth")
    started = make(parts, [SWITCHABLE], controlnet_0_preprocessor="passthrough")  # a listed one, not the first
    assert started.controls.chosen == [("input", "passthrough")] and not started.controls.refill_due


def test_a_source_sent_over_osc_is_only_ever_one_the_preset_lists(parts):
    """`image:`/`video:` name files: a spec that arrives live picks a listed source, never opens one."""
    pipe = make(parts, [SOURCES])
    for spec in ("image:/etc/passwd", "video:clip.mp4", "shm:other"):
        with pytest.raises(ConfigError, match=f"controlnet_0_source '{spec}' is not among the preset's choices"):
            pipe.apply_live("control_choice", LiveParams(controlnet_0_source=spec))
        assert pipe.controls.fed_source(0) == "shm:a"
    with pytest.raises(ConfigError, match="no source 'image:/etc/passwd' in the preset"):
        pipe.set_control_frame(0, solid(1), "image:/etc/passwd")


def test_presets_list_choices_or_give_one_value():
    def preset(controlnet, live=None):
        return Preset.model_validate({"name": "p", "load": {"model": "tiny", "controlnets": [controlnet]},
                                      "live": live or {}})

    single = preset({"model": "random", "source": "shm:depth", "preprocessor": "canny"})
    assert single.load.controlnets[0].sources == ("shm:depth",) and single.load.controlnets[0].preprocessors == ("canny",)
    assert (single.live.controlnet_0_source, single.live.controlnet_0_preprocessor) == ("shm:depth", "canny")
    listed = preset({"model": "random", "source": ["input", "shm:depth"], "preprocessor": ["depth", "canny"]},
                    {"controlnet_0_preprocessor": "canny"})
    assert (listed.live.controlnet_0_source, listed.live.controlnet_0_preprocessor) == ("input", "canny")
    assert listed.live.controlnet_1_preprocessor == "passthrough"  # a slot the preset does not use: no effect
    with pytest.raises(ValidationError, match=r"live.controlnet_0_source 'shm:pose' is not among "
                                              r"load.controlnets\[0\].source's choices \(input, shm:depth\)"):
        preset({"model": "random", "source": ["input", "shm:depth"]}, {"controlnet_0_source": "shm:pose"})
    with pytest.raises(ValidationError, match="preprocessor lists canny, canny: each choice once"):
        preset({"model": "random", "preprocessor": ["canny", "canny"]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        preset({"model": "random", "source": []})
    with pytest.raises(ValidationError, match="txt2img has no input frame"):
        Preset.model_validate({"name": "p", "load": {"model": "tiny", "mode": "txt2img", "controlnets": [
            {"model": "random", "source": ["shm:depth", "input"]}]}})


def test_a_depth_network_is_loaded_only_when_depth_is_among_the_choices(parts):
    specs = [ControlNetSpec(model="random", preprocessor=["canny", "depth"], depth_model="random"),
             ControlNetSpec(model="random", preprocessor=["canny", "passthrough"])]
    loaded = load_controlnets(specs, parts.unet, parts.family)
    assert loaded[0].depth is not None and loaded[1].depth is None


class Upload:
    """DeviceUpload's seam (engine/accel/device_io.py): copy to the device, consume on compute, return the event."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, ...]] = []

    def upload(self, frames, consume):
        self.frames.append(tuple(frames.shape))
        consume(frames.clone())  # a staging slot on the device
        return f"event {len(self.frames)}"


def test_own_source_maps_go_through_the_upload_path(parts):
    uploads: list[Upload] = []

    def new_upload():
        uploads.append(Upload())
        return uploads[-1]

    input_u8 = torch.zeros(1, SIZE, SIZE, 4, dtype=torch.uint8)
    specs = [ControlNetSpec(**SOURCES)]
    maps = ControlMaps(specs, [ControlNetParts(None)], LiveParams(), input_u8=input_u8, dtype=torch.float32,
                       new_upload=new_upload)
    assert maps.set_frame(0, solid(9), "shm:b") == "event 1"
    wide = np.zeros((30, 90, 4), np.uint8)
    wide[:, 30:60] = 200
    assert maps.set_frame(0, wide) == "event 2"  # another size: fitted on the device, from the staging slot
    assert len(uploads) == 1 and uploads[0].frames == [(1, SIZE, SIZE, 4), (1, 30, 90, 4)]
    assert int(maps.own_u8[(0, "shm:b")][0, 0, 0, 0]) == 9
    assert int(maps.own_u8[(0, "shm:a")][0, SIZE // 2, SIZE // 2, 0]) == 200


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_cuda_own_source_maps_upload_on_their_own_stream(parts):
    from engine.accel.device_io import DeviceUpload

    input_u8 = torch.zeros(1, SIZE, SIZE, 4, dtype=torch.uint8, device="cuda")
    maps = ControlMaps([ControlNetSpec(**SOURCES)], [ControlNetParts(None)], LiveParams(), input_u8=input_u8,
                       dtype=torch.float16)
    host = torch.full((SIZE, SIZE, 4), 77, dtype=torch.uint8).pin_memory()
    event = maps.set_frame(0, host)
    assert isinstance(maps._uploads[0], DeviceUpload) and event is not None
    event.synchronize()
    torch.cuda.current_stream().synchronize()
    assert int(maps.own_u8[(0, "shm:a")][0, 5, 5, 0]) == 77


@pytest.mark.compile
def test_the_frame_step_with_a_controlnet_compiled_equals_eager(parts):
    """torch.compile of the frame step with a ControlNet, and of its map step: two graphs, the same pictures
    (within 1 LSB: inductor may reorder float sums), and a live scale change recompiles nothing."""
    from torch._dynamo.utils import counters

    spec = [{"model": "random", "preprocessor": "passthrough"}]

    def drive(pipe):
        outs = [pipe(frame(i)).clone() for i in range(2)]
        pipe.apply_live("controlnet", LiveParams(controlnet_0_scale=0.4))
        return outs + [pipe(frame(i)).clone() for i in range(2, 4)]

    expected = drive(make(parts, spec, t_index_list=(20, 40)))
    compiled = make(parts, spec, t_index_list=(20, 40), backend="compile")
    before = counters["stats"]["unique_graphs"]
    got = drive(compiled)
    assert compiled.step.compile_error is None and compiled.controls.step.compile_error is None
    assert counters["stats"]["unique_graphs"] - before == 2  # the frame step and the map step, once each
    for e, g in zip(expected, got, strict=True):
        assert (e.int() - g.int()).abs().max() <= 1
    assert not torch.equal(expected[1], expected[3])


def test_warm_up_runs_the_map_step_of_every_listed_choice_even_eager(parts):
    """So no switch meets a first run on air (a compile, a capture, or a library's lazy setup)."""
    from engine.models.depth import build_random_depth_model

    depth = build_random_depth_model().eval().requires_grad_(False)
    ran = []
    depth.register_forward_hook(lambda *args: ran.append(1))
    spec = ControlNetSpec(model="random", source=["input", "shm:a"], preprocessor=["canny", "depth"],
                          depth_resolution=56)
    load = LoadSettings(model="tiny-random", width=SIZE, height=SIZE, controlnets=[spec])
    pipe = StreamPipeline(parts, load, LiveParams(t_index_list=[20, 40]),
                          controlnets=[ControlNetParts(build_random_controlnet(parts.unet), depth)])
    pipe.warm_up()
    assert len(ran) == 2  # depth on the input and on shm:a; the frame steps' own runs use canny, the first
