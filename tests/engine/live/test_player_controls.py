"""The LivePlayer feeds ControlNets' own sources into the pipeline on air, before each frame."""

from __future__ import annotations

import numpy as np

from engine.config.schema import ControlNetSpec, LiveParams, LoadSettings
from engine.core.pipeline import StreamPipeline
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from engine.models.controlnet import ControlNetParts, build_random_controlnet
from engine.models.load import load_model
from engine.realtime.control_source import ControlFeed
from tests.engine.realtime.test_control_source import MapSource
from tests.waiting import wait_for


def test_a_map_from_the_controlnets_own_source_reaches_the_pipeline_before_the_frame():
    parts = load_model("tiny-random")
    load = LoadSettings(model="tiny-random", width=64, height=64,
                        controlnets=[ControlNetSpec(model="random", source="shm:streamvj_depth")])
    live = LiveParams(t_index_list=[20, 40], controlnet_0_source="shm:streamvj_depth")  # as a Preset fills it in
    pipeline = StreamPipeline(parts, load, live, controlnets=[ControlNetParts(build_random_controlnet(parts.unet))],
                              fit_input=True)
    source = MapSource()
    feed = ControlFeed(lambda spec: source)
    player = LivePlayer(pipeline, ParamStore(live), controls=feed)
    try:
        source.put(77, shape=(32, 32, 4))  # any size: fitted like the input
        wait_for(lambda: feed.sources[(0, "shm:streamvj_depth")].received == 1, "the map to arrive")
        player(np.zeros((64, 64, 4), np.uint8))
        assert int(pipeline.controls.own_u8[(0, "shm:streamvj_depth")][0, 10, 10, 0]) == 77
    finally:
        feed.stop()
