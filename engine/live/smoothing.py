"""Slew (parameter smoothing) and crossfades, evaluated in closed form from an injected time.

Nothing here integrates per frame: a ramp is (start, target, t0, duration), so its value
at any `now` is exact no matter how irregular the frame times are, and tests can
jump the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Curve = Literal["linear", "exp"]

# "exp" is a one-pole filter whose time constant puts it within 1% of the target after
# `duration` (e^-4.6 ≈ 0.01); it then snaps, so a ramp always ends.
_EXP_TAU_PER_DURATION = 1.0 / 4.6


@dataclass(frozen=True)
class Ramp:
    start: float
    target: float
    t0: float
    duration: float
    curve: Curve = "linear"

    def progress(self, now: float) -> float:
        """0 at t0, 1 at t0 + duration (and after); the eased fraction of the way covered."""
        if self.duration <= 0.0 or now >= self.t0 + self.duration:
            return 1.0
        x = max(0.0, (now - self.t0) / self.duration)
        if self.curve == "exp":
            return 1.0 - math.exp(-x / _EXP_TAU_PER_DURATION)
        return x

    def value(self, now: float) -> float:
        p = self.progress(now)
        return self.target if p >= 1.0 else self.start + (self.target - self.start) * p

    def done(self, now: float) -> bool:
        return self.progress(now) >= 1.0


def retarget(current: float, target: float, now: float, duration: float, curve: Curve = "linear") -> Ramp:
    """A ramp from wherever the parameter is now, so a new target mid-ramp never jumps."""
    return Ramp(float(current), float(target), now, max(0.0, duration), curve)


@dataclass(frozen=True)
class Crossfade:
    """Fade from a weighted mix `src` (weights sum to 1) to a single `dst` item.

    Used for prompt transitions (items are texts) and seed transitions (items are seeds).
    Before `t0` the mix is `src` (a transition quantised to the next beat waits).
    """

    src: tuple[tuple[object, float], ...]
    dst: object
    t0: float
    duration: float

    def weight(self, now: float) -> float:
        return Ramp(0.0, 1.0, self.t0, self.duration).value(now) if now >= self.t0 else 0.0

    def mix(self, now: float) -> list[tuple[object, float]]:
        w = self.weight(now)
        return merge_weights([(item, wt * (1.0 - w)) for item, wt in self.src] + [(self.dst, w)])

    def done(self, now: float) -> bool:
        return now >= self.t0 and self.weight(now) >= 1.0


def merge_weights(pairs: list[tuple[object, float]], max_items: int = 16) -> list[tuple[object, float]]:
    """Sum duplicates, drop zero weights, keep the heaviest `max_items`, normalise to 1."""
    acc: dict[object, float] = {}
    for item, w in pairs:
        acc[item] = acc.get(item, 0.0) + w
    kept = sorted(((k, w) for k, w in acc.items() if w > 1e-6), key=lambda kw: -kw[1])[:max_items]
    total = sum(w for _, w in kept)
    if total <= 0.0:
        return []
    # Keep first-seen order so the engine's per-text embedding cache sees a stable list.
    order = {k: i for i, (k, _) in enumerate(pairs)}
    return [(k, w / total) for k, w in sorted(kept, key=lambda kw: order[kw[0]])]
