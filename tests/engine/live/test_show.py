from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.config.preset_files import load_preset
from engine.core.build import build_pipeline
from engine.live.commands import Command
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from engine.live.quantise import Quantiser
from engine.live.show import Show
from engine.live.tempo import Tempo
from engine.realtime.runtime import Runtime
from tests.engine.realtime.runtime_fakes import CollectingSink, CountingSource, wait_until

BASE = """
name: {name}
description: test preset
load:
  model: {model}
  width: {size}
  height: {size}
  device: {device}
  source: pattern
  sinks: ["null"]
live:
  prompt: "{prompt}"
  t_index_list: [20, 40]
  guidance_scale: {guidance}
"""


def write(folder: Path, name: str, model="tiny", size=64, prompt="a", guidance=1.2, device="cpu") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(BASE.format(name=name, model=model, size=size, prompt=prompt, guidance=guidance, device=device))
    return path


class FakeControls:
    """Stands in for the runtime: actions queue up and run when the 'render thread' drains them."""

    def __init__(self):
        self.actions: queue.SimpleQueue = queue.SimpleQueue()
        self.paused = False

    def call_soon(self, fn):
        self.actions.put(fn)

    def drain(self):
        while not self.actions.empty():
            self.actions.get()()

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False


class CountingBuild:
    """build_pipeline, counting the presets it was asked to build."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, preset):
        self.names.append(preset.name)
        return build_pipeline(preset)


@pytest.fixture
def show(tmp_path):
    write(tmp_path, "alpha")
    write(tmp_path, "beta", prompt="b", guidance=2.5)
    write(tmp_path, "big", size=96)
    write(tmp_path, "broken", model="./no/such/model")
    (tmp_path / "garbled.yaml").write_text("load: [unclosed")
    preset = load_preset(tmp_path / "alpha.yaml")
    store = ParamStore(preset.live)
    player = LivePlayer(build_pipeline(preset), store)
    return Show(tmp_path, preset, "alpha", store, player, FakeControls(), build=CountingBuild())


def frame():
    return np.zeros((64, 64, 4), np.uint8)


def test_live_only_switch_applies_on_the_next_frame_without_a_rebuild(show):
    pipeline = show.player.pipeline
    show.on_command(Command.PRESET_LOAD, ("beta",))
    assert show.preset_name == "beta" and show.player.pipeline is pipeline
    show.player(frame())
    assert float(pipeline.stream.guidance) == 2.5


def test_load_time_switch_builds_in_background_and_swaps_between_frames(show):
    old = show.player.pipeline
    show.on_command(Command.PRESET_LOAD, ("big",))
    assert show.wait_idle(120)
    assert show.player(frame()).shape == (64, 64, 4)  # the old pipeline plays until the swap
    show.controls.drain()
    assert show.player.pipeline is not old and show.preset_name == "big"
    assert show.player(frame()).shape == (96, 96, 4)
    assert show.status().state == "running"


def test_the_store_holds_live_choices_to_the_preset_on_air(show, tmp_path):
    """A ControlNet's listed sources and preprocessors go on air with its pipeline, and leave with it."""
    from engine.errors import ConfigError

    text = (tmp_path / "alpha.yaml").read_text().replace("name: alpha", "name: guided").replace(
        "  sinks:", '  controlnets: [{model: random, preprocessor: [canny, passthrough]}]\n  sinks:')
    (tmp_path / "guided.yaml").write_text(text)
    show.on_command(Command.PRESET_LOAD, ("guided",))
    assert show.wait_idle(120)
    show.controls.drain()
    assert show.preset_name == "guided"
    assert show.store.choices["controlnet_0_preprocessor"] == ("canny", "passthrough")
    with pytest.raises(ConfigError, match="not among this preset's choices"):
        show.store.set("controlnet_0_preprocessor", "depth", source="osc")
    show.on_command(Command.PRESET_LOAD, ("alpha",))
    assert show.wait_idle(120)
    show.controls.drain()
    assert show.preset_name == "alpha" and not show.store.choices


def test_a_switch_waiting_to_go_on_air_still_counts_as_building(show):
    """A second rebuild must not start (nor the state read "running") before the first is on air."""
    write(show.presets_dir, "bigger", size=128)
    show.on_command(Command.PRESET_LOAD, ("big",))
    assert show.wait_idle(120)  # built, waiting for the render thread to swap it in
    show.on_command(Command.PRESET_LOAD, ("bigger",))
    assert show.state == "building" and "still building 'big'" in show.last_error
    show.controls.drain()
    assert show.status().state == "running" and show.preset_name == "big"
    assert show.build.names == ["big"]


def test_failing_build_keeps_the_current_preset_playing(show):
    old = show.player.pipeline
    show.on_command(Command.PRESET_LOAD, ("broken",))
    assert show.wait_idle(60)
    show.controls.drain()
    assert show.player.pipeline is old and show.preset_name == "alpha"
    assert "failed to build" in show.last_error and "does not exist" in show.last_error
    assert show.player(frame()).shape == (64, 64, 4)


def test_a_preset_that_does_not_load_is_reported_and_ignored(show):
    for name, reason in [
        ("garbled", "garbled"),
        ("../../etc/passwd", "use 1-64 letters"),
        ("alpha.yaml", "use 1-64 letters"),
        ("nope", "no nope.yaml"),
        ("x" * 60_000, "chars)"),  # quoted short, not 60 KB in the log and the feedback
    ]:
        show.on_command(Command.PRESET_LOAD, (name,))
        status = show.status()
        assert status.preset == "alpha" and reason in status.error and len(status.error) < 1000, name


def test_next_and_prev_cycle_through_the_folder(show):
    show.on_command(Command.PRESET_NEXT, ())
    assert show.preset_name == "beta"
    show.on_command(Command.PRESET_PREV, ())
    assert show.preset_name == "alpha"


def test_prev_skips_presets_that_fail_to_validate_or_build(show, caplog):
    """alpha -> prev: garbled (invalid) and broken (fails to build) are skipped, big goes on air."""
    with caplog.at_level(logging.WARNING, logger="streamvj.show"):
        show.on_command(Command.PRESET_PREV, ())
        assert show.wait_idle(120)
    show.controls.drain()
    assert show.preset_name == "big" and show.last_error == ""
    assert show.build.names == ["broken", "big"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "garbled" in skipped[-1] and "broken (failed to build" in skipped[-1]

    # Back to alpha, and again: broken is known not to build (its file has not changed) and is not rebuilt.
    show.on_command(Command.PRESET_LOAD, ("alpha",))
    assert show.wait_idle(120)
    show.controls.drain()
    show.on_command(Command.PRESET_PREV, ())
    assert show.wait_idle(120)
    show.controls.drain()
    assert show.preset_name == "big" and show.build.names == ["broken", "big", "alpha", "big"]


def test_next_with_nothing_else_that_loads_stays_and_says_why(tmp_path):
    write(tmp_path, "alpha")
    (tmp_path / "garbled.yaml").write_text("load: [unclosed")
    preset = load_preset(tmp_path / "alpha.yaml")
    store = ParamStore(preset.live)
    show = Show(tmp_path, preset, "alpha", store, LivePlayer(build_pipeline(preset), store), FakeControls())
    for _ in range(3):
        show.on_command(Command.PRESET_NEXT, ())
        assert show.preset_name == "alpha"
        assert "no next preset loads" in show.last_error and "skipped garbled" in show.last_error


def test_pause_and_resume_reach_the_runtime(show):
    show.on_command(Command.PAUSE, ())
    assert show.controls.paused
    show.on_command(Command.RESUME, ())
    assert not show.controls.paused


def test_reset_restores_the_presets_live_values_and_reprimes(show):
    show.store.set_smoothing("guidance_scale", 5.0)
    show.store.set("guidance_scale", 7.5)
    show.store.set("prompt", "something else")
    show.player(frame())
    assert show.player.pipeline.primed
    show.on_command(Command.RESET, ())
    # The on-air preset's values at once (a cut: no slew from 7.5), through the ParamStore.
    assert show.store.get("guidance_scale") == 1.2 and show.store.snapshot().guidance_scale == 1.2
    assert show.store.get("prompt") == "a" and show.store.get("smoothing") == {}
    show.controls.drain()
    assert not show.player.pipeline.primed
    show.player(frame())
    assert float(show.player.pipeline.stream.guidance) == pytest.approx(1.2)


def test_reset_through_the_real_runtime(tmp_path):
    """/reset on a running engine: the frame step reads the preset's value again, and the batch re-primes."""
    preset = load_preset(write(tmp_path, "alpha", guidance=1.2))
    store = ParamStore(preset.live)
    pipeline = build_pipeline(preset)
    resets = []
    reset = pipeline.reset
    pipeline.reset = lambda: (resets.append(threading.current_thread().name), reset())[1]
    player = LivePlayer(pipeline, store)
    runtime = Runtime(player, CountingSource(), [CollectingSink()])
    show = Show(tmp_path, preset, "alpha", store, player, runtime)
    runtime.start()
    try:
        store.set("guidance_scale", 6.0, source="osc")
        wait_until(lambda: float(pipeline.stream.guidance) == 6.0, 60, "the OSC value in the frame step")
        show.on_command(Command.RESET, ())
        rendered = runtime.frames_rendered
        wait_until(lambda: runtime.frames_rendered > rendered + 1, 60, "frames after the reset")
        assert float(pipeline.stream.guidance) == pytest.approx(1.2)
        assert resets == ["streamvj-render"] and pipeline.primed
    finally:
        runtime.stop()


def test_midi_learn_is_refused_with_a_reason(show):
    show.on_command(Command.MIDI_LEARN, ("fx_hue",))
    assert "no MIDI input is open" in show.last_error
    learned = []

    def learn(param):
        if param == "prompt":
            from engine.errors import ConfigError

            raise ConfigError("midi learn: cannot map 'prompt'")
        learned.append(param)

    show.midi_learn = learn
    show.on_command(Command.MIDI_LEARN, ("prompt",))
    assert "cannot map 'prompt'" in show.last_error
    show.on_command(Command.MIDI_LEARN, ("fx_hue",))
    assert learned == ["fx_hue"]


def test_a_device_spelled_differently_but_resolving_the_same_needs_no_rebuild(show):
    # The engine runs on the CPU (alpha says device: cpu); "auto" resolves to the CPU here.
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA on this machine")
    write(show.presets_dir, "auto", device="auto", guidance=3.0)
    pipeline = show.player.pipeline
    show.on_command(Command.PRESET_LOAD, ("auto",))
    assert show.preset_name == "auto" and show.player.pipeline is pipeline and show.build.names == []
    show.player(frame())
    assert float(pipeline.stream.guidance) == 3.0


def test_quantised_switch_waits_for_the_next_bar(tmp_path):
    write(tmp_path, "alpha")
    write(tmp_path, "beta", guidance=2.5)
    preset = load_preset(tmp_path / "alpha.yaml")
    now = [10.0]
    tempo = Tempo(120, clock=lambda: now[0])
    store = ParamStore(preset.live)
    player = LivePlayer(build_pipeline(preset), store)
    scheduled = []
    quantiser = Quantiser(tempo, "bar", schedule=lambda delay, action: scheduled.append((delay, action)),
                          clock=lambda: now[0])
    show = Show(tmp_path, preset, "alpha", store, player, FakeControls(), on_the_beat=quantiser)
    show.on_command(Command.PRESET_LOAD, ("beta",))
    assert show.preset_name == "alpha" and len(scheduled) == 1
    delay, action = scheduled[0]
    assert 0.0 <= delay <= 2.0  # a 4/4 bar at 120 BPM lasts 2 s
    assert tempo.beat_at(now[0] + delay) % 4 == pytest.approx(0.0, abs=1e-6)
    action()
    assert show.preset_name == "beta"
