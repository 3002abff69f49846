from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.live.quantise import Quantiser, now
from engine.live.tempo import Tempo


class Clock:
    def __init__(self, t: float = 10.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_now_runs_at_once() -> None:
    ran = []
    now(lambda: ran.append(1))
    assert ran == [1]


@pytest.mark.parametrize("quantum, length_s", [("beat", 0.5), ("bar", 2.0)])
def test_waits_for_the_next_beat_or_bar(quantum: str, length_s: float) -> None:
    clock = Clock(10.0)
    tempo = Tempo(120.0, clock=clock)  # anchored at t=10: beats every 0.5 s, bars every 2 s
    scheduled: list[tuple[float, object]] = []
    q = Quantiser(tempo, quantum, schedule=lambda d, a: scheduled.append((d, a)), clock=clock)
    clock.t = 10.1
    q(lambda: None)
    assert scheduled[0][0] == pytest.approx(length_s - 0.1)
    clock.t = 10.0 + length_s  # exactly on it: now, not one later
    assert q.delay() == pytest.approx(0.0)


def test_refuses_an_unknown_quantum() -> None:
    with pytest.raises(ConfigError, match="'beat' or 'bar', got 'phrase'"):
        Quantiser(Tempo(), "phrase")  # type: ignore[arg-type]
