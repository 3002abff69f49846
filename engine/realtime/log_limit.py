"""Rate-limited logging, so a flood of bad messages or a per-frame error can't flood the log.

Each distinct key (e.g. (address, reason)) is logged once, then again at most every
`repeat_s` with a count of what was suppressed; on top of that a global budget caps
lines per second, so a stream of ever-different garbage is summarised, not printed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        repeat_s: float = 60.0,
        lines_per_s: float = 10.0,
        max_keys: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._repeat_s = repeat_s
        self._rate = lines_per_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[Hashable, tuple[float, int]] = (
            OrderedDict()
        )  # key -> (last logged, suppressed)
        self._tokens = lines_per_s
        self._refilled = clock()
        self._over_budget = 0

    def warning(self, key: Hashable, msg: str, *, exc_info: bool = False) -> bool:
        """Log `msg` unless `key` was logged recently or the line budget is spent; True if logged."""
        return self._emit(logging.WARNING, key, msg, exc_info)

    def info(self, key: Hashable, msg: str) -> bool:
        return self._emit(logging.INFO, key, msg, False)

    def log(self, level: int, msg: str, *, key: Hashable | None = None, exc_info: bool = False) -> bool:
        """Any level; `key` defaults to the message itself."""
        return self._emit(level, msg if key is None else key, msg, exc_info)

    def _emit(self, level: int, key: Hashable, msg: str, exc_info: bool) -> bool:
        with self._lock:
            now = self._clock()
            last = self._seen.get(key)
            if last is not None and now - last[0] < self._repeat_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens < 1.0:
                self._over_budget += 1
                return False
            self._tokens -= 1.0
            suppressed = last[1] if last else 0
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            over, self._over_budget = self._over_budget, 0
        if suppressed:
            msg += f" ({suppressed} more like this since last logged)"
        if over:
            msg += f" ({over} other messages suppressed by the log rate limit)"
        self._log.log(level, msg, exc_info=exc_info)
        return True
