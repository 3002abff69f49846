from __future__ import annotations

import math
import threading

import pytest

from engine.config.schema import LIVE_SPECS, LiveParams
from engine.errors import ConfigError
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from tests.fake_clock import FakeClock


@pytest.fixture
def store(clock: FakeClock) -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat"), clock=clock, tempo=Tempo(120.0, clock=clock))


# ---------------------------------------------------------------- validation


def test_set_and_snapshot(store: ParamStore) -> None:
    store.set("guidance_scale", 3)
    snap = store.snapshot()
    assert snap.guidance_scale == 3.0 and isinstance(snap.guidance_scale, float)
    store.set("prompt_interp", "slerp")
    store.set("t_index_list", [20, 40])
    store.set("prompt_blend", [("a", 1.0), ("b", 3)])
    snap = store.snapshot()
    assert (snap.prompt_interp, snap.t_index_list) == ("slerp", [20, 40])
    assert snap.prompt_blend == [("a", 1.0), ("b", 3.0)]


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("guidance_scale", True, "valid number"),
        ("guidance_scale", "1.5", "valid number"),
        ("guidance_scale", float("nan"), "finite number"),
        ("guidance_scale", float("inf"), "finite number"),
        ("guidance_scale", 20.5, "less than or equal to 20"),
        ("seed", 1.5, "valid integer"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", False, "valid integer"),
        ("similarity_enabled", 1, "valid boolean"),
        ("prompt", "x" * 4001, "at most 4000 characters"),
        ("prompt", 5, "valid string"),
        ("prompt_interp", "cubic", "'linear' or 'slerp'"),
        ("t_index_list", [40, 20], "strictly increasing"),
        ("t_index_list", [1, 2, 3], "needs exactly 2 entries"),
        ("prompt_blend", [("a", 0.0)], "must not all be zero"),
        ("seed_blend", [(1, 1.0)] * 17, "at most 16 items"),
        ("smoothing", {"prompt": 1.0}, "cannot smooth prompt"),
        ("nope", 1, "unknown live parameter 'nope'"),
    ],
)
def test_set_rejects_with_reason(store: ParamStore, name: str, value: object, reason: str) -> None:
    before = store.values()
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(")) as exc:
        store.set(name, value, source="osc")
    assert str(exc.value).startswith("osc")
    assert store.values() == before


def test_every_spec_default_round_trips(store: ParamStore) -> None:
    for name, spec in LIVE_SPECS.items():
        if name == "prompt":
            continue
        assert store.set(name, spec.default) == spec.default


def test_snapshot_is_a_copy(store: ParamStore) -> None:
    snap = store.snapshot()
    snap.t_index_list.append(49)
    assert store.get("t_index_list") == [32, 45]


def test_listener_and_version(store: ParamStore) -> None:
    seen: list[tuple[str, object, str]] = []
    store.add_listener(lambda n, v, s: seen.append((n, v, s)))
    v0 = store.version
    store.set("delta", 0.5, source="midi")
    assert seen == [("delta", 0.5, "midi")] and store.version == v0 + 1


def test_concurrent_writers_never_tear(store: ParamStore) -> None:
    def writer(k: int) -> None:
        for i in range(300):
            store.set("t_index_list", [k, k + 10 + i % 5])

    threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2, 3)]
    for t in threads:
        t.start()
    for _ in range(300):
        a, b = store.snapshot().t_index_list
        assert a in (1, 2, 3, 32) and b > a
    for t in threads:
        t.join()


# ---------------------------------------------------------------- smoothing


def test_linear_slew(store: ParamStore, clock: FakeClock) -> None:
    store.set("smoothing", {"guidance_scale": 2.0})
    store.set("guidance_scale", 5.2)  # from 1.2
    assert store.snapshot().guidance_scale == pytest.approx(1.2)
    clock.t += 1.0
    assert store.snapshot().guidance_scale == pytest.approx(3.2)
    # A new target mid-ramp starts from where the value is, not from the old start.
    store.set("guidance_scale", 1.2)
    clock.t += 0.5
    assert store.snapshot().guidance_scale == pytest.approx(3.2 - 2.0 * 0.25)
    clock.t += 5.0
    assert store.snapshot().guidance_scale == 1.2
    assert store.get("guidance_scale") == 1.2


def test_exponential_slew(clock: FakeClock) -> None:
    store = ParamStore(LiveParams(smoothing={"fx_hue": 1.0}), clock=clock, curve="exp")
    store.set("fx_hue", 100.0)
    clock.t += 0.5
    mid = store.snapshot().fx_hue
    assert mid == pytest.approx(100.0 * (1 - math.exp(-0.5 * 4.6)))
    assert mid > 50.0  # exponential moves fast first
    clock.t += 0.5
    assert store.snapshot().fx_hue == 100.0


def test_unsmoothed_params_jump(store: ParamStore) -> None:
    store.set("smoothing", {"guidance_scale": 2.0})
    store.set("delta", 0.3)
    assert store.snapshot().delta == 0.3


def test_set_smoothing(store: ParamStore) -> None:
    store.set_smoothing("delta", 0.25)
    assert store.get("smoothing") == {"delta": 0.25}
    store.set_smoothing("delta", 0)
    assert store.get("smoothing") == {}
    with pytest.raises(ConfigError, match="cannot smooth seed"):
        store.set_smoothing("seed", 1.0)


# ---------------------------------------------------------------- transitions


def test_prompt_transition_seconds(store: ParamStore, clock: FakeClock) -> None:
    store.transition_prompt("a dog", duration_s=2.0)
    assert store.snapshot().prompt_blend == [("a cat", 1.0)]
    clock.t += 0.5
    assert dict(store.snapshot().prompt_blend) == pytest.approx({"a cat": 0.75, "a dog": 0.25})
    clock.t += 1.5
    snap = store.snapshot()
    assert (snap.prompt, snap.prompt_blend) == ("a dog", [])


def test_prompt_transition_retrigger_starts_from_screen(store: ParamStore, clock: FakeClock) -> None:
    store.transition_prompt("a dog", duration_s=2.0)
    clock.t += 1.0
    store.transition_prompt("a bird", duration_s=1.0)
    assert dict(store.snapshot().prompt_blend) == pytest.approx({"a cat": 0.5, "a dog": 0.5})
    clock.t += 0.5
    assert dict(store.snapshot().prompt_blend) == pytest.approx({"a cat": 0.25, "a dog": 0.25, "a bird": 0.5})


def test_prompt_transition_in_beats_quantised_to_bar(store: ParamStore, clock: FakeClock) -> None:
    clock.t += 0.75  # 1.5 beats into the bar at 120 BPM
    store.transition_prompt("a dog", beats=2, quantum="bar")  # starts at beat 4, lasts 1 s
    clock.t += 1.25  # beat 4: fade starts
    assert store.snapshot().prompt_blend == [("a cat", 1.0)]
    clock.t += 0.5
    assert dict(store.snapshot().prompt_blend) == pytest.approx({"a cat": 0.5, "a dog": 0.5})
    clock.t += 0.5
    assert store.snapshot().prompt_blend == []


def test_direct_prompt_write_cuts_a_transition(store: ParamStore, clock: FakeClock) -> None:
    store.transition_prompt("a dog", duration_s=2.0)
    clock.t += 1.0
    store.set("prompt", "a fish")
    snap = store.snapshot()
    assert (snap.prompt, snap.prompt_blend) == ("a fish", [])


def test_transition_from_a_blend(store: ParamStore, clock: FakeClock) -> None:
    store.set("prompt_blend", [("x", 1.0), ("y", 3.0)])
    store.transition_prompt("z", duration_s=1.0)
    clock.t += 0.5
    assert dict(store.snapshot().prompt_blend) == pytest.approx({"x": 0.125, "y": 0.375, "z": 0.5})


def test_seed_transition(store: ParamStore, clock: FakeClock) -> None:
    store.transition_seed(7, duration_s=1.0)
    clock.t += 0.25
    assert dict(store.snapshot().seed_blend) == pytest.approx({2: 0.75, 7: 0.25})
    clock.t += 1.0
    snap = store.snapshot()
    assert (snap.seed, snap.seed_blend) == (7, [])


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({}, "exactly one of"),
        ({"duration_s": 1.0, "beats": 2.0}, "exactly one of"),
        ({"duration_s": -1.0}, "0..600"),
        ({"duration_s": True}, "0..600"),
    ],
)
def test_transition_arguments(store: ParamStore, kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        store.transition_prompt("a dog", **kwargs)  # type: ignore[arg-type]


def test_beats_need_a_tempo(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="need a Tempo"):
        ParamStore(clock=clock).transition_prompt("x", beats=4)


# ---------------------------------------------------------------- presets


def test_apply_preset_live_slews_and_crossfades(store: ParamStore, clock: FakeClock) -> None:
    seen: list[str] = []
    store.add_listener(lambda n, v, s: seen.append(n))
    new = LiveParams(
        prompt="a dog",
        guidance_scale=3.2,
        seed=9,
        t_index_list=[10, 20, 30],
        smoothing={"guidance_scale": 1.0},
    )
    store.apply_preset_live(new, transition_s=1.0)
    assert store.steps == 3
    clock.t += 0.5
    snap = store.snapshot()
    assert snap.guidance_scale == pytest.approx(2.2)
    assert dict(snap.prompt_blend) == pytest.approx({"a cat": 0.5, "a dog": 0.5})
    assert dict(snap.seed_blend) == pytest.approx({2: 0.5, 9: 0.5})
    assert snap.t_index_list == [10, 20, 30]
    assert set(seen) == {"prompt", "guidance_scale", "seed", "t_index_list", "smoothing"}
    clock.t += 1.0
    assert store.snapshot() == new


def test_apply_preset_live_cut(store: ParamStore) -> None:
    new = LiveParams(prompt="a dog", fx_hue=90.0)
    store.apply_preset_live(new)
    assert store.snapshot() == new


def test_removed_listener_is_not_called_again():
    store = ParamStore()
    seen = []

    def listener(name, value, source):
        seen.append(name)

    store.add_listener(listener)
    store.set("guidance_scale", 2.0)
    store.remove_listener(listener)
    store.remove_listener(listener)  # twice is harmless
    store.set("guidance_scale", 3.0)
    assert seen == ["guidance_scale"]


def test_a_controlnets_live_choices_are_held_to_the_on_air_presets(clock: FakeClock) -> None:
    """Checked at the door like the step count: a source or preprocessor the preset does not list is refused
    with its reason and never reaches the store (nor the pipeline, the OSC feedback or the web page)."""
    from engine.config.schema import Preset

    preset = Preset.model_validate({"name": "p", "load": {"model": "tiny", "controlnets": [
        {"model": "random", "source": ["input", "shm:depth"], "preprocessor": ["canny", "passthrough"]}]}})
    store = ParamStore(preset.live, clock=clock, choices=preset.load.live_choices)
    assert store.get("controlnet_0_source") == "input"
    store.set("controlnet_0_source", "shm:depth", source="osc")
    for name, value in (("controlnet_0_source", "image:/etc/passwd"), ("controlnet_0_preprocessor", "depth")):
        with pytest.raises(ConfigError, match=f"osc: {name}: .* is not among this preset's choices"):
            store.set(name, value, source="osc")
    assert (store.get("controlnet_0_source"), store.get("controlnet_0_preprocessor")) == ("shm:depth", "canny")
    store.set("controlnet_1_source", "shm:other")  # a slot the preset does not use: any valid spec, no effect
    store.apply_preset_live(LiveParams(), choices={})  # a preset without ControlNets goes on air
    store.set("controlnet_0_preprocessor", "depth")
