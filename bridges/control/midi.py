"""MIDI control: CC -> live parameters (7- and 14-bit), learn mode, clock -> tempo.

`MidiMapper` is the pure logic, fed mido Messages (tests build them directly).
`MidiInput` owns the port: it finds it by name (substring, case-insensitive, since
Windows appends a changing number), and polls every second so a controller that is
unplugged and plugged back in reconnects by itself. mido and python-rtmidi are the
optional extra `midi`, imported only when a port is opened.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.config.schema import LIVE_SPECS, MIDI_MAPPABLE, MidiMapping, MidiSettings
from engine.errors import BridgeUnavailable, ConfigError, shown
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from engine.realtime.log_limit import LogLimiter
from engine.realtime.periodic import Periodic

log = logging.getLogger("streamvj.midi")

INSTALL_HINT = "MIDI needs mido and python-rtmidi: pip install 'streamvj[midi]'"
_CURVE_K = 4.0  # exp/log steepness: exp puts ~half the knob travel in the lowest ~12% of the range


def load_backend() -> Any:
    """The mido module with the rtmidi backend, or BridgeUnavailable naming the extra."""
    try:
        import mido
        import rtmidi  # noqa: F401  (mido's default backend; fail here with the hint, not at open)
    except ImportError:
        raise BridgeUnavailable(INSTALL_HINT) from None
    return mido


def is_available() -> tuple[bool, str]:
    try:
        load_backend()
    except BridgeUnavailable as exc:
        return False, str(exc)
    return True, ""


def apply_curve(x: float, curve: str) -> float:
    """Map 0..1 knob travel to 0..1 output: linear, exp (fine at the low end) or log (its inverse)."""
    if curve == "exp":
        return (math.exp(_CURVE_K * x) - 1.0) / (math.exp(_CURVE_K) - 1.0)
    if curve == "log":
        return math.log1p(x * (math.exp(_CURVE_K) - 1.0)) / _CURVE_K
    return x


class MidiMapper:
    """Turns MIDI messages into ParamStore writes and Tempo updates. Thread-safe."""

    def __init__(
        self,
        store: ParamStore,
        mappings: list[MidiMapping] | None = None,
        *,
        tempo: Tempo | None = None,
        follow_clock: bool = True,
        on_learned: Callable[[MidiMapping], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.tempo = tempo
        self.follow_clock = follow_clock
        self.on_learned = on_learned
        self._clock = clock
        self._lock = threading.Lock()
        self._mappings: list[MidiMapping] = list(mappings or [])
        self._msb: dict[tuple[int, int], int] = {}
        self._learning: tuple[str, int | None] | None = None
        self._learn_tail: MidiMapping | None = None  # just learned a CC 0-31: an LSB next means 14-bit
        self._limiter = LogLimiter(log, clock=clock)

    @property
    def mappings(self) -> list[MidiMapping]:
        with self._lock:
            return list(self._mappings)

    def set_mappings(self, mappings: list[MidiMapping]) -> None:
        """Replace all mappings (a preset switch); learned ones are kept only if passed back in."""
        with self._lock:
            self._mappings = list(mappings)
            self._msb.clear()

    def learn(self, param: str, index: int | None = None) -> None:
        """Map the next CC moved to `param` (for t_index_list, step `index`, default 0)."""
        if param not in MIDI_MAPPABLE:
            raise ConfigError(f"midi learn: cannot map {shown(param)}; mappable: {', '.join(MIDI_MAPPABLE)}")
        if LIVE_SPECS[param].kind == "int_list" and index is None:
            index = 0  # the first step is the one that sets how much the input changes
        with self._lock:
            self._learning = (param, index)
        log.info("MIDI learn: move a control to map it to %s", param)

    def cancel_learn(self) -> None:
        with self._lock:
            self._learning = None

    @property
    def learning(self) -> str | None:
        with self._lock:
            return self._learning[0] if self._learning else None

    # ---------------------------------------------------------------- messages

    def handle(self, msg: Any, now: float | None = None) -> None:
        kind = getattr(msg, "type", None)
        if kind == "control_change":
            self._control_change(msg.channel + 1, msg.control, msg.value)
        elif kind in ("clock", "start", "stop", "continue") and self.follow_clock and self.tempo is not None:
            now = self._clock() if now is None else now
            if kind == "clock":
                self.tempo.midi_tick(now)
            elif kind == "start":
                self.tempo.midi_start(now)
            elif kind == "stop":
                self.tempo.midi_stop()
            else:
                self.tempo.midi_continue()

    def _control_change(self, channel: int, cc: int, value: int) -> None:
        learned = self._maybe_learn(channel, cc)
        with self._lock:
            if cc < 32:
                # MIDI 1.0: a new MSB resets the LSB to 0; the LSB (cc+32) refines it.
                self._msb[(channel, cc)] = value
            targets = []
            for m in self._mappings:
                if m.channel != channel:
                    continue
                if m.bits == 7 and m.cc == cc:
                    targets.append((m, value / 127.0))
                elif m.bits == 14 and m.cc == cc:
                    targets.append((m, value * 128 / 16383.0))
                elif m.bits == 14 and m.cc + 32 == cc:
                    targets.append((m, (self._msb.get((channel, m.cc), 0) * 128 + value) / 16383.0))
        if learned is not None and self.on_learned is not None:
            self.on_learned(learned)
        for mapping, x in targets:
            self._apply(mapping, x)

    def _maybe_learn(self, channel: int, cc: int) -> MidiMapping | None:
        with self._lock:
            tail, self._learn_tail = self._learn_tail, None
            if tail is not None and tail.channel == channel and tail.cc + 32 == cc and tail.bits == 7:
                upgraded = tail.model_copy(update={"bits": 14})
                self._mappings = [upgraded if m is tail else m for m in self._mappings]
                learned = upgraded
            elif self._learning is not None:
                param, index = self._learning
                self._learning = None
                learned = MidiMapping(param=param, channel=channel, cc=cc, index=index)
                # One control drives one thing: drop what this CC (or its LSB) drove before.
                self._mappings = [m for m in self._mappings if (m.channel, m.cc) != (channel, cc)] + [learned]
                if cc < 32:
                    self._learn_tail = learned
            else:
                return None
        extra = f", index: {learned.index}" if learned.index is not None else ""
        log.info(
            "MIDI learn: %s <- channel %d CC %d (%d-bit); preset line: - {param: %s, channel: %d, cc: %d, bits: %d%s}",
            *(learned.param, learned.channel, learned.cc, learned.bits),
            *(learned.param, learned.channel, learned.cc, learned.bits, extra),
        )
        return learned

    def _apply(self, m: MidiMapping, x: float) -> None:
        spec = LIVE_SPECS[m.param]
        lo = m.min if m.min is not None else spec.min
        hi = m.max if m.max is not None else spec.max
        if spec.kind != "bool" and (lo is None or hi is None):
            return
        y = apply_curve(min(1.0, max(0.0, x)), m.curve)
        try:
            if spec.kind == "bool":
                value: Any = y >= 0.5
            elif spec.kind == "float":
                value = lo + (hi - lo) * y
            elif spec.kind == "int":
                value = int(round(lo + (hi - lo) * y))
            else:
                value = self._t_index_value(m, int(round(lo + (hi - lo) * y)))
            self.store.set(m.param, value, source="midi")
        except ConfigError as exc:
            self._limiter.warning(
                (m.param, m.channel, m.cc), f"MIDI channel {m.channel} CC {m.cc} -> {m.param}: {exc}"
            )

    def _t_index_value(self, m: MidiMapping, v: int) -> list[int]:
        current = list(self.store.get("t_index_list"))
        i = m.index or 0
        if i >= len(current):
            raise ConfigError(f"index {i} is past the last step (the pipeline has {len(current)})")
        # A knob on one step stops at its neighbours: the list must stay strictly increasing.
        low = current[i - 1] + 1 if i > 0 else 0
        high = current[i + 1] - 1 if i + 1 < len(current) else 49
        current[i] = min(high, max(low, v))
        return current


class MidiInput:
    """Keeps one input port open by name, reconnecting when the device comes back."""

    def __init__(
        self, port: str, mapper: MidiMapper, *, backend: Any | None = None, poll_s: float = 1.0
    ) -> None:
        self.port_query = port
        self.mapper = mapper
        self.poll_s = poll_s
        self._backend = backend if backend is not None else load_backend()
        self._port: Any = None
        self._name: str | None = None
        self._poller = Periodic("streamvj-midi", poll_s, self.poll_once, immediately=True)
        self._limiter = LogLimiter(log)

    @classmethod
    def from_settings(
        cls,
        settings: MidiSettings,
        store: ParamStore,
        *,
        tempo: Tempo | None = None,
        backend: Any | None = None,
        on_learned: Callable[[MidiMapping], None] | None = None,
    ) -> MidiInput | None:
        """The input for a preset's `midi:` section, or None when no port is set (MIDI off)."""
        if settings.port is None:
            return None
        mapper = MidiMapper(
            store, settings.mappings, tempo=tempo, follow_clock=settings.clock, on_learned=on_learned
        )
        return cls(settings.port, mapper, backend=backend)

    @property
    def connected_name(self) -> str | None:
        return self._name

    def poll_once(self) -> None:
        """Open the port if it appeared, close it if it vanished (the thread calls this each poll_s)."""
        try:
            names = list(self._backend.get_input_names())
            if self._port is not None and self._name not in names:
                log.warning("MIDI input %r disconnected; waiting for it to come back", self._name)
                self._close_port()
            if self._port is None:
                match = next((n for n in names if self.port_query.lower() in n.lower()), None)
                if match is None:
                    self._limiter.warning(
                        ("missing", tuple(names)),
                        f"MIDI input matching {self.port_query!r} not found; available: {', '.join(names) or 'none'}",
                    )
                    return
                self._port = self._backend.open_input(match, callback=self._on_message)
                self._name = match
                log.info("MIDI input: %s", match)
        except Exception:  # driver errors (rtmidi raises its own types): log, retry next poll
            self._limiter.warning(
                ("poll",), f"MIDI: error polling ports for {self.port_query!r}", exc_info=True
            )
            self._close_port()

    def _on_message(self, msg: Any) -> None:
        # Runs on rtmidi's thread: an exception here would only print there; log it instead.
        try:
            self.mapper.handle(msg)
        except Exception:
            self._limiter.warning(
                ("handle", getattr(msg, "type", "?")), f"MIDI: error handling {msg}", exc_info=True
            )

    def _close_port(self) -> None:
        port, self._port, self._name = self._port, None, None
        if port is not None:
            try:
                port.close()
            except Exception:  # a vanished device may fail to close; it is gone either way
                log.debug("MIDI: closing a vanished port failed", exc_info=True)

    def start(self) -> MidiInput:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
        self._close_port()
