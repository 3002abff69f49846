"""ControlNets' own sources: latest wins, the last map holds when a source stops, staleness is said,
a failing or vanished source never stops the show, preset switches open and close sources."""

from __future__ import annotations

import logging
import threading

import numpy as np

from engine.config.schema import ControlNetSpec
from engine.realtime.control_source import ControlFeed, ControlSource
from tests.fake_clock import FakeClock
from tests.waiting import wait_for


class MapSource:
    """Hands out the maps put into it, once each; can be made to raise."""

    name = "maps"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[np.ndarray] = []
        self.raising: Exception | None = None
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def put(self, value: int, shape=(8, 8, 4)) -> None:
        with self.lock:
            self.pending.append(np.full(shape, value, np.uint8))

    def read_latest(self):
        with self.lock:
            if self.raising is not None:
                raise self.raising
            if not self.pending:
                return None
            latest, self.pending = self.pending[-1], []  # latest wins
            return latest


class RecordingPipeline:
    def __init__(self) -> None:
        self.maps: list[tuple[int, int]] = []

    def set_control_frame(self, k: int, rgba) -> None:
        self.maps.append((k, int(rgba[0, 0, 0])))


def test_the_newest_map_is_taken_once_and_the_last_holds():
    source = MapSource()
    source.put(10)
    source.put(20)  # both waiting before the first read
    control = ControlSource(1, "shm:depth", source).start()
    try:
        wait_for(lambda: control.received == 1, "a map")
        taken = control.take()
        assert int(taken[0, 0, 0]) == 20  # latest wins
        assert control.take() is None  # nothing new: the pipeline keeps the map it has
    finally:
        control.stop()
    assert source.opened and source.closed


def test_a_silent_source_is_reported_stale_once_and_back_once(caplog):
    clock, source = FakeClock(), MapSource()
    control = ControlSource(0, "spout:TDDepth", source, clock=clock, stale_s=2.0).start()
    try:
        source.put(1)
        wait_for(lambda: control.received == 1, "the first map")
        assert not control.check_stale()
        clock.t += 2.5
        with caplog.at_level(logging.WARNING, logger="streamvj.control"):
            assert control.check_stale() and control.check_stale()
        assert [r.getMessage() for r in caplog.records].count(
            "control source spout:TDDepth (ControlNet 0) sent nothing for 2.5 s: holding its last map") == 1
        assert control.status()["stale"] is True
        source.put(2)
        wait_for(lambda: control.received == 2, "the second map")
        assert not control.check_stale()
    finally:
        control.stop()


def test_a_raising_source_is_retried_and_its_last_map_holds(caplog):
    source = MapSource()
    control = ControlSource(0, "ndi:Kinect", source).start()
    feed_pipeline = RecordingPipeline()
    try:
        source.put(7)
        wait_for(lambda: control.received == 1, "a map")
        source.raising = OSError("peer vanished")
        with caplog.at_level(logging.WARNING, logger="streamvj.control"):
            wait_for(lambda: control.errors >= 1, "the error to be counted")
        assert "ndi:Kinect (ControlNet 0) failed: OSError: peer vanished; holding its last map" in caplog.text
        feed = ControlFeed(lambda spec: source)
        feed.sources[0] = control
        feed.feed(feed_pipeline)
        assert feed_pipeline.maps == [(0, 7)]  # the map that came before the failure
        source.raising = None
        source.put(8)
        wait_for(lambda: control.received == 2, "maps again after the failure")
    finally:
        control.stop()


def test_the_feed_follows_the_preset_on_air():
    opened: dict[str, MapSource] = {}

    def open_source(spec):
        opened[spec] = MapSource()
        return opened[spec]

    feed = ControlFeed(open_source)
    try:
        feed.follow([ControlNetSpec(model="random"), ControlNetSpec(model="random", source="shm:depth")])
        assert list(feed.sources) == [1] and list(opened) == ["shm:depth"]  # "input" has no source of its own
        opened["shm:depth"].put(5)
        pipeline = RecordingPipeline()
        wait_for(lambda: (feed.feed(pipeline), pipeline.maps)[1], "a fed map")
        assert pipeline.maps == [(1, 5)]
        kept = feed.sources[1]
        feed.follow([ControlNetSpec(model="random"), ControlNetSpec(model="random", source="shm:depth")])
        assert feed.sources[1] is kept  # same spec: same source, still running
        second = RecordingPipeline()
        feed.feed(second)
        assert second.maps == [(1, 5)]  # a new pipeline gets the last map too
        feed.follow([ControlNetSpec(model="random", source="shm:pose")])
        assert opened["shm:depth"].closed and list(feed.sources) == [0]
    finally:
        feed.stop()
    assert opened["shm:pose"].closed and feed.sources == {}


def test_a_source_that_cannot_open_is_said_and_the_show_goes_on(caplog):
    def broken(spec):
        raise OSError(f"no sender named {spec}")

    feed = ControlFeed(broken)
    with caplog.at_level(logging.WARNING, logger="streamvj.control"):
        feed.follow([ControlNetSpec(model="random", source="spout:Nobody")])
    assert feed.sources == {} and "spout:Nobody (ControlNet 0) cannot open: no sender named spout:Nobody" in caplog.text
    feed.feed(RecordingPipeline())  # nothing to feed, nothing raised


def test_a_map_the_pipeline_refuses_is_logged_not_raised(caplog):
    class Refusing:
        def set_control_frame(self, k, rgba):
            from engine.errors import FrameError

            raise FrameError("input frame must be uint8 RGBA")

    source = MapSource()
    feed = ControlFeed(lambda spec: source)
    try:
        feed.follow([ControlNetSpec(model="random", source="shm:depth")])
        source.put(3)
        wait_for(lambda: feed.sources[0].received == 1, "a map")
        with caplog.at_level(logging.WARNING, logger="streamvj.control"):
            feed.feed(Refusing())
        assert "control map from shm:depth not used: input frame must be uint8 RGBA" in caplog.text
    finally:
        feed.stop()


def test_a_taken_map_is_not_rewritten_until_the_next_take_even_if_the_source_reuses_its_buffer():
    class Reusing(MapSource):
        def __init__(self):
            super().__init__()
            self.buffer = np.zeros((8, 8, 4), np.uint8)
            self.value = 0

        def read_latest(self):
            self.value = (self.value + 1) % 250
            self.buffer[:] = self.value  # always the same array, rewritten
            return self.buffer

    source = Reusing()
    control = ControlSource(0, "shm:depth", source).start()
    try:
        wait_for(lambda: control.received >= 1, "a map")
        taken = control.take()
        held = taken.copy()
        wait_for(lambda: control.received >= 20, "more maps")
        assert np.array_equal(taken, held) and taken is not source.buffer
        assert control.take() is not taken  # the next take is another buffer
    finally:
        control.stop()
