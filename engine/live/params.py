"""ParamStore: the live parameters, written by OSC/MIDI threads, read once per frame.

Writers call `set` (validated against the LiveParams schema, so OSC, MIDI and presets
obey the same rules); the render loop calls `snapshot(now)` once per frame and gets
one consistent `LiveParams` with smoothing and transitions evaluated at `now`. The
clock is injected and nothing here sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from engine.config.preset_files import format_validation_error
from engine.config.schema import LIVE_SPECS, MAX_BLEND, SMOOTHABLE, LiveParams
from engine.errors import ConfigError, shown
from engine.live.smoothing import Crossfade, Curve, Ramp, merge_weights, retarget
from engine.live.tempo import Quantum, Tempo

log = logging.getLogger("streamvj.params")

TRANSITION_MAX = 600.0  # longest prompt/seed crossfade, in seconds or beats

Listener = Callable[[str, Any, str], None]


class ParamStore:
    """Thread-safe live parameters with per-parameter slew and prompt/seed crossfades.

    `steps` fixes len(t_index_list) (the step count the pipeline was built with); a
    preset with another step count is applied with `apply_preset_live` at the moment
    the rebuilt pipeline goes on air.
    """

    def __init__(
        self,
        live: LiveParams | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        curve: Curve = "linear",
        tempo: Tempo | None = None,
        choices: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        live = live if live is not None else LiveParams()
        self._clock = clock
        self._curve: Curve = curve
        self.tempo = tempo
        self._lock = threading.Lock()
        self._targets: dict[str, Any] = live.model_dump()
        self._ramps: dict[str, Ramp] = {}
        self._prompt_fade: Crossfade | None = None
        self._seed_fade: Crossfade | None = None
        self._listeners: list[Listener] = []
        self._version = 0
        self.steps = len(live.t_index_list)
        # Values some parameters are held to by the pipeline on air (LoadSettings.live_choices: a ControlNet's
        # listed sources and preprocessors), checked at the door like the step count; replaced, never mutated.
        self.choices: Mapping[str, tuple[str, ...]] = dict(choices or {})

    # ------------------------------------------------------------------ reading

    @property
    def version(self) -> int:
        """Increments on every accepted change; cheap "did anything change" check."""
        return self._version

    def get(self, name: str) -> Any:
        """The target value (what was last set), not the smoothed one."""
        with self._lock:
            if name not in self._targets:
                raise ConfigError(f"unknown live parameter {shown(name)}")
            return _copy(self._targets[name])

    def values(self) -> dict[str, Any]:
        with self._lock:
            return {k: _copy(v) for k, v in self._targets.items()}

    def snapshot(self, now: float | None = None) -> LiveParams:
        """One consistent set of values for one frame, smoothing applied at `now`."""
        with self._lock:
            now = self._clock() if now is None else now
            vals = {k: _copy(v) for k, v in self._targets.items()}
            for name, ramp in list(self._ramps.items()):
                vals[name] = ramp.value(now)
                if ramp.done(now):
                    del self._ramps[name]
            if self._prompt_fade is not None:
                if self._prompt_fade.done(now):
                    self._prompt_fade = None
                else:
                    vals["prompt_blend"] = self._prompt_fade.mix(now)
            if self._seed_fade is not None:
                if self._seed_fade.done(now):
                    self._seed_fade = None
                else:
                    vals["seed_blend"] = self._seed_fade.mix(now)
        # Values were validated on the way in; skip re-validation on the per-frame path.
        return LiveParams.model_construct(**vals)

    def add_listener(self, fn: Listener) -> None:
        """fn(name, value, source) after every accepted change (called outside the lock)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling `fn` (a server that stopped); unknown listeners are ignored."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    # ------------------------------------------------------------------ writing

    def validate(self, name: str, value: Any, source: str = "api") -> Any:
        """The value as the schema accepts it, or ConfigError naming the reason."""
        if name not in LIVE_SPECS:
            raise ConfigError(f"{source}: unknown live parameter {shown(name)}; known: {', '.join(LIVE_SPECS)}")
        try:
            checked = getattr(LiveParams.model_validate({name: value}), name)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source)) from None
        allowed = self.choices.get(name)
        if allowed is not None and checked not in allowed:
            raise ConfigError(f"{source}: {name}: {shown(value)} is not among this preset's choices "
                              f"({', '.join(allowed)}; a preset lists them in load.controlnets)")
        if name == "t_index_list" and len(checked) != self.steps:
            raise ConfigError(
                f"{source}: t_index_list: needs exactly {self.steps} entries (the step count is fixed "
                f"when the pipeline is built; switch to a preset with another count to change it) (got {shown(value)})"
            )
        return checked

    def set(self, name: str, value: Any, source: str = "api", now: float | None = None) -> Any:
        """Validate and set one parameter; float params slew if `smoothing` names them."""
        checked = self.validate(name, value, source)
        with self._lock:
            now = self._clock() if now is None else now
            self._assign(name, checked, now)
        self._notify(name, checked, source)
        return checked

    def set_smoothing(self, name: str, seconds: float, source: str = "api") -> None:
        with self._lock:
            smoothing = dict(self._targets["smoothing"])
        smoothing[name] = seconds
        if seconds == 0:
            smoothing.pop(name)
        self.set("smoothing", smoothing, source)

    def _assign(self, name: str, value: Any, now: float) -> None:
        # Caller holds the lock.
        if name in SMOOTHABLE:
            seconds = self._targets["smoothing"].get(name, 0.0)
            current = self._ramps[name].value(now) if name in self._ramps else self._targets[name]
            if seconds > 0.0 and current != value:
                self._ramps[name] = retarget(current, value, now, seconds, self._curve)
            else:
                self._ramps.pop(name, None)
        elif name in ("prompt", "prompt_blend"):
            self._prompt_fade = None  # a direct write is a hard cut
        elif name in ("seed", "seed_blend"):
            self._seed_fade = None
        self._targets[name] = value
        self._version += 1

    def _notify(self, name: str, value: Any, source: str) -> None:
        for fn in list(self._listeners):
            fn(name, value, source)

    # ------------------------------------------------------------------ transitions

    def _timing(
        self, duration_s: float | None, beats: float | None, quantum: Quantum | None, now: float
    ) -> tuple[float, float]:
        if (duration_s is None) == (beats is None):
            raise ConfigError("transition: give exactly one of duration_s or beats")
        length = duration_s if duration_s is not None else beats
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not 0.0 <= length <= TRANSITION_MAX:
            raise ConfigError(
                f"transition: duration must be 0..{TRANSITION_MAX:g} (seconds or beats), got {shown(length)}"
            )
        if (beats is not None or quantum is not None) and self.tempo is None:
            raise ConfigError("transition: beats/quantum need a Tempo (none attached to the ParamStore)")
        start = self.tempo.next_beat_time(now, quantum) if quantum is not None and self.tempo else now
        seconds = self.tempo.seconds_for(float(beats)) if beats is not None and self.tempo else float(length)
        return start, seconds

    def transition_prompt(
        self,
        text: str,
        *,
        duration_s: float | None = None,
        beats: float | None = None,
        quantum: Quantum | None = None,
        now: float | None = None,
        source: str = "api",
    ) -> None:
        """Crossfade from whatever is showing now to `text` (via prompt_blend weights).

        `quantum` ("beat"/"bar") delays the start to the next beat or bar; when the fade
        ends, `prompt` is `text` and `prompt_blend` is empty.
        """
        self._transition("prompt", text, duration_s, beats, quantum, now, source)

    def transition_seed(
        self,
        seed: int,
        *,
        duration_s: float | None = None,
        beats: float | None = None,
        quantum: Quantum | None = None,
        now: float | None = None,
        source: str = "api",
    ) -> None:
        """Crossfade the noise from the current seed (mix) to `seed` via seed_blend."""
        self._transition("seed", seed, duration_s, beats, quantum, now, source)

    def _transition(
        self,
        name: Literal["prompt", "seed"],
        value: Any,
        duration_s: float | None,
        beats: float | None,
        quantum: Quantum | None,
        now: float | None,
        source: str,
    ) -> None:
        # Shared by transition_prompt/transition_seed: `name` is "prompt" or "seed", whose
        # crossfade lives in self._<name>_fade and whose blend param is <name>_blend.
        value = self.validate(name, value, source)
        fade_attr = f"_{name}_fade"
        with self._lock:
            now = self._clock() if now is None else now
            start, seconds = self._timing(duration_s, beats, quantum, now)
            src = self._current_mix(now, name, f"{name}_blend", getattr(self, fade_attr))
            self._targets[name] = value
            self._targets[f"{name}_blend"] = []
            setattr(self, fade_attr, Crossfade(tuple(src), value, start, seconds))
            self._version += 1
        self._notify(name, value, source)

    def _current_mix(
        self, now: float, single: str, blend: str, fade: Crossfade | None
    ) -> list[tuple[Any, float]]:
        # Start a new fade from exactly what is on screen, so retriggering never jumps.
        if fade is not None and not fade.done(now):
            mix = fade.mix(now)
        elif self._targets[blend]:
            mix = merge_weights(list(self._targets[blend]), MAX_BLEND)
        else:
            mix = [(self._targets[single], 1.0)]
        return merge_weights(mix, MAX_BLEND - 1)

    # ------------------------------------------------------------------ presets

    def apply_preset_live(
        self, live: LiveParams, *, now: float | None = None, transition_s: float = 0.0, cut: bool = False,
        choices: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Take over a preset's live values.

        Float params slew with the preset's own `smoothing`; with `transition_s` > 0 a
        changed prompt or seed crossfades instead of cutting. `cut` jumps to every value at
        once (a reset). The step count follows len(live.t_index_list): call this when the
        pipeline built for it goes on air. `choices` (the new load's `live_choices`) replace the old ones.
        """
        live = LiveParams.model_validate(live.model_dump())
        with self._lock:
            now = self._clock() if now is None else now
            old = dict(self._targets)
            prompt_src = self._current_mix(now, "prompt", "prompt_blend", self._prompt_fade)
            seed_src = self._current_mix(now, "seed", "seed_blend", self._seed_fade)
            self.steps = len(live.t_index_list)
            if choices is not None:
                self.choices = dict(choices)
            self._targets["smoothing"] = dict(live.smoothing)
            for name in LIVE_SPECS:
                if name != "smoothing":
                    self._assign(name, getattr(live, name), now)
            if cut:
                self._ramps.clear()
            # Crossfades go to a single prompt/seed; a preset that sets a blend cuts to it.
            if not cut and transition_s > 0.0 and not live.prompt_blend and live.prompt != old["prompt"]:
                self._prompt_fade = Crossfade(tuple(prompt_src), live.prompt, now, transition_s)
            if not cut and transition_s > 0.0 and not live.seed_blend and live.seed != old["seed"]:
                self._seed_fade = Crossfade(tuple(seed_src), live.seed, now, transition_s)
            changed = [(k, _copy(v)) for k, v in self._targets.items() if v != old[k]]
        for name, value in changed:
            self._notify(name, value, "preset")


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return dict(v)
    return v
