"""The last warnings and errors the engine logged, for the web page's error list.

A logging handler on the `streamvj` logger keeps the newest `keep` records at WARNING and
above (cut short, no tracebacks): what a VJ needs to see that a preset failed or a sink
vanished, without a terminal. It never blocks or formats more than a line per record.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

KEEP = 50
TEXT_MAX = 500


class RecentErrors(logging.Handler):
    def __init__(self, keep: int = KEEP, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._guard = threading.Lock()  # not Handler.lock: reading must not wait on a slow emit
        self.version = 0  # bumps with every record kept: readers send only when it moved

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a caller's bad %-format: keep the raw template
            text = str(record.msg)
        if len(text) > TEXT_MAX:
            text = text[: TEXT_MAX - 1] + "…"
        entry = {"t": record.created, "level": record.levelname.lower(), "logger": record.name, "text": text}
        with self._guard:
            self._records.append(entry)
            self.version += 1

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """(version, the kept records, oldest first)."""
        with self._guard:
            return self.version, list(self._records)

    def install(self, logger: str = "streamvj") -> RecentErrors:
        logging.getLogger(logger).addHandler(self)
        return self

    def uninstall(self, logger: str = "streamvj") -> None:
        logging.getLogger(logger).removeHandler(self)
