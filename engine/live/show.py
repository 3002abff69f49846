"""The running set: which preset is on air, building the next one, and the live commands.

A preset switch whose differences are all live applies on the next frame. One that needs
another pipeline (model, size, steps, cfg...) is built on a background thread while the
current pipeline keeps playing, then swapped in between two frames; a build that fails
leaves the current preset playing and reports why. Preset names arrive already resolved
inside the presets folder (the OSC server never passes a path through).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from engine.config.preset_files import diff_load_time, list_presets, load_preset, resolve_preset
from engine.config.schema import Preset
from engine.core.build import build_pipeline
from engine.core.pipeline import StreamPipeline
from engine.errors import ConfigError, StreamVJError
from engine.live.params import ParamStore
from engine.live.player import LivePlayer
from engine.live.tempo import Tempo

log = logging.getLogger("streamvj.show")


def _timer(delay_s: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(delay_s, action)
    timer.daemon = True
    timer.start()

# Load-time fields the render pipeline does not depend on: they need a restart, not a rebuild.
BRIDGE_FIELDS = {"load.source", "load.sinks", "load.target_fps"}


class Controls(Protocol):
    """What the show needs from the runtime (engine.realtime.runtime.Runtime provides it)."""

    def call_soon(self, fn: Callable[[], Any]) -> Any: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Show:
    def __init__(self, presets_dir: str | Path, preset: Preset, preset_name: str, store: ParamStore,
                 player: LivePlayer, controls: Controls, build: Callable[[Preset], StreamPipeline] = build_pipeline,
                 midi_learn: Callable[[str], None] | None = None,
                 on_midi_mappings: Callable[[list], None] | None = None, transition_s: float = 0.0,
                 tempo: Tempo | None = None, quantum: str | None = None,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.presets_dir = Path(presets_dir)
        self.preset, self.preset_name = preset, preset_name
        self.store, self.player, self.controls, self.build = store, player, controls, build
        self.midi_learn, self.on_midi_mappings = midi_learn, on_midi_mappings
        self.transition_s = transition_s
        if quantum not in (None, "beat", "bar"):
            raise ConfigError(f"preset switches can be quantised to 'beat' or 'bar', got {quantum!r}")
        if quantum is not None and tempo is None:
            raise ConfigError("quantised preset switches need a tempo")
        self.tempo, self.quantum, self.clock = tempo, quantum, clock
        self.schedule = schedule or _timer
        self.state = "ready"
        self.last_error = ""
        self._building: threading.Thread | None = None
        self._lock = threading.Lock()
        self._watched: tuple[Path, float] | None = None
        self._watch_stop = threading.Event()

    # ---- CommandSink (OSC) ------------------------------------------------------------------------

    def on_command(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "preset/load":
            self.switch(str(args[0]), Path(args[1]) if len(args) > 1 else None)
        elif name in ("preset/next", "preset/prev"):
            self.step_preset(1 if name == "preset/next" else -1)
        elif name == "pause":
            self.controls.pause()
        elif name == "resume":
            self.controls.resume()
        elif name == "reset":
            self.controls.call_soon(lambda: self.player.pipeline.reset())
        elif name == "midi/learn":
            if self.midi_learn is None:
                log.warning("MIDI learn for %s ignored: no MIDI input is open (set midi.port in the preset)", args[0])
            else:
                self.midi_learn(str(args[0]))
        else:
            log.warning("unknown command %r ignored", name)

    # ---- timing -----------------------------------------------------------------------------------

    def _on_the_beat(self, action: Callable[[], None]) -> None:
        """Run `action` now, or on the next beat/bar when switches are quantised."""
        if self.quantum is None:
            action()
            return
        now = self.clock()
        delay = max(0.0, self.tempo.next_beat_time(now, self.quantum) - now)
        self.schedule(delay, action)

    # ---- presets ----------------------------------------------------------------------------------

    def step_preset(self, direction: int) -> None:
        names = list_presets(self.presets_dir)
        if not names:
            log.warning("no presets in %s", self.presets_dir)
            return
        index = names.index(self.preset_name) if self.preset_name in names else -direction
        self.switch(names[(index + direction) % len(names)])

    def _fail(self, message: str) -> None:
        self.last_error = message
        log.error(message)

    def switch(self, name: str, path: Path | None = None) -> None:
        """Switch to preset `name`; never raises (errors are reported, the current preset plays on)."""
        try:
            new = load_preset(path or resolve_preset(self.presets_dir, name))
        except StreamVJError as exc:
            self._fail(f"preset {name!r} not loaded: {exc}")
            return
        changes = diff_load_time(self.preset, new)
        restart_only = [c for c in changes if c in BRIDGE_FIELDS]
        if restart_only:
            log.warning("preset %s: %s change only on restart; keeping the current ones", name,
                        ", ".join(c.removeprefix("load.") for c in restart_only))
        rebuild = [c for c in changes if c not in BRIDGE_FIELDS]
        if not rebuild:
            def live_switch() -> None:
                self.store.apply_preset_live(new.live, transition_s=self.transition_s)
                self._adopt(new, name)
                log.info("preset %s on air (live values only)", name)

            self._on_the_beat(live_switch)
            return
        with self._lock:
            if self._building is not None and self._building.is_alive():
                self._fail(f"preset {name!r} ignored: still building the previous switch")
                return
            self.state = "building"
            self._building = threading.Thread(target=self._build_and_swap, args=(new, name, rebuild),
                                              name="streamvj-preset-build", daemon=True)
            self._building.start()

    def _adopt(self, preset: Preset, name: str) -> None:
        self.preset, self.preset_name = preset, name
        self.last_error = ""
        self._watched = None
        if self.on_midi_mappings is not None:
            self.on_midi_mappings(list(preset.midi.mappings))

    def _build_and_swap(self, new: Preset, name: str, changes: list[str]) -> None:
        started = time.monotonic()
        log.info("building preset %s (%s changed) while the current one plays", name, ", ".join(changes))
        try:
            pipeline = self.build(new)
        except StreamVJError as exc:
            self.state = "running"
            self._fail(f"preset {name!r} failed to build, keeping {self.preset_name!r}: {exc}")
            return
        except Exception as exc:  # a build must never take the show down; report and keep playing
            self.state = "running"
            self._fail(f"preset {name!r} failed to build, keeping {self.preset_name!r}: "
                       f"{type(exc).__name__}: {exc}")
            return

        def go_on_air() -> None:
            self.store.apply_preset_live(new.live)
            self.player.swap(pipeline)
            self._adopt(new, name)
            self.state = "running"
            log.info("preset %s on air (built in %.1f s)", name, time.monotonic() - started)

        self._on_the_beat(lambda: self.controls.call_soon(go_on_air))

    # ---- editing presets on disk ------------------------------------------------------------------

    def check_for_edits(self) -> bool:
        """Reload the on-air preset when its file changed on disk; True when a reload started."""
        try:
            path = resolve_preset(self.presets_dir, self.preset_name)
            mtime = path.stat().st_mtime
        except (StreamVJError, OSError):
            return False  # not a file in the folder (e.g. a --preset path): nothing to watch
        if self._watched is None or self._watched[0] != path:
            self._watched = (path, mtime)
            return False
        if mtime == self._watched[1]:
            return False
        self._watched = (path, mtime)
        log.info("preset %s changed on disk: reloading", self.preset_name)
        self.switch(self.preset_name, path)
        return True

    def watch(self, interval_s: float = 1.0) -> threading.Thread:
        """Poll the on-air preset's file for edits on a daemon thread until `stop_watching`."""

        def loop() -> None:
            while not self._watch_stop.wait(interval_s):
                self.check_for_edits()

        thread = threading.Thread(target=loop, name="streamvj-preset-watch", daemon=True)
        thread.start()
        return thread

    def stop_watching(self) -> None:
        self._watch_stop.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a background build to finish (tests, shutdown)."""
        thread = self._building
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True
