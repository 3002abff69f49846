from __future__ import annotations

import re

import pytest

from engine.config.schema import LiveParams
from engine.errors import ConfigError
from engine.live.commands import Command, Target, run_live
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from tests.paths import REPO


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tempo(clock: Clock) -> Tempo:
    return Tempo(120.0, clock=clock)


@pytest.fixture
def store(clock: Clock, tempo: Tempo) -> ParamStore:
    return ParamStore(LiveParams(prompt="start", seed=1), clock=clock, tempo=tempo)


def test_addresses_are_unique_and_well_formed() -> None:
    addresses = [c.address for c in Command]
    assert len(set(addresses)) == len(addresses)
    assert all(re.fullmatch(r"[a-z_]+(/[a-z_]+)?", a) for a in addresses)
    assert all(c.doc for c in Command)
    # Only the last arguments may be optional (a bridge fills them positionally).
    for command in Command:
        flags = [a.optional for a in command.args]
        assert flags == sorted(flags), command


def test_each_command_name_is_defined_once_in_the_source() -> None:
    """A command's address is spelled in commands.py only; everything else derives from the enum."""
    sources = [p for d in ("engine", "bridges") for p in (REPO / d).rglob("*.py")] + [REPO / "run_engine.py"]
    for command in Command:
        literal = re.compile(rf"""["']{re.escape(command.address)}["']""")
        spelled = sorted(str(p.relative_to(REPO)) for p in sources if literal.search(p.read_text()))
        assert spelled == ["engine/live/commands.py"], (command, spelled)


def test_show_and_live_targets() -> None:
    show = {c for c in Command if c.target is Target.SHOW}
    assert {Command.PRESET_LOAD, Command.PRESET_NEXT, Command.RESET, Command.MIDI_LEARN} <= show
    assert Command.TEMPO_TAP not in show and Command.PROMPT_TRANSITION not in show


def test_run_live_tempo(tempo: Tempo, store: ParamStore, clock: Clock) -> None:
    run_live(Command.TEMPO_BPM, (140.0,), store, tempo, "osc")
    assert (tempo.bpm, tempo.source) == (140.0, "osc")
    run_live(Command.TEMPO_TAP, (), store, tempo)
    clock.t += 0.5
    run_live(Command.TEMPO_BEAT, (), store, tempo)
    assert tempo.source == "tap" and tempo.bpm == pytest.approx(120.0)


def test_run_live_transitions(store: ParamStore, clock: Clock) -> None:
    run_live(Command.PROMPT_TRANSITION, ("glass", 2.0), store, None)
    assert store.get("prompt") == "glass"
    clock.t += 1.0
    assert store.snapshot().prompt_blend == [("start", 0.5), ("glass", 0.5)]
    run_live(Command.SEED_TRANSITION_BEATS, (9, 4.0, "bar"), store, None)
    assert store.get("seed") == 9
    run_live(Command.SEED_TRANSITION_BEATS, (10, 4.0), store, None)  # the quantum is optional
    assert store.get("seed") == 10


@pytest.mark.parametrize(
    "command, args, reason",
    [
        (Command.TEMPO_BPM, (1000.0,), "bpm must be 20..300"),
        (Command.PROMPT_TRANSITION, ("x", -1.0), "0..600"),
        (Command.PROMPT_TRANSITION_BEATS, ("x", 4.0, "phrase"), "quantum must be 'beat' or 'bar'"),
        (Command.PAUSE, (), "not a live control"),
    ],
)
def test_run_live_refuses_with_reason(
    command: Command, args: tuple, reason: str, store: ParamStore, tempo: Tempo
) -> None:
    before = store.values()
    with pytest.raises(ConfigError, match=re.escape(reason)):
        run_live(command, args, store, tempo)
    assert store.values() == before


def test_tempo_commands_need_a_tempo(store: ParamStore) -> None:
    with pytest.raises(ConfigError, match="no tempo"):
        run_live(Command.TEMPO_TAP, (), store, None)
