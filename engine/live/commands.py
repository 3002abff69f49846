"""Commands: every action a control surface can ask of the engine, each defined once.

A command is not a live parameter (those are `LIVE_SPECS`): it does something, e.g.
switch a preset, pause, tap the tempo. Each `Command` member carries its address suffix
(OSC sends it as `<prefix>/<address>`), its arguments and its doc. The OSC address table,
OSCQuery, docs/osc.md and the show's dispatch all derive from this enum, so adding a
command is one line here plus its handler.

Arguments are typed (str, float, int) so a bridge can convert its own wire types; their
ranges and choices are listed for docs and OSCQuery, and checked once by the code that
runs the command (Tempo for bpm and quanta, ParamStore for transition lengths, MIDI learn
for mappable parameters, the show for preset names), never by the bridge.

Who runs a command is its `target`: the show (preset switching, pause, reset, MIDI learn)
or the live controls (`run_live`: tempo and prompt/seed transitions, which only write
into the Tempo and the ParamStore).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from engine.config.schema import MIDI_MAPPABLE
from engine.errors import ConfigError
from engine.live.params import TRANSITION_MAX, ParamStore
from engine.live.tempo import BPM_MAX, BPM_MIN, QUANTA, Tempo


class Target(enum.Enum):
    SHOW = "show"  # engine.live.show.Show.on_command
    LIVE = "live"  # run_live: Tempo and ParamStore


@dataclass(frozen=True)
class Arg:
    """One positional argument: its Python type, and what is allowed (for docs and OSCQuery)."""

    name: str
    type: type  # str | float | int
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    presets: bool = False  # a preset name: the allowed values are the files in the presets folder
    optional: bool = False


@dataclass(frozen=True)
class CommandSpec:
    address: str
    target: Target
    args: tuple[Arg, ...]  # empty: a trigger (fires on no argument or a button press)
    doc: str


_LENGTH_S = Arg("seconds", float, 0.0, TRANSITION_MAX)
_LENGTH_BEATS = Arg("beats", float, 0.0, TRANSITION_MAX)
_QUANTUM = Arg("quantum", str, choices=QUANTA, optional=True)


class Command(enum.Enum):
    PRESET_LOAD = CommandSpec(
        "preset/load",
        Target.SHOW,
        (Arg("name", str, presets=True),),
        "Switch to preset NAME (presets/NAME.yaml; letters, digits, _ -)",
    )
    PRESET_NEXT = CommandSpec(
        "preset/next", Target.SHOW, (), "Switch to the next preset (alphabetical) that loads"
    )
    PRESET_PREV = CommandSpec(
        "preset/prev", Target.SHOW, (), "Switch to the previous preset (alphabetical) that loads"
    )
    PAUSE = CommandSpec("pause", Target.SHOW, (), "Freeze the output on the last frame")
    RESUME = CommandSpec("resume", Target.SHOW, (), "Resume after pause")
    RESET = CommandSpec(
        "reset", Target.SHOW, (), "Back to the current preset's live values and a fresh stream buffer"
    )
    MIDI_LEARN = CommandSpec(
        "midi/learn",
        Target.SHOW,
        (Arg("param", str, choices=MIDI_MAPPABLE),),
        "Map the next MIDI CC moved to this parameter",
    )
    TEMPO_BPM = CommandSpec(
        "tempo/bpm",
        Target.LIVE,
        (Arg("bpm", float, BPM_MIN, BPM_MAX),),
        "Set the tempo (BPM) used for beat-quantised changes",
    )
    TEMPO_TAP = CommandSpec("tempo/tap", Target.LIVE, (), "Tap tempo: each tap marks a beat")
    TEMPO_BEAT = CommandSpec("tempo/beat", Target.LIVE, (), "Same as tempo/tap")
    PROMPT_TRANSITION = CommandSpec(
        "prompt/transition",
        Target.LIVE,
        (Arg("text", str), _LENGTH_S),
        "Crossfade to a new prompt (text, seconds)",
    )
    PROMPT_TRANSITION_BEATS = CommandSpec(
        "prompt/transition_beats",
        Target.LIVE,
        (Arg("text", str), _LENGTH_BEATS, _QUANTUM),
        "Crossfade to a new prompt (text, beats), optionally starting on the next beat or bar",
    )
    SEED_TRANSITION = CommandSpec(
        "seed/transition",
        Target.LIVE,
        (Arg("seed", int), _LENGTH_S),
        "Crossfade the noise to a new seed (seed, seconds)",
    )
    SEED_TRANSITION_BEATS = CommandSpec(
        "seed/transition_beats",
        Target.LIVE,
        (Arg("seed", int), _LENGTH_BEATS, _QUANTUM),
        "Crossfade to a new seed (seed, beats), optionally starting on the next beat or bar",
    )

    @property
    def address(self) -> str:
        return self.value.address

    @property
    def target(self) -> Target:
        return self.value.target

    @property
    def args(self) -> tuple[Arg, ...]:
        return self.value.args

    @property
    def doc(self) -> str:
        return self.value.doc

    @property
    def is_trigger(self) -> bool:
        return not self.value.args


class CommandSink(Protocol):
    """Runs commands; `args` are already converted to each Arg's Python type, optional ones may be absent."""

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None: ...


def run_live(
    command: Command, args: tuple[Any, ...], store: ParamStore, tempo: Tempo | None, source: str = "api"
) -> None:
    """Run a `Target.LIVE` command; ConfigError names what was wrong (a range, a quantum, no tempo)."""
    handler = _LIVE.get(command)
    if handler is None:
        raise ConfigError(f"{command.address} is not a live control (its target is {command.target.value})")
    handler(args, store, tempo, source)


def _need_tempo(tempo: Tempo | None) -> Tempo:
    if tempo is None:
        raise ConfigError("no tempo attached (the engine was started without one)")
    return tempo


def _quantum(args: tuple[Any, ...]) -> Any:
    return args[2] if len(args) > 2 else None


_LiveHandler = Callable[[tuple[Any, ...], ParamStore, "Tempo | None", str], None]
_LIVE: dict[Command, _LiveHandler] = {
    Command.TEMPO_BPM: lambda a, s, t, src: _need_tempo(t).set_bpm(a[0], source=src),
    Command.TEMPO_TAP: lambda a, s, t, src: _need_tempo(t).tap(),
    Command.TEMPO_BEAT: lambda a, s, t, src: _need_tempo(t).tap(),
    Command.PROMPT_TRANSITION: lambda a, s, t, src: s.transition_prompt(a[0], duration_s=a[1], source=src),
    Command.PROMPT_TRANSITION_BEATS: lambda a, s, t, src: s.transition_prompt(
        a[0], beats=a[1], quantum=_quantum(a), source=src
    ),
    Command.SEED_TRANSITION: lambda a, s, t, src: s.transition_seed(a[0], duration_s=a[1], source=src),
    Command.SEED_TRANSITION_BEATS: lambda a, s, t, src: s.transition_seed(
        a[0], beats=a[1], quantum=_quantum(a), source=src
    ),
}
