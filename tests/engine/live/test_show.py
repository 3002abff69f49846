from __future__ import annotations

import os
import queue
from pathlib import Path

import numpy as np
import pytest

from engine.config.preset_files import load_preset
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from engine.live.show import Show, build_pipeline

BASE = """
name: {name}
description: test preset
load:
  model: {model}
  width: {size}
  height: {size}
  source: pattern
  sinks: ["null"]
live:
  prompt: "{prompt}"
  t_index_list: [20, 40]
  guidance_scale: {guidance}
"""


def write(folder: Path, name: str, model="tiny", size=64, prompt="a", guidance=1.2) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(BASE.format(name=name, model=model, size=size, prompt=prompt, guidance=guidance))
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
    return Show(tmp_path, preset, "alpha", store, player, FakeControls())


def frame():
    return np.zeros((64, 64, 4), np.uint8)


def test_live_only_switch_applies_on_the_next_frame_without_a_rebuild(show):
    pipeline = show.player.pipeline
    show.on_command("preset/load", ("beta",))
    assert show.preset_name == "beta" and show.player.pipeline is pipeline
    show.player(frame())
    assert float(pipeline.stream.guidance) == 2.5


def test_load_time_switch_builds_in_background_and_swaps_between_frames(show):
    old = show.player.pipeline
    show.on_command("preset/load", ("big",))
    assert show.wait_idle(120)
    assert show.player(frame()).shape == (64, 64, 4)  # the old pipeline plays until the swap
    show.controls.drain()
    assert show.player.pipeline is not old and show.preset_name == "big"
    assert show.player(frame()).shape == (96, 96, 4)
    assert show.state == "running"


def test_failing_build_keeps_the_current_preset_playing(show):
    old = show.player.pipeline
    show.on_command("preset/load", ("broken",))
    assert show.wait_idle(60)
    show.controls.drain()
    assert show.player.pipeline is old and show.preset_name == "alpha"
    assert "failed to build" in show.last_error and "does not exist" in show.last_error
    assert show.player(frame()).shape == (64, 64, 4)


def test_invalid_preset_file_is_reported_and_ignored(show):
    show.on_command("preset/load", ("garbled",))
    assert show.preset_name == "alpha" and "garbled" in show.last_error
    show.on_command("preset/load", ("../../etc/passwd",))
    assert show.preset_name == "alpha" and "preset name" in show.last_error


def test_next_and_prev_cycle_through_the_folder(show):
    show.on_command("preset/next", ())
    assert show.preset_name == "beta"
    show.on_command("preset/prev", ())
    assert show.preset_name == "alpha"


def test_pause_resume_reset_reach_the_runtime(show):
    show.on_command("pause", ())
    assert show.controls.paused
    show.on_command("resume", ())
    assert not show.controls.paused
    show.player(frame())
    show.on_command("reset", ())
    show.controls.drain()
    assert not show.player.pipeline.stream.primed


def test_editing_the_on_air_preset_reloads_it(show):
    assert show.check_for_edits() is False  # first look records the file's state
    path = write(show.presets_dir, "alpha", guidance=3.5)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))
    assert show.check_for_edits() is True
    show.player(frame())
    assert float(show.player.pipeline.stream.guidance) == 3.5
    assert show.check_for_edits() is False


def test_quantised_switch_waits_for_the_next_bar(tmp_path):
    from engine.live.tempo import Tempo

    write(tmp_path, "alpha")
    write(tmp_path, "beta", guidance=2.5)
    preset = load_preset(tmp_path / "alpha.yaml")
    now = [10.0]
    tempo = Tempo(120, clock=lambda: now[0])
    store = ParamStore(preset.live)
    player = LivePlayer(build_pipeline(preset), store)
    scheduled = []
    show = Show(tmp_path, preset, "alpha", store, player, FakeControls(), tempo=tempo, quantum="bar",
                schedule=lambda delay, action: scheduled.append((delay, action)), clock=lambda: now[0])
    show.on_command("preset/load", ("beta",))
    assert show.preset_name == "alpha" and len(scheduled) == 1
    delay, action = scheduled[0]
    assert 0.0 <= delay <= 2.0  # a 4/4 bar at 120 BPM lasts 2 s
    assert tempo.beat_at(now[0] + delay) % 4 == pytest.approx(0.0, abs=1e-6)
    action()
    assert show.preset_name == "beta"

