"""A logger wrapper that says each distinct message at most once per period.

A per-frame error at 60 fps must leave a readable log, not a flood.
"""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, repeat_s: float = 5.0, max_keys: int = 256) -> None:
        self.logger, self.repeat_s, self.max_keys = logger, repeat_s, max_keys
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def __call__(self, level: int, msg: str, exc_info: BaseException | None = None, key: str | None = None) -> bool:
        """Log `msg` unless the same `key` (default: the message) was logged within `repeat_s`."""
        now = time.monotonic()
        key = msg if key is None else key
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.repeat_s:
                return False
            if len(self._last) >= self.max_keys:  # ever-changing texts: forget the old ones, stay bounded
                self._last = {m: t for m, t in self._last.items() if now - t < self.repeat_s}
            self._last[key] = now
        self.logger.log(level, msg, exc_info=exc_info)
        return True
