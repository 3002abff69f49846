from __future__ import annotations

import threading

import numpy as np

from engine.config.schema import LiveParams
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from tests.engine.core.pipelines import make_pipeline
from tests.engine.realtime.runtime_fakes import CountingSource, start, wait_until


class ShapeSink:
    """Keeps the shape of every frame it is sent."""

    name = "shapes"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, rgba_u8: np.ndarray) -> None:
        self.shapes.append(rgba_u8.shape)


def test_player_fits_frames_and_applies_params_on_the_next_frame(tiny_parts):
    pipe = make_pipeline(tiny_parts, fit_input=True)
    now = [0.0]
    store = ParamStore(LiveParams(t_index_list=[20, 40]), clock=lambda: now[0])
    player = LivePlayer(pipe, store, clock=lambda: now[0])
    frame = np.random.default_rng(0).integers(0, 256, (120, 200, 4), dtype=np.uint8)
    first = player(frame).clone()
    assert first.shape == (64, 64, 4)
    store.set("guidance_scale", 4.0)
    second = player(frame)
    assert float(pipe.stream.guidance) == 4.0
    assert not np.array_equal(first.numpy(), second.numpy())


def test_params_reach_the_pipeline_on_the_render_thread_and_are_timed_apart_from_the_model(runtimes, tiny_parts):
    pipe = make_pipeline(tiny_parts, fit_input=True)
    store = ParamStore(LiveParams(t_index_list=[20, 40]))
    applied_on: list[str] = []
    set_guidance = pipe.set_guidance

    def recording(guidance_scale, delta=None):
        applied_on.append(threading.current_thread().name)
        set_guidance(guidance_scale, delta)

    pipe.set_guidance = recording
    rt = start(runtimes, LivePlayer(pipe, store), CountingSource(), [ShapeSink()])
    wait_until(lambda: rt.frames_rendered >= 3, timeout=60, what="frames")
    store.set("guidance_scale", 4.0)
    wait_until(lambda: float(pipe.stream.guidance) == 4.0, timeout=60, what="the new guidance")
    assert applied_on[-1] == "streamvj-render"
    stages = rt.stats()["stages"]
    assert stages["params"]["n"] >= 3 and stages["preprocess"]["n"] >= 3 and stages["model"]["n"] >= 3


def test_swap_puts_a_new_pipeline_on_air(tiny_parts):
    store = ParamStore(LiveParams(t_index_list=[20, 40]))
    small = make_pipeline(tiny_parts, fit_input=True)
    big = make_pipeline(tiny_parts, width=96, height=96, fit_input=True)
    player = LivePlayer(small, store)
    frame = np.zeros((64, 64, 4), np.uint8)
    assert player(frame).shape == (64, 64, 4)
    player.swap(big)
    assert player(frame).shape == (96, 96, 4)


def test_a_swap_through_the_runtime_happens_between_two_frames(runtimes, tiny_parts):
    store = ParamStore(LiveParams(t_index_list=[20, 40]))
    small = make_pipeline(tiny_parts, fit_input=True)
    big = make_pipeline(tiny_parts, width=96, height=96, fit_input=True)
    player, sink = LivePlayer(small, store), ShapeSink()
    rt = start(runtimes, player, CountingSource(), [sink])
    wait_until(lambda: len(sink.shapes) >= 2, timeout=60, what="frames from the first pipeline")
    rt.call_soon(lambda: player.swap(big)).result(timeout=60)
    wait_until(lambda: (96, 96, 4) in sink.shapes, timeout=60, what="frames from the new pipeline")
    first_big = sink.shapes.index((96, 96, 4))
    assert set(sink.shapes[:first_big]) == {(64, 64, 4)} and (64, 64, 4) not in sink.shapes[first_big:]
    assert rt.stats()["render_errors"] == 0 and big.counters.frames_out >= 1


PRESET = """
name: {name}
load:
  model: tiny
  width: 64
  height: 64
  device: cpu
  mode: {mode}
  cfg_type: {cfg}
  sinks: ["null"]
live:
  t_index_list: [20, 40]
"""


class QuietSource(CountingSource):
    """Frames only while `flowing` is set, like a VJ's input that is not connected yet."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = threading.Event()

    def read_latest(self):
        return super().read_latest() if self.flowing.is_set() else None


def test_a_show_switching_txt2img_img2img_txt2img_keeps_rendering(runtimes, tmp_path):
    """The runtime owns its source whatever is on air: txt2img renders without waiting for input
    (none arrives here), img2img renders from the input as soon as it is on air, and back."""
    from engine.config.preset_files import load_preset
    from engine.core.build import build_pipeline
    from engine.live.show import Show

    for name, mode, cfg in (("dream", "txt2img", "none"), ("look", "img2img", "self")):
        (tmp_path / f"{name}.yaml").write_text(PRESET.format(name=name, mode=mode, cfg=cfg))
    preset = load_preset(tmp_path / "dream.yaml")
    store = ParamStore(preset.live)
    player, source, sink = LivePlayer(build_pipeline(preset), store), QuietSource(), ShapeSink()
    rt = start(runtimes, player, source, [sink], target_fps=30)
    show = Show(tmp_path, preset, "dream", store, player, rt)

    def renders_on(name: str, needs_input: bool) -> None:
        wait_until(lambda: show.preset_name == name, timeout=120, what=f"{name} on air")
        assert player.needs_input is needs_input
        rendered, received = rt.frames_rendered, rt.frames_received
        wait_until(lambda: rt.frames_rendered >= rendered + 3, timeout=60, what=f"frames from {name}")
        assert (rt.frames_received > received) is needs_input  # img2img rendered from the input

    renders_on("dream", needs_input=False)
    source.flowing.set()
    show.switch("look")
    renders_on("look", needs_input=True)
    source.flowing.clear()
    show.switch("dream")
    renders_on("dream", needs_input=False)
    assert rt.stats()["render_errors"] == 0 and rt.stats()["error"] == "" and show.last_error == ""
