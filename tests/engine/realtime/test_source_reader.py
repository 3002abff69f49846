"""The source thread (engine/realtime/source_reader.py) under the real runtime."""

from __future__ import annotations

import logging
import time

from engine.realtime.processor import FunctionProcessor
from tests.engine.realtime.runtime_fakes import (
    CollectingSink,
    CountingSource,
    GatedProcessor,
    H,
    W,
    make_frame,
    start,
    wait_until,
)


class IntoSource(CountingSource):
    """A source that fills the runtime's buffer itself, and sometimes loses the race (torn read)."""

    name = "into"

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.asked = 0

    def read_latest_into(self, acquire):
        if self.produced >= self.limit:
            return None
        out = acquire((H, W, 4))
        self.asked += 1
        if self.asked % 3 == 0:  # every third read is torn: the buffer is left unfilled
            return None
        time.sleep(0.0005)
        out[:] = make_frame(self.produced)
        self.produced += 1
        return out


def test_sources_that_read_into_the_pool_skip_the_copy_and_return_unfilled_buffers(runtimes):
    source, sink = IntoSource(limit=30), CollectingSink()
    rt = start(runtimes, FunctionProcessor(lambda f: f), source, [sink])
    wait_until(lambda: source.produced == 30 and sink.indices and sink.indices[-1] == 29, what="all frames")
    assert sink.indices == sorted(set(sink.indices))
    pool = rt._in_pool
    wait_until(lambda: len(pool._free) == pool.size, what="every input buffer back in the pool")
    assert pool.allocated == pool.size  # torn reads returned their buffers: the pool never grew


def test_source_errors_are_retried(runtimes, caplog):
    src = CountingSource(fail_first=2)
    with caplog.at_level(logging.WARNING, logger="streamvj.runtime"):
        rt = start(runtimes, GatedProcessor(gated=False), src, [CollectingSink()])
        wait_until(lambda: rt.frames_rendered >= 3, what="frames after the source recovered")
    assert rt.stats()["counts"]["source_errors"] == 2
    assert any("capture card unplugged" in r.getMessage() for r in caplog.records)
