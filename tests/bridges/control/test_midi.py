from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from typing import Any

import mido
import pytest

from bridges.control import midi as midi_mod
from bridges.control.midi import INSTALL_HINT, MidiInput, MidiMapper, apply_curve, is_available, load_backend
from engine.config.schema import LiveParams, MidiMapping, MidiSettings
from engine.errors import BridgeUnavailable, ConfigError
from engine.live.params import ParamStore
from engine.live.tempo import Tempo


def cc(channel: int, control: int, value: int) -> mido.Message:
    return mido.Message("control_change", channel=channel - 1, control=control, value=value)


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams())


def mapper_with(store: ParamStore, *mappings: dict[str, Any], **kw: Any) -> MidiMapper:
    return MidiMapper(store, [MidiMapping(**m) for m in mappings], **kw)


# ------------------------------------------------------------------ mapping


def test_7bit_cc_maps_over_the_param_range(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "fx_hue", "channel": 2, "cc": 7})
    m.handle(cc(2, 7, 127))
    assert store.get("fx_hue") == 180.0
    m.handle(cc(2, 7, 0))
    assert store.get("fx_hue") == -180.0
    m.handle(cc(1, 7, 127))  # other channel: not mapped
    assert store.get("fx_hue") == -180.0


def test_custom_range_and_inversion(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "guidance_scale", "cc": 1, "min": 3.0, "max": 0.0})
    m.handle(cc(1, 1, 0))
    assert store.get("guidance_scale") == 3.0
    m.handle(cc(1, 1, 127))
    assert store.get("guidance_scale") == 0.0


def test_14bit_msb_lsb(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "delta", "cc": 4, "bits": 14})
    m.handle(cc(1, 4, 64))  # MSB alone: LSB taken as 0 (MIDI 1.0)
    assert store.get("delta") == pytest.approx(5.0 * 64 * 128 / 16383)
    m.handle(cc(1, 36, 127))  # LSB on cc + 32
    assert store.get("delta") == pytest.approx(5.0 * (64 * 128 + 127) / 16383)
    m.handle(cc(1, 4, 127))
    m.handle(cc(1, 36, 127))
    assert store.get("delta") == 5.0


def test_curves() -> None:
    for curve in ("linear", "exp", "log"):
        assert apply_curve(0.0, curve) == pytest.approx(0.0)
        assert apply_curve(1.0, curve) == pytest.approx(1.0)
    assert apply_curve(0.5, "exp") < 0.5 < apply_curve(0.5, "log")
    assert apply_curve(apply_curve(0.3, "exp"), "log") == pytest.approx(0.3)


def test_int_bool_and_t_index_mappings(store: ParamStore) -> None:
    m = mapper_with(
        store,
        {"param": "similarity_max_skip", "cc": 1, "min": 0, "max": 100},
        {"param": "similarity_enabled", "cc": 2},
        {"param": "t_index_list", "cc": 3, "index": 0, "min": 0, "max": 49},
    )
    m.handle(cc(1, 1, 64))
    assert store.get("similarity_max_skip") == 50
    m.handle(cc(1, 2, 64))
    assert store.get("similarity_enabled") is True
    m.handle(cc(1, 2, 63))
    assert store.get("similarity_enabled") is False
    m.handle(cc(1, 3, 52))  # -> 20
    assert store.get("t_index_list") == [20, 45]
    m.handle(cc(1, 3, 127))  # -> 49, stops below the next step
    assert store.get("t_index_list") == [44, 45]


def test_t_index_mapping_past_last_step_is_logged(
    store: ParamStore, caplog: pytest.LogCaptureFixture
) -> None:
    m = mapper_with(store, {"param": "t_index_list", "cc": 3, "index": 5})
    with caplog.at_level(logging.WARNING, logger="streamvj.midi"):
        m.handle(cc(1, 3, 10))
        m.handle(cc(1, 3, 11))
    assert store.get("t_index_list") == [32, 45]
    assert len(caplog.records) == 1 and "index 5 is past the last step" in caplog.text


def test_set_mappings_replaces(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "delta", "cc": 1})
    m.set_mappings([MidiMapping(param="fx_blend", cc=1)])
    m.handle(cc(1, 1, 127))
    assert (store.get("delta"), store.get("fx_blend")) == (1.0, 1.0)


def test_smoothing_applies_to_midi(store: ParamStore) -> None:
    t = [0.0]
    s = ParamStore(LiveParams(smoothing={"fx_feedback": 1.0}), clock=lambda: t[0])
    m = mapper_with(s, {"param": "fx_feedback", "cc": 1})
    m.handle(cc(1, 1, 127))
    t[0] = 0.5
    assert s.snapshot().fx_feedback == pytest.approx(0.5)


# ------------------------------------------------------------------ learn


def test_learn_maps_next_cc_and_reports(store: ParamStore, caplog: pytest.LogCaptureFixture) -> None:
    learned: list[MidiMapping] = []
    m = MidiMapper(store, on_learned=learned.append)
    m.learn("fx_saturation")
    assert m.learning == "fx_saturation"
    with caplog.at_level(logging.INFO, logger="streamvj.midi"):
        m.handle(cc(3, 70, 127))
    assert learned == [MidiMapping(param="fx_saturation", channel=3, cc=70)]
    assert m.mappings == learned and m.learning is None
    assert store.get("fx_saturation") == 4.0  # the learning move applies at once
    assert "preset line: - {param: fx_saturation, channel: 3, cc: 70, bits: 7}" in caplog.text
    m.handle(cc(3, 71, 127))  # learn is one-shot
    assert len(m.mappings) == 1


def test_learn_replaces_previous_use_of_that_cc(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "delta", "cc": 70, "channel": 3})
    m.learn("fx_blend")
    m.handle(cc(3, 70, 0))
    assert [x.param for x in m.mappings] == ["fx_blend"]


def test_learn_detects_14bit_pairs(store: ParamStore) -> None:
    learned: list[MidiMapping] = []
    m = MidiMapper(store, on_learned=learned.append)
    m.learn("fx_hue")
    m.handle(cc(1, 5, 64))
    m.handle(cc(1, 37, 0))
    assert [x.bits for x in learned] == [7, 14]
    assert m.mappings == [MidiMapping(param="fx_hue", cc=5, bits=14)]
    m.handle(cc(1, 5, 127))
    m.handle(cc(1, 37, 127))
    assert store.get("fx_hue") == 180.0


def test_learn_t_index_defaults_to_first_step(store: ParamStore) -> None:
    m = MidiMapper(store)
    m.learn("t_index_list")
    m.handle(cc(1, 1, 0))
    assert m.mappings[0].index == 0
    assert store.get("t_index_list") == [0, 45]


def test_learn_rejects_unmappable(store: ParamStore) -> None:
    with pytest.raises(ConfigError, match="cannot map 'prompt'"):
        MidiMapper(store).learn("prompt")


def test_cancel_learn(store: ParamStore) -> None:
    m = MidiMapper(store)
    m.learn("delta")
    m.cancel_learn()
    m.handle(cc(1, 1, 1))
    assert m.mappings == []


# ------------------------------------------------------------------ clock


def test_midi_clock_drives_tempo(store: ParamStore) -> None:
    t = [0.0]
    tempo = Tempo(120.0, clock=lambda: t[0])
    m = MidiMapper(store, tempo=tempo, clock=lambda: t[0])
    m.handle(mido.Message("start"))
    tick = 60.0 / (90.0 * 24)
    for i in range(25):
        t[0] = i * tick
        m.handle(mido.Message("clock"))
    assert tempo.bpm == pytest.approx(90.0)
    assert tempo.beat_at(24 * tick) == pytest.approx(1.0)
    m.handle(mido.Message("stop"))
    assert not tempo.running
    m.handle(mido.Message("continue"))
    assert tempo.running


def test_clock_ignored_when_not_following(store: ParamStore) -> None:
    tempo = Tempo(120.0, clock=lambda: 0.0)
    m = MidiMapper(store, tempo=tempo, follow_clock=False)
    for i in range(30):
        m.handle(mido.Message("clock"), now=i * 0.001)
    assert tempo.bpm == 120.0


def test_other_messages_are_ignored(store: ParamStore) -> None:
    m = mapper_with(store, {"param": "delta", "cc": 1})
    before = store.values()
    for msg in (
        mido.Message("note_on", note=60),
        mido.Message("pitchwheel", pitch=100),
        mido.Message("sysex", data=[1]),
    ):
        m.handle(msg)
    assert store.values() == before


# ------------------------------------------------------------------ ports (fake backend)


class FakePort:
    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name, self.callback, self.closed = name, callback, False

    def close(self) -> None:
        self.closed = True


class FakeMido:
    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.opened: list[FakePort] = []
        self.fail = False

    def get_input_names(self) -> list[str]:
        if self.fail:
            raise OSError("ALSA lib seq_hw.c: cannot open")
        return list(self.names)

    def open_input(self, name: str, callback: Callable[[Any], None]) -> FakePort:
        port = FakePort(name, callback)
        self.opened.append(port)
        return port


def test_opens_by_substring_and_reconnects(store: ParamStore, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeMido(["Midi Through:0", "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0"])
    inp = MidiInput("nanokontrol", mapper_with(store, {"param": "delta", "cc": 0}), backend=backend)
    inp.poll_once()
    assert inp.connected_name == "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0"
    backend.opened[0].callback(cc(1, 0, 0))
    assert store.get("delta") == 0.0

    backend.names = ["Midi Through:0"]  # unplugged
    with caplog.at_level(logging.WARNING, logger="streamvj.midi"):
        inp.poll_once()
        inp.poll_once()
    assert inp.connected_name is None and backend.opened[0].closed
    assert "disconnected" in caplog.text and caplog.text.count("not found") == 1

    backend.names = ["Midi Through:0", "nanoKONTROL2:nanoKONTROL2 MIDI 1 24:0"]  # back, new number
    inp.poll_once()
    assert inp.connected_name == "nanoKONTROL2:nanoKONTROL2 MIDI 1 24:0" and len(backend.opened) == 2
    backend.opened[1].callback(cc(1, 0, 127))
    assert store.get("delta") == 5.0
    inp.stop()
    assert backend.opened[1].closed


def test_driver_errors_are_logged_not_raised(store: ParamStore, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeMido(["X"])
    backend.fail = True
    inp = MidiInput("x", MidiMapper(store), backend=backend)
    with caplog.at_level(logging.WARNING, logger="streamvj.midi"):
        inp.poll_once()
    assert "error polling ports" in caplog.text
    backend.fail = False
    inp.poll_once()
    assert inp.connected_name == "X"


def test_callback_errors_are_contained(store: ParamStore, caplog: pytest.LogCaptureFixture) -> None:
    class Boom(MidiMapper):
        def handle(self, msg: Any, now: float | None = None) -> None:
            raise RuntimeError("bug")

    backend = FakeMido(["X"])
    inp = MidiInput("x", Boom(store), backend=backend)
    inp.poll_once()
    with caplog.at_level(logging.WARNING, logger="streamvj.midi"):
        backend.opened[0].callback(cc(1, 1, 1))
    assert "error handling" in caplog.text


def test_thread_start_stop(store: ParamStore) -> None:
    backend = FakeMido(["X"])
    inp = MidiInput("x", MidiMapper(store), backend=backend, poll_s=0.01).start()
    inp.stop()  # the first poll runs before the loop: the port was opened, then closed
    assert backend.opened and backend.opened[0].closed


def test_from_settings(store: ParamStore) -> None:
    assert MidiInput.from_settings(MidiSettings(), store, backend=FakeMido([])) is None
    settings = MidiSettings(port="nano", clock=False, mappings=[MidiMapping(param="delta", cc=1)])
    inp = MidiInput.from_settings(settings, store, backend=FakeMido([]))
    assert inp is not None and inp.port_query == "nano"
    assert inp.mapper.mappings == settings.mappings and inp.mapper.follow_clock is False


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_rtmidi(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "rtmidi":
            raise ImportError("No module named 'rtmidi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rtmidi)
    with pytest.raises(BridgeUnavailable) as exc:
        load_backend()
    assert str(exc.value) == INSTALL_HINT and "pip install 'streamvj[midi]'" in INSTALL_HINT
    assert is_available() == (False, INSTALL_HINT)
    monkeypatch.undo()
    assert midi_mod.is_available() == (True, "")
