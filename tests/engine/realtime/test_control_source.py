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


class Choices:
    """The part of ControlMaps the feed asks: which own source each ControlNet uses now."""

    def __init__(self, fed: dict[int, str]) -> None:
        self.fed = fed

    @property
    def count(self) -> int:
        return max(self.fed, default=-1) + 1

    def fed_source(self, k: int) -> str | None:
        return self.fed.get(k)


class RecordingPipeline:
    def __init__(self, fed: dict[int, str] | None = None) -> None:
        self.maps: list[tuple[int, int]] = []
        self.controls = Choices({} if fed is None else fed)

    def set_control_frame(self, k: int, rgba, source: str | None = None):
        self.maps.append((k, int(rgba[0, 0, 0])))
        return None


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
        feed.sources[(0, "ndi:Kinect")] = control
        feed_pipeline.controls.fed[0] = "ndi:Kinect"
        feed.feed(feed_pipeline)
        assert feed_pipeline.maps == [(0, 7)]  # the map that came before the failure
        source.raising = None
        source.put(8)
        wait_for(lambda: control.received == 2, "maps again after the failure")
    finally:
        control.stop()


def _recording_opener(opened: dict[str, MapSource]):
    """An `open_source` that makes a MapSource per spec and records it in `opened`."""

    def open_source(spec):
        opened[spec] = MapSource()
        return opened[spec]
    return open_source


def test_the_feed_follows_the_preset_on_air():
    opened: dict[str, MapSource] = {}
    feed = ControlFeed(_recording_opener(opened))
    try:
        feed.follow([ControlNetSpec(model="random"), ControlNetSpec(model="random", source="shm:depth")])
        assert list(feed.sources) == [(1, "shm:depth")] and list(opened) == ["shm:depth"]  # "input" has none
        opened["shm:depth"].put(5)
        pipeline = RecordingPipeline({1: "shm:depth"})
        wait_for(lambda: (feed.feed(pipeline), pipeline.maps)[1], "a fed map")
        assert pipeline.maps == [(1, 5)]
        kept = feed.sources[(1, "shm:depth")]
        feed.follow([ControlNetSpec(model="random"), ControlNetSpec(model="random", source="shm:depth")])
        assert feed.sources[(1, "shm:depth")] is kept  # same spec: same source, still running
        second = RecordingPipeline({1: "shm:depth"})
        feed.feed(second)
        assert second.maps == [(1, 5)]  # a new pipeline gets the last map too
        feed.follow([ControlNetSpec(model="random", source="shm:pose")])
        assert opened["shm:depth"].closed and list(feed.sources) == [(0, "shm:pose")]
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
    feed.feed(RecordingPipeline({0: "spout:Nobody"}))  # nothing to feed, nothing raised


def test_a_map_the_pipeline_refuses_is_logged_not_raised(caplog):
    class Refusing:
        controls = Choices({0: "shm:depth"})

        def set_control_frame(self, k, rgba, source=None):
            from engine.errors import FrameError

            raise FrameError("input frame must be uint8 RGBA")

    source = MapSource()
    feed = ControlFeed(lambda spec: source)
    try:
        feed.follow([ControlNetSpec(model="random", source="shm:depth")])
        source.put(3)
        wait_for(lambda: feed.sources[(0, "shm:depth")].received == 1, "a map")
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


def test_every_listed_source_runs_and_only_the_chosen_one_is_fed():
    """A switch shows the new source's newest map at once, and opens nothing on the render thread."""
    opened: dict[str, MapSource] = {}
    feed = ControlFeed(_recording_opener(opened))
    try:
        feed.follow([ControlNetSpec(model="random", source=["input", "shm:depth", "shm:pose"])])
        assert sorted(opened) == ["shm:depth", "shm:pose"]
        opened["shm:depth"].put(1)
        opened["shm:pose"].put(2)
        wait_for(lambda: all(s.received == 1 for s in feed.sources.values()), "both maps")
        pipeline = RecordingPipeline({})  # ControlNet 0 on the input: nothing to feed
        feed.feed(pipeline)
        assert pipeline.maps == [] and feed.active == frozenset()
        pipeline.controls.fed[0] = "shm:pose"
        feed.feed(pipeline)
        assert pipeline.maps == [(0, 2)] and feed.active == {(0, "shm:pose")}
        pipeline.controls.fed[0] = "shm:depth"  # its map came while it was not chosen: still the newest
        feed.feed(pipeline)
        assert pipeline.maps == [(0, 2), (0, 1)]
        assert sorted(opened) == ["shm:depth", "shm:pose"]  # nothing opened by the switches
        assert [s["active"] for s in feed.status()] == [True, False]
    finally:
        feed.stop()


def test_a_source_that_cannot_open_never_blocks_a_switch_to_it(caplog):
    good = MapSource()

    def open_source(spec):
        if spec == "spout:Nobody":
            raise OSError("no sender named Nobody")
        return good

    feed = ControlFeed(open_source)
    try:
        feed.follow([ControlNetSpec(model="random", source=["shm:depth", "spout:Nobody"])])
        pipeline = RecordingPipeline({0: "spout:Nobody"})
        with caplog.at_level(logging.WARNING, logger="streamvj.control"):
            feed.feed(pipeline)
            feed.feed(pipeline)
        said = [r.getMessage() for r in caplog.records if "which could not open" in r.getMessage()]
        assert said == ["ControlNet 0 uses control source spout:Nobody, which could not open (no sender named "
                        "Nobody): a black map"]  # once, not per frame
        good.put(4)
        wait_for(lambda: feed.sources[(0, "shm:depth")].received == 1, "a map")
        pipeline.controls.fed[0] = "shm:depth"
        feed.feed(pipeline)
        assert pipeline.maps == [(0, 4)]
    finally:
        feed.stop()


class Upload:
    """A CUDA event as the feed sees one: done when the test says so."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


def test_a_buffer_is_not_rewritten_while_its_upload_may_still_read_it():
    class Counting(MapSource):
        def __init__(self):
            super().__init__()
            self.value = 0

        def read_latest(self):
            self.value = self.value % 250 + 1
            return np.full((8, 8, 4), self.value, np.uint8)

    source = Counting()
    control = ControlSource(0, "shm:depth", source).start()
    try:
        wait_for(lambda: control.received >= 1, "a map")
        first = control.take()
        held = first.copy()
        upload = Upload()
        control.uploaded(upload)  # an upload from `first` is in flight
        wait_for(lambda: control.take() is not None and control.received >= 20, "more maps and takes")
        assert np.array_equal(first, held)  # taken again and again since, but never rewritten
        upload.done = True
        wait_for(lambda: not np.array_equal(first, held), "the buffer to be used again once the copy is done")
    finally:
        control.stop()


def test_a_still_image_is_never_stale_once_it_sent_its_map():
    clock, source = FakeClock(), MapSource()
    control = ControlSource(0, "image:depth.png", source, clock=clock, stale_s=2.0).start()
    try:
        clock.t += 3.0
        assert control.check_stale()  # nothing yet: the file did not load
        source.put(1)
        wait_for(lambda: control.received == 1, "the image")
        clock.t += 60.0
        assert not control.check_stale()  # sent once; it sends again only when the file changes
    finally:
        control.stop()
