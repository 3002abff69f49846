"""A clock tests set by hand: `clock.t += 0.5` is half a second later, without waiting."""

from __future__ import annotations


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
