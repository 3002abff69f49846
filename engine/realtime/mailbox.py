"""Mailbox: a single-slot, latest-wins handoff between two threads.

Live video wants the newest frame, never a queue: a queue behind a slow consumer turns
into latency that only grows. `put` never blocks; an item nobody took yet is replaced
and counted as dropped (and handed to `on_drop`, so pooled buffers go back to their pool).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    def __init__(self, name: str = "mailbox", on_drop: Callable[[T], None] | None = None) -> None:
        self.name = name
        self._on_drop = on_drop
        self._cond = threading.Condition(threading.Lock())
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._woken = False
        self.put_count = 0
        self.taken = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Offer `item`; True when it replaced one nobody took (which counts as dropped).

        After close() the item is refused: it is passed to `on_drop` and not counted.
        """
        with self._cond:
            if self._closed:
                old, replaced, counted = item, True, False
            else:
                old, replaced, counted = self._item, self._full, self._full
                self._item, self._full = item, True
                self.put_count += 1
                if counted:
                    self.dropped += 1
                self._cond.notify()
        if replaced and self._on_drop is not None:
            self._on_drop(old)  # outside the lock: a callback must not stall the other side
        return counted

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item, waiting up to `timeout` s (None: until one comes or close()).

        Returns None on timeout, after wake(), or when closed and empty.
        """
        with self._cond:
            if timeout is None:
                while not (self._full or self._closed or self._woken):
                    self._cond.wait()
            elif timeout > 0:
                deadline = time.monotonic() + timeout
                while not (self._full or self._closed or self._woken):
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
            self._woken = False
            return self._take()

    def get_nowait(self) -> T | None:
        with self._cond:
            return self._take()

    def _take(self) -> T | None:
        if not self._full:
            return None
        item, self._item, self._full = self._item, None, False
        self.taken += 1
        return item

    def wake(self) -> None:
        """Make a waiting (or the next) get() return now, with None if nothing is there:
        the consumer has other work (a control action, a pause) to look at."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter; later puts are refused. An unconsumed item stays gettable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> T | None:
        """Remove and return the pending item without counting it as taken."""
        with self._cond:
            item, self._item, self._full = self._item, None, False
            return item

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> dict[str, int]:
        with self._cond:
            return {"put": self.put_count, "taken": self.taken, "dropped": self.dropped}
