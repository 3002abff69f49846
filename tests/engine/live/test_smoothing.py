from __future__ import annotations

import pytest

from engine.live.smoothing import Crossfade, Ramp, merge_weights, retarget


def test_linear_ramp_is_exact_at_any_time() -> None:
    ramp = Ramp(0.0, 10.0, t0=5.0, duration=2.0)
    assert [ramp.value(t) for t in (4.0, 5.0, 5.5, 6.0, 7.0, 99.0)] == [0.0, 0.0, 2.5, 5.0, 10.0, 10.0]
    assert not ramp.done(6.9) and ramp.done(7.0)


def test_exp_ramp_is_within_one_percent_at_the_end_and_then_snaps() -> None:
    ramp = Ramp(0.0, 1.0, t0=0.0, duration=1.0, curve="exp")
    assert ramp.value(0.5) > 0.5  # front-loaded, like a one-pole filter
    assert ramp.value(0.999) == pytest.approx(1.0, abs=0.011)
    assert ramp.value(1.0) == 1.0 and ramp.done(1.0)


def test_zero_duration_jumps() -> None:
    assert Ramp(0.0, 3.0, t0=1.0, duration=0.0).value(1.0) == 3.0


def test_retarget_starts_from_where_the_value_is() -> None:
    first = Ramp(0.0, 10.0, t0=0.0, duration=1.0)
    second = retarget(first.value(0.5), -2.0, now=0.5, duration=-1.0)  # a negative time is no time
    assert (second.start, second.target, second.t0, second.duration) == (5.0, -2.0, 0.5, 0.0)
    assert second.value(0.5) == -2.0


def test_crossfade_waits_for_its_start_then_mixes() -> None:
    fade = Crossfade((("a", 0.5), ("b", 0.5)), "c", t0=10.0, duration=2.0)
    assert fade.mix(9.0) == [("a", 0.5), ("b", 0.5)] and not fade.done(9.0)
    assert fade.mix(11.0) == [("a", 0.25), ("b", 0.25), ("c", 0.5)]
    assert fade.mix(12.0) == [("c", 1.0)] and fade.done(12.0)


def test_merge_weights_sums_drops_keeps_and_normalises() -> None:
    assert merge_weights([("a", 1.0), ("b", 0.0), ("a", 1.0), ("c", 2.0)]) == [("a", 0.5), ("c", 0.5)]
    kept = merge_weights([(i, float(i)) for i in range(1, 6)], max_items=2)
    assert kept == [(4, 4 / 9), (5, 5 / 9)]  # the heaviest, in first-seen order
    assert merge_weights([("a", 0.0)]) == []
