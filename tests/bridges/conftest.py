"""Fixtures shared by the bridge tests: log lookups, the real-library loopback check, and
shared-memory names and subprocesses that are cleaned up after each test."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from bridges.video import shm_block

if TYPE_CHECKING:
    from tests.bridges.video.test_shm import Proc

_names = itertools.count()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """logged(text): the messages captured so far that contain `text`."""

    def messages(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    return messages


@pytest.fixture
def assert_loopback() -> Callable[..., None]:
    """assert_loopback(sink, src, frame, tries=): with both open, send `frame` until `src`
    returns a frame (10 ms apart, at most `tries` times), assert its shape and RGB match,
    then close both."""

    def check(sink: Any, src: Any, frame: np.ndarray, *, tries: int) -> None:
        got = None
        try:
            for _ in range(tries):
                sink.send(frame)
                got = src.read_latest()
                if got is not None:
                    break
                time.sleep(0.01)
            assert got is not None and got.shape == frame.shape
            assert np.array_equal(got[..., :3], frame[..., :3])
        finally:
            src.close()
            sink.close()

    return check


@pytest.fixture
def new_name() -> Iterator[Callable[[], str]]:
    """new_name(): a fresh shared-memory name; every block made under it is unlinked afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"svj_{os.getpid()}_{next(_names)}")
        return made[-1]

    yield make
    for name in made:
        shm_block.unlink(name)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """A list to append started subprocesses to; each is killed afterwards."""
    running: list[Proc] = []
    yield running
    for proc in running:
        proc.kill()
