from __future__ import annotations

import numpy as np

from engine.config.schema import LiveParams
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from tests.engine.core.pipelines import make_pipeline


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


def test_swap_puts_a_new_pipeline_on_air(tiny_parts):
    store = ParamStore(LiveParams(t_index_list=[20, 40]))
    small = make_pipeline(tiny_parts, fit_input=True)
    big = make_pipeline(tiny_parts, width=96, height=96, fit_input=True)
    player = LivePlayer(small, store)
    frame = np.zeros((64, 64, 4), np.uint8)
    assert player(frame).shape == (64, 64, 4)
    player.swap(big)
    assert player(frame).shape == (96, 96, 4)
