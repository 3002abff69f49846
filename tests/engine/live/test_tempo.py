from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.live.tempo import Tempo
from tests.fake_clock import FakeClock


def test_tempo_next_beat_and_bar(clock: FakeClock) -> None:
    tempo = Tempo(120.0, clock=clock)  # beat 0 at t=100, 0.5 s per beat
    assert tempo.next_beat_time(100.0) == 100.0
    assert tempo.next_beat_time(100.1) == pytest.approx(100.5)
    assert tempo.next_beat_time(100.1, "bar") == pytest.approx(102.0)
    assert tempo.beat_at(101.25) == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="quantum"):
        tempo.next_beat_time(100.0, "phrase")  # type: ignore[arg-type]


def test_tempo_bpm_change_keeps_phase(clock: FakeClock) -> None:
    tempo = Tempo(120.0, clock=clock)
    tempo.set_bpm(60.0, now=101.25)  # 2.5 beats in
    assert tempo.beat_at(101.25) == pytest.approx(2.5)
    assert tempo.next_beat_time(101.25) == pytest.approx(101.75)
    for bad in (10.0, 301.0, float("nan"), True, "120"):
        with pytest.raises(ConfigError, match="bpm"):
            tempo.set_bpm(bad)  # type: ignore[arg-type]


def test_tap_tempo(clock: FakeClock) -> None:
    tempo = Tempo(120.0, clock=clock)
    for t in (10.0, 10.4, 10.8, 11.2):  # 150 BPM
        tempo.tap(t)
    assert tempo.bpm == pytest.approx(150.0)
    assert tempo.beat_at(11.2) == pytest.approx(3.0)
    assert tempo.next_beat_time(11.3, "bar") == pytest.approx(11.6)
    tempo.tap(20.0)  # after a long gap: a new downbeat, BPM kept
    assert tempo.bpm == pytest.approx(150.0) and tempo.beat_at(20.0) == 0.0


def test_midi_clock(clock: FakeClock) -> None:
    tempo = Tempo(120.0, clock=clock)
    tick = 60.0 / (100.0 * 24)  # 100 BPM
    tempo.midi_start(now=50.0)
    for i in range(49):
        tempo.midi_tick(50.0 + i * tick)
    assert tempo.bpm == pytest.approx(100.0)
    assert tempo.beat_at(50.0 + 48 * tick) == pytest.approx(2.0)
    assert tempo.next_beat_time(50.0 + 49 * tick) == pytest.approx(50.0 + 72 * tick)
    tempo.midi_stop()
    assert not tempo.running
    tempo.midi_tick(60.0)  # stopped: BPM may follow, phase is not re-anchored
    tempo.midi_continue()
    assert tempo.running and tempo.source == "midi"
