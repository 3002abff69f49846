from __future__ import annotations

import logging

from engine.realtime.framepool import FramePool
from engine.realtime.sinkgroup import SinkGroup, close_quietly


class Sink:
    def __init__(self, name, fail=False):
        self.name, self.fail, self.closed = name, fail, False

    def close(self):
        self.closed = True
        if self.fail:
            raise OSError("device gone")


def test_group_names_and_counters():
    group = SinkGroup([Sink("spout"), Sink("shm")], 0, FramePool("out", 2))
    assert group.name == "spout+shm" and group.errors == [0, 0] and group.sent == 0


def test_a_failing_close_is_logged_not_raised(caplog):
    sink = Sink("ndi", fail=True)
    with caplog.at_level(logging.WARNING, logger="streamvj.runtime"):
        close_quietly("sink ndi", sink)
    assert sink.closed and "closing sink ndi failed: OSError: device gone" in caplog.text


class Flaky:
    name = "ndi"

    def __init__(self):
        self.down, self.frames = True, []

    def send(self, view):
        if self.down:
            raise ConnectionError("receiver gone")
        self.frames.append(view.copy())


def test_send_logs_a_failing_sink_once_keeps_the_others_and_reports_recovery(caplog):
    import numpy as np

    from engine.realtime.timings import Timings

    pool, flaky, good = FramePool("out", 2), Flaky(), Flaky()
    good.down = False
    group = SinkGroup([flaky, good], 0, pool)
    buf = pool.acquire((2, 2, 4))
    buf.array[:] = 7
    timings = Timings()
    with caplog.at_level(logging.INFO, logger="streamvj.runtime"):
        for _ in range(3):
            group.send(buf, False, timings, clock=lambda: 0.0)
        flaky.down = False
        group.send(buf, True, timings, clock=lambda: 0.0)
    assert caplog.text.count("sink ndi failed: ConnectionError: receiver gone; retrying every frame") == 1
    assert "sink ndi recovered" in caplog.text
    assert group.errors == [3, 0] and len(good.frames) == 4 and len(flaky.frames) == 1
    assert group.sent == 3 and group.repeated == 1
    assert np.array_equal(good.frames[0], np.full((2, 2, 4), 7, np.uint8))
