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


def test_a_live_source_switch_feeds_the_new_sources_map_before_the_next_frame():
    """OSC -> store -> the frame's snapshot picks the source -> the feed uploads that source's newest map ->
    the map step reads it; the source switched away from keeps running, nothing is opened."""
    from engine.config.schema import Preset

    parts = load_model("tiny-random")
    preset = Preset.model_validate({"name": "p", "load": {
        "model": "tiny-random", "width": 64, "height": 64,
        "controlnets": [{"model": "random", "source": ["shm:a", "shm:b"], "preprocessor": "passthrough"}]},
        "live": {"t_index_list": [20, 40]}})
    pipeline = StreamPipeline(parts, preset.load, preset.live,
                              controlnets=[ControlNetParts(build_random_controlnet(parts.unet))], fit_input=True)
    opened: dict[str, MapSource] = {}

    def open_source(spec):
        opened[spec] = MapSource()
        return opened[spec]

    feed = ControlFeed(open_source)
    store = ParamStore(preset.live)
    player = LivePlayer(pipeline, store, controls=feed)
    try:
        opened["shm:a"].put(30)
        opened["shm:b"].put(90)
        wait_for(lambda: all(s.received == 1 for s in feed.sources.values()), "both maps")
        player(np.zeros((64, 64, 4), np.uint8))
        assert round(float(pipeline.controls.newest[0][0, 0, 5, 5]) * 255) == 30
        store.set("controlnet_0_source", "shm:b", source="osc")
        player(np.zeros((64, 64, 4), np.uint8))
        assert round(float(pipeline.controls.newest[0][0, 0, 5, 5]) * 255) == 90
        assert sorted(opened) == ["shm:a", "shm:b"] and not opened["shm:a"].closed
    finally:
        feed.stop()
