"""The running set: which preset is on air, switching to the next one, and the show's commands.

A preset switch whose differences are all live applies on the next frame. One that needs
another pipeline (model, size, steps, cfg...) is built on a background thread while the
current pipeline keeps playing, then swapped in between two frames; a build that fails
leaves the current preset playing and reports why (`status().error`, sent as OSC
feedback). Preset names are plain ids resolved here, inside the presets folder.

What a switch needs is engine.live.preset_diff's call; when it happens (now or on the
beat) engine.live.quantise's; watching the file for edits is engine.live.preset_watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.config.preset_files import list_presets, load_preset, resolve_preset
from engine.config.schema import Preset
from engine.core.build import build_pipeline
from engine.core.pipeline import StreamPipeline
from engine.errors import ConfigError, StreamVJError, first_line, shown
from engine.live.commands import Command
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from engine.live.preset_diff import plan_switch
from engine.live.quantise import now

log = logging.getLogger("streamvj.show")


class Controls(Protocol):
    """What the show needs from the runtime (engine.realtime.runtime.Runtime provides it)."""

    def call_soon(self, fn: Callable[[], Any]) -> Any: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


@dataclass(frozen=True)
class ShowStatus:
    """One consistent look at the show (the status line and OSC feedback read this)."""

    state: str  # "ready", "building" (a switch is being built) or "running"
    preset: str
    error: str  # what the last refused command or failed switch was; "" once a preset goes on air


class Show:
    def __init__(self, presets_dir: str | Path, preset: Preset, preset_name: str, store: ParamStore,
                 player: LivePlayer, controls: Controls, build: Callable[[Preset], StreamPipeline] = build_pipeline,
                 midi_learn: Callable[[str], None] | None = None,
                 on_midi_mappings: Callable[[list], None] | None = None, transition_s: float = 0.0,
                 on_the_beat: Callable[[Callable[[], None]], None] = now):
        self.presets_dir = Path(presets_dir)
        self.store, self.player, self.controls, self.build = store, player, controls, build
        self.midi_learn, self.on_midi_mappings = midi_learn, on_midi_mappings
        self.transition_s = transition_s
        self.on_the_beat = on_the_beat  # engine.live.quantise: now, or a Quantiser (next beat/bar)
        # Written by the OSC thread (commands), the build thread and the render thread (go on air).
        self._lock = threading.Lock()
        self._preset, self._preset_name = preset, preset_name
        self._state, self._error = "ready", ""
        self._building: str | None = None  # the preset being built, until it is on air or failed
        self._build_thread: threading.Thread | None = None
        self._bad: dict[str, tuple[float, str]] = {}  # preset -> (file mtime, why it failed to build)

    # ---- what is on air (any thread) ----------------------------------------------------------------

    @property
    def preset(self) -> Preset:
        with self._lock:
            return self._preset

    @property
    def preset_name(self) -> str:
        with self._lock:
            return self._preset_name

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._error

    def status(self) -> ShowStatus:
        with self._lock:
            return ShowStatus(self._state, self._preset_name, self._error)

    def _fail(self, message: str) -> None:
        with self._lock:
            self._error = message
        log.error(message)

    # ---- CommandSink (OSC) ------------------------------------------------------------------------

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None:
        """Run a `Target.SHOW` command; never raises (what it refuses is reported, see `_fail`)."""
        if command is Command.PRESET_LOAD:
            self.switch(str(args[0]))
        elif command is Command.PRESET_NEXT:
            self.step_preset(1)
        elif command is Command.PRESET_PREV:
            self.step_preset(-1)
        elif command is Command.PAUSE:
            self.controls.pause()
        elif command is Command.RESUME:
            self.controls.resume()
        elif command is Command.RESET:
            self.reset()
        elif command is Command.MIDI_LEARN:
            self._midi_learn(str(args[0]))
        else:
            self._fail(f"command {command.address} is not the show's to run (target {command.target.value})")

    def reset(self) -> None:
        """Back to the on-air preset's live values (a cut, no slew) and a freshly primed stream batch."""
        self.store.apply_preset_live(self.preset.live, cut=True, choices=self.preset.load.live_choices)
        self.controls.call_soon(lambda: self.player.pipeline.reset())

    def _midi_learn(self, param: str) -> None:
        if self.midi_learn is None:
            self._fail(f"MIDI learn for {shown(param)} ignored: no MIDI input is open (set midi.port in the preset)")
            return
        try:
            self.midi_learn(param)
        except ConfigError as exc:
            self._fail(str(exc))

    # ---- presets ----------------------------------------------------------------------------------

    def switch(self, name: str, path: Path | None = None) -> None:
        """Switch to preset `name`; never raises (errors are reported, the current preset plays on)."""
        try:
            new = self._load(name, path)
        except StreamVJError as exc:
            self._fail(f"preset {shown(name)} not loaded: {exc}")
            return
        self._go(new, name)

    def step_preset(self, direction: int) -> None:
        """The next (+1) or previous (-1) preset in the folder that loads; the ones that do not are skipped."""
        names = list_presets(self.presets_dir)
        if not names:
            self._fail(f"no presets in {self.presets_dir}")
            return
        current = self.preset_name
        if current in names:
            i = names.index(current)
            candidates = [names[(i + direction * k) % len(names)] for k in range(1, len(names))]
        else:
            candidates = names if direction > 0 else names[::-1]
        self._step(candidates, [], "next" if direction > 0 else "previous")

    def _step(self, candidates: list[str], skipped: list[str], which: str) -> None:
        for k, name in enumerate(candidates):
            try:
                new = self._load(name)
            except StreamVJError as exc:
                skipped.append(f"{name} ({first_line(exc)})")
                continue
            bad = self._known_bad(name)
            if bad:
                skipped.append(f"{name} (failed to build: {bad})")
                continue
            if skipped:
                log.warning("%s preset: skipped %s", which, "; ".join(skipped))

            def try_further(reason: str, rest: list[str] = candidates[k + 1:], name: str = name) -> None:
                self._step(rest, [*skipped, f"{name} (failed to build: {reason})"], which)

            self._go(new, name, on_build_failed=try_further)
            return
        self._fail(f"no {which} preset loads; staying on {self.preset_name!r}"
                   + (f"; skipped {'; '.join(skipped)}" if skipped else ""))

    def _load(self, name: str, path: Path | None = None) -> Preset:
        return load_preset(path or resolve_preset(self.presets_dir, name))

    def _known_bad(self, name: str) -> str:
        """Why `name` failed to build, if it did and its file has not changed since."""
        with self._lock:
            bad = self._bad.get(name)
        return bad[1] if bad is not None and bad[0] == _mtime(self.presets_dir, name) else ""

    def _go(self, new: Preset, name: str, on_build_failed: Callable[[str], None] | None = None) -> None:
        plan = plan_switch(self.preset, new)
        if plan.restart_only:
            log.warning("preset %s: %s change only on restart; keeping the current ones", name,
                        ", ".join(c.removeprefix("load.") for c in plan.restart_only))
        if plan.live_only:
            def live_switch() -> None:
                self.store.apply_preset_live(new.live, transition_s=self.transition_s, choices=new.load.live_choices)
                self._adopt(new, name)
                log.info("preset %s on air (live values only)", name)

            self.on_the_beat(live_switch)
            return
        with self._lock:
            if self._building is not None:
                busy = self._building
            else:
                busy, self._building, self._state = None, name, "building"
        if busy is not None:
            self._fail(f"preset {name!r} ignored: still building {busy!r}")
            return
        thread = threading.Thread(target=self._build_and_swap, args=(new, name, plan.rebuild, on_build_failed),
                                  name="streamvj-preset-build", daemon=True)
        with self._lock:  # started under the lock: wait_idle never sees a thread it cannot join yet
            self._build_thread = thread
            thread.start()

    def _adopt(self, preset: Preset, name: str) -> None:
        with self._lock:
            self._preset, self._preset_name, self._error = preset, name, ""
        if self.on_midi_mappings is not None:
            self.on_midi_mappings(list(preset.midi.mappings))

    def _build_and_swap(self, new: Preset, name: str, changes: list[str],
                        on_build_failed: Callable[[str], None] | None) -> None:
        started = time.monotonic()
        log.info("building preset %s (%s changed) while the current one plays", name, ", ".join(changes))
        try:
            pipeline = self.build(new)
        except Exception as exc:  # a build must never take the show down; report and keep playing
            reason = str(exc) if isinstance(exc, StreamVJError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._bad[name] = (_mtime(self.presets_dir, name), first_line(reason))
                self._building, self._state = None, "running"
            self._fail(f"preset {name!r} failed to build, keeping {self.preset_name!r}: {reason}")
            if on_build_failed is not None:
                on_build_failed(first_line(reason))
            return

        def go_on_air() -> None:
            self.store.apply_preset_live(new.live, choices=new.load.live_choices)
            self.player.swap(pipeline)
            self._adopt(new, name)
            with self._lock:
                self._building, self._state = None, "running"
                self._bad.pop(name, None)
            log.info("preset %s on air (built in %.1f s)", name, time.monotonic() - started)

        self.on_the_beat(lambda: self.controls.call_soon(go_on_air))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for background builds to finish, including the next ones a skipping step starts (tests,
        shutdown); False on timeout. A built preset may still wait for its frame to go on air."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._build_thread
            if thread is None:
                return True
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
            with self._lock:
                if self._build_thread is thread:
                    return True


def _mtime(presets_dir: Path, name: str) -> float:
    try:
        return resolve_preset(presets_dir, name).stat().st_mtime
    except (StreamVJError, OSError):
        return -1.0
