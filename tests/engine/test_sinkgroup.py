from __future__ import annotations

import logging

from engine.framepool import FramePool
from engine.sinkgroup import SinkGroup, close_quietly


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
