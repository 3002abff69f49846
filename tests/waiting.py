"""Waiting in tests: poll a condition until it holds, with a deadline that only bounds a failing test.

Nothing here asserts on time: on a loaded machine a passing test just passes later.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE_S = 30.0  # generous: the development machine is a shared 2-core box


def eventually(cond: Callable[[], object], timeout: float = DEADLINE_S, poll_s: float = 0.002) -> bool:
    """True as soon as `cond()` holds; False if it still does not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll_s)
    return bool(cond())


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE_S, poll_s: float = 0.005) -> object:
    """`cond()`'s first true value; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)
