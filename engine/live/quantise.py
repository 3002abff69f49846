"""Beat quantising: run an action now, or on the next beat or bar of the tempo.

Preset switches use it so a look changes on the one. The delay is computed from the
injected clock and Tempo; the waiting is done by an injected scheduler (a daemon timer by
default, a list in tests), so nothing here sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.errors import ConfigError, shown
from engine.live.tempo import QUANTA, Quantum, Tempo

Schedule = Callable[[float, Callable[[], None]], None]


def timer(delay_s: float, action: Callable[[], None]) -> None:
    """Run `action` on a daemon thread after `delay_s` (a show must never wait on it to exit)."""
    t = threading.Timer(delay_s, action)
    t.daemon = True
    t.start()


class Quantiser:
    def __init__(
        self,
        tempo: Tempo,
        quantum: Quantum,
        *,
        schedule: Schedule = timer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quantum not in QUANTA:
            raise ConfigError(f"switches can be quantised to {' or '.join(map(repr, QUANTA))}, got {shown(quantum)}")
        self.tempo, self.quantum, self.schedule, self.clock = tempo, quantum, schedule, clock

    def delay(self) -> float:
        """Seconds from now to the next beat (or bar start); 0 exactly on it."""
        now = self.clock()
        return max(0.0, self.tempo.next_beat_time(now, self.quantum) - now)

    def __call__(self, action: Callable[[], None]) -> None:
        self.schedule(self.delay(), action)


def now(action: Callable[[], None]) -> None:
    """The unquantised case: run at once."""
    action()
