"""Tempo: BPM and beat phase from OSC (bpm, tap) or MIDI clock, with an injected clock.

The phase is kept as an anchor (a time at which a known beat number fell) plus the
BPM, so `beat_at(now)` and `next_beat_time(now, quantum)` are exact arithmetic that
tests drive with a fake clock. Preset switches and prompt transitions quantise to
`next_beat_time` so a look changes on the one.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from engine.config.scalars import QUANTA, Quantum
from engine.errors import ConfigError, shown

BPM_MIN, BPM_MAX = 20.0, 300.0
PPQN = 24  # MIDI clock pulses per quarter note
TAP_RESET_S = 2.0  # a gap longer than this starts a new tap sequence


class Tempo:
    def __init__(
        self, bpm: float = 120.0, *, beats_per_bar: int = 4, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._bpm = self._check_bpm(bpm)
        self.beats_per_bar = beats_per_bar
        self._anchor_t = clock()
        self._anchor_beat = 0.0
        self._taps: deque[float] = deque(maxlen=8)
        self._ticks: deque[float] = deque(maxlen=PPQN + 1)
        self._tick_count = 0
        self._running = True  # MIDI transport; OSC/tap tempo is always "running"
        self.source = "default"

    @staticmethod
    def _check_bpm(bpm: float) -> float:
        if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not math.isfinite(bpm):
            raise ConfigError(f"tempo: bpm must be a number, got {shown(bpm)}")
        if not BPM_MIN <= bpm <= BPM_MAX:
            raise ConfigError(f"tempo: bpm must be {BPM_MIN:g}..{BPM_MAX:g}, got {shown(bpm)}")
        return float(bpm)

    @property
    def bpm(self) -> float:
        return self._bpm

    @property
    def running(self) -> bool:
        return self._running

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _beat_at(self, now: float) -> float:
        return self._anchor_beat + (now - self._anchor_t) * self._bpm / 60.0

    def beat_at(self, now: float | None = None) -> float:
        """Beats since the anchor (fractional); the phase within a beat is `beat_at % 1`."""
        with self._lock:
            return self._beat_at(self._now(now))

    def _set_bpm_locked(self, bpm: float, now: float) -> None:
        # Re-anchor first so changing tempo keeps the current phase (no jump).
        self._anchor_beat = self._beat_at(now)
        self._anchor_t = now
        self._bpm = bpm

    def set_bpm(self, bpm: float, now: float | None = None, source: str = "osc") -> None:
        bpm = self._check_bpm(bpm)
        with self._lock:
            self._set_bpm_locked(bpm, self._now(now))
            self.source = source

    def tap(self, now: float | None = None) -> None:
        """A tap marks a beat: the phase snaps to it; two or more taps set the BPM."""
        with self._lock:
            now = self._now(now)
            if self._taps and now - self._taps[-1] > TAP_RESET_S:
                self._taps.clear()
            self._taps.append(now)
            if len(self._taps) >= 2:
                span = self._taps[-1] - self._taps[0]
                bpm = 60.0 * (len(self._taps) - 1) / span if span > 0 else self._bpm
                self._bpm = min(BPM_MAX, max(BPM_MIN, bpm))
            # The first tap of a sequence is a downbeat (bar start); later taps keep counting.
            beat = 0.0 if len(self._taps) == 1 else float(round(self._beat_at(now)))
            self._anchor_t, self._anchor_beat = now, beat
            self.source = "tap"

    # MIDI clock: 24 pulses per quarter note; start/stop/continue are transport.
    def midi_start(self, now: float | None = None) -> None:
        with self._lock:
            self._running = True
            self._tick_count = 0
            self._ticks.clear()
            # Per the MIDI spec the first clock after Start is beat 0; anchor there.
            self._anchor_t, self._anchor_beat = self._now(now), 0.0
            self.source = "midi"

    def midi_stop(self) -> None:
        with self._lock:
            self._running = False

    def midi_continue(self) -> None:
        with self._lock:
            self._running = True
            self._ticks.clear()

    def midi_tick(self, now: float | None = None) -> None:
        with self._lock:
            now = self._now(now)
            self._ticks.append(now)
            if len(self._ticks) >= 2:
                span = self._ticks[-1] - self._ticks[0]
                if span > 0:
                    bpm = 60.0 * (len(self._ticks) - 1) / (span * PPQN)
                    self._bpm = min(BPM_MAX, max(BPM_MIN, bpm))
            if not self._running:
                return
            if self._tick_count % PPQN == 0:
                # Phase-lock to the clock on every quarter note.
                self._anchor_t, self._anchor_beat = now, float(self._tick_count // PPQN)
            self._tick_count += 1
            self.source = "midi"

    def next_beat_time(self, now: float | None = None, quantum: Quantum = "beat") -> float:
        """The time of the next beat (or bar start) at or after `now`."""
        if quantum not in QUANTA:
            raise ConfigError(f"tempo: quantum must be {' or '.join(map(repr, QUANTA))}, got {shown(quantum)}")
        q = 1 if quantum == "beat" else self.beats_per_bar
        with self._lock:
            now = self._now(now)
            beat = self._beat_at(now)
            # A hair of tolerance so "exactly on the beat" means now, not a beat later.
            target = math.ceil(beat / q - 1e-9) * q
            return self._anchor_t + (target - self._anchor_beat) * 60.0 / self._bpm

    def seconds_for(self, beats: float) -> float:
        return beats * 60.0 / self._bpm
