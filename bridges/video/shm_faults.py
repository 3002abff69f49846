"""How the shared-memory bridge reports peers that break the rules: each fault once, and a stall.

A peer can misbehave in ways that no single poll reveals (a block left 0 bytes long or in
INIT, a seq stuck odd…) or over and over (a script that truncates every new block). `Once`
keeps the log to one line per distinct fault; `Stall` turns "no frames, and the writer is
to blame" into one line after a grace period, and one more when frames come back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("streamvj.shm")

STALL_GRACE_S = 1.5  # a reader with no frames this long, for a reason that is the peer's fault, says so
RULES = "see docs/shared-memory.md, 'What a writer must not do'"


class Once:
    """Log each distinct message once until reset, or again after `repeat_s` (a peer that keeps
    breaking a block, or a reconnect loop, must not flood the log)."""

    def __init__(self, repeat_s: float = float("inf")) -> None:
        self._logged: dict[str, float] = {}
        self._repeat_s = repeat_s

    def __call__(self, level: int, msg: str) -> None:
        now = time.monotonic()
        last = self._logged.get(msg)
        if last is None or now - last >= self._repeat_s:
            if len(self._logged) >= 64:
                self._logged.clear()
            self._logged[msg] = now
            log.log(level, msg)

    def reset(self) -> None:
        if self._logged:
            self._logged.clear()


class Stall:
    """A reader that has no frames for a reason that is the peer's fault says so once, after a grace.

    `problem` is called on every poll that found one (a block stuck in INIT, a seq stuck
    odd…); `clear` on a poll that found nothing wrong (a writer that simply sends nothing
    new is not a fault); `frame` when a frame arrived. The text is built only when logged.
    """

    def __init__(self, block_name: str, grace_s: float) -> None:
        self.block_name = block_name
        self.grace_s = grace_s
        self._since: float | None = None
        self._reported = False

    def problem(self, now: float, describe: Callable[[], str]) -> None:
        if self._since is None:
            self._since = now
        elif not self._reported and now - self._since >= self.grace_s:
            self._reported = True
            log.warning("shm %r: no frames for %.1f s: %s", self.block_name, now - self._since, describe())

    def clear(self) -> None:
        self._since = None

    def said(self) -> None:
        """The cause of this stall was already logged (a fault seen as it happened): no second line."""
        self._reported = True

    def frame(self) -> None:
        if self._reported:
            log.info("shm %r: frames are arriving again", self.block_name)
        self._since, self._reported = None, False
