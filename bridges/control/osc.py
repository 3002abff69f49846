"""OSC control server: every live parameter and command, validated, never blocking.

The address space is generated from `LIVE_SPECS` (flat snake_case under one prefix,
what TouchDesigner and Resolume send best). Parameter messages are validated and
written into the ParamStore; commands that change the engine (preset switch, pause,
MIDI learn…) go to an injected `CommandSink` and are never executed here. A bad
message is dropped and logged once per (address, reason); no datagram, however
malformed, can stop the server thread.

Run `python -m bridges.control.osc --markdown` to print the address reference (docs/osc.md).
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from pythonosc import osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridges.control.osc_feedback import OscFeedback
from engine.config.preset_files import resolve_preset
from engine.config.schema import LIVE_SPECS, MIDI_MAPPABLE, SMOOTHABLE, OscSettings
from engine.errors import ConfigError
from engine.live.params import ParamStore
from engine.live.tempo import BPM_MAX, BPM_MIN, Tempo
from engine.realtime.log_limit import LogLimiter

__all__ = ["CommandSink", "OscAddress", "OscFeedback", "OscServer", "address_table", "check_packet"]

log = logging.getLogger("streamvj.osc")

MAX_DATAGRAM = 65536  # socketserver reads 8192 by default: long prompt lists would be cut
RCVBUF_BYTES = 4 * 1024 * 1024  # the kernel caps this at net.core.rmem_max
_BUNDLE = b"#bundle\x00"
_MAX_NESTING = 8
_TAGS_OK = frozenset("ifdhsbrmtTFN[]")  # what python-osc parses; others it skips with a root-logger warning
_PATTERN_BYTES = frozenset(b"*?[]{}")
_GOT = re.compile(r"\s*\(got .*\)$", re.S)

Role = Literal["param", "smoothing", "command", "control"]


class CommandSink(Protocol):
    """Receives engine commands; the engine decides when and how to run them.

    Names and args: "preset/load" (name, path), "preset/next" (), "preset/prev" (),
    "pause" (), "resume" (), "reset" (), "midi/learn" (param,).
    """

    def on_command(self, name: str, args: tuple[Any, ...]) -> None: ...


@dataclass(frozen=True)
class OscAddress:
    path: str
    name: str  # live parameter or command name
    role: Role
    typetag: str  # OSC type tags expected; "…" = repeat the group
    min: float | None
    max: float | None
    choices: tuple[str, ...]
    default: Any
    unit: str
    doc: str


_TYPETAG = {
    "float": "f",
    "int": "i",
    "bool": "T",
    "str": "s",
    "enum": "s",
    "prompt_blend": "sf…",
    "seed_blend": "if…",
}

# (name, role, typetag, min, max, doc). Triggers ("N") fire on no argument or a non-zero
# number, and ignore 0, so a TouchDesigner/Resolume button's release does nothing.
_COMMANDS: list[tuple[str, Role, str, float | None, float | None, str]] = [
    (
        "preset/load",
        "command",
        "s",
        None,
        None,
        "Switch to preset NAME (presets/NAME.yaml; letters, digits, _ -)",
    ),
    ("preset/next", "command", "N", None, None, "Switch to the next preset (alphabetical)"),
    ("preset/prev", "command", "N", None, None, "Switch to the previous preset (alphabetical)"),
    ("pause", "command", "N", None, None, "Freeze the output on the last frame"),
    ("resume", "command", "N", None, None, "Resume after pause"),
    (
        "reset",
        "command",
        "N",
        None,
        None,
        "Back to the current preset's live values and a fresh stream buffer",
    ),
    ("midi/learn", "command", "s", None, None, "Map the next MIDI CC moved to this parameter"),
    ("tempo/bpm", "control", "f", BPM_MIN, BPM_MAX, "Set the tempo (BPM) used for beat-quantised changes"),
    ("tempo/tap", "control", "N", None, None, "Tap tempo: each tap marks a beat"),
    ("tempo/beat", "control", "N", None, None, "Same as tempo/tap"),
    ("prompt/transition", "control", "sf", 0.0, 600.0, "Crossfade to a new prompt (text, seconds)"),
    (
        "prompt/transition_beats",
        "control",
        "sf[s]",
        0.0,
        600.0,
        "Crossfade to a new prompt (text, beats), optionally starting on the next beat or bar",
    ),
    ("seed/transition", "control", "if", 0.0, 600.0, "Crossfade the noise to a new seed (seed, seconds)"),
    (
        "seed/transition_beats",
        "control",
        "if[s]",
        0.0,
        600.0,
        "Crossfade to a new seed (seed, beats), optionally starting on the next beat or bar",
    ),
]


def address_table(prefix: str = "/streamvj", steps: int | None = None) -> list[OscAddress]:
    """Every address the server answers, generated from LIVE_SPECS plus the commands."""
    out: list[OscAddress] = []
    for spec in LIVE_SPECS.values():
        if spec.kind == "smoothing":
            for p in SMOOTHABLE:
                doc = f"Slew time for {p} in seconds (0 = jump to new values)"
                out.append(
                    OscAddress(f"{prefix}/smoothing/{p}", p, "smoothing", "f", 0.0, 60.0, (), 0.0, "s", doc)
                )
            continue
        tag = "i" * steps if spec.kind == "int_list" and steps else _TYPETAG.get(spec.kind, "i…")
        out.append(
            OscAddress(
                f"{prefix}/{spec.name}",
                spec.name,
                "param",
                tag,
                spec.min,
                spec.max,
                spec.choices,
                spec.default,
                spec.unit,
                spec.doc,
            )
        )
    for name, role, tag, lo, hi, doc in _COMMANDS:
        out.append(OscAddress(f"{prefix}/{name}", name, role, tag, lo, hi, (), None, "", doc))
    return out


# ------------------------------------------------------------------ datagram checks


def check_packet(data: bytes, depth: int = 0) -> str | None:
    """Why a datagram is not an acceptable OSC packet, or None.

    Walks bundles ourselves: python-osc loops forever on a bundle element with a
    negative size, and logs to the root logger for unknown type tags.
    """
    if data.startswith(_BUNDLE):
        if depth >= _MAX_NESTING:
            return "bundles nested too deep"
        if len(data) < 16:
            return "bundle shorter than its 16-byte header"
        i = 16
        while i < len(data):
            if i + 4 > len(data):
                return "truncated bundle element size"
            size = int.from_bytes(data[i : i + 4], "big", signed=True)
            if size <= 0 or size % 4 or i + 4 + size > len(data):
                return f"bad bundle element size {size}"
            reason = check_packet(data[i + 4 : i + 4 + size], depth + 1)
            if reason:
                return reason
            i += 4 + size
        return None
    if not data.startswith(b"/"):
        return "not an OSC message or bundle"
    end = data.find(b"\x00")
    if end < 0:
        return "address is not NUL-terminated"
    address = data[:end]
    if any(b < 0x21 or b > 0x7E for b in address):
        return "address is not printable ASCII"
    if any(b in _PATTERN_BYTES for b in address):
        return "address patterns (wildcards) are not supported; send the full address"
    i = (end + 4) & ~3
    if i >= len(data):
        return None if i == len(data) else "truncated after the address"
    if data[i : i + 1] != b",":
        return "type tag string must start with ','"
    tag_end = data.find(b"\x00", i)
    if tag_end < 0:
        return "type tags are not NUL-terminated"
    bad = set(data[i + 1 : tag_end].decode("latin-1")) - _TAGS_OK
    if bad:
        return f"unsupported OSC type tag(s) {''.join(sorted(bad))!r}"
    return None


# ------------------------------------------------------------------ argument shaping


def _flat(args: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        out.extend(_flat(tuple(a)) if isinstance(a, list) else [a])
    return out


def _tname(x: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", bytes: "blob", type(None): "nil"}.get(
        type(x), type(x).__name__
    )


def _number(x: Any) -> float | int:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"expected a number, got {_tname(x)} {x!r}")
    return x


def _integer(x: Any) -> int:
    # TouchDesigner CHOPs send every channel as a float: accept exact integers.
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ConfigError(f"expected an integer, got {_tname(x)} {x!r}")
    return x


def _boolean(x: Any) -> bool:
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float)) and x in (0, 1):
        return bool(x)
    raise ConfigError(f"expected true/false (T/F or 0/1), got {_tname(x)} {x!r}")


def _string(x: Any) -> str:
    if not isinstance(x, str):
        raise ConfigError(f"expected a string, got {_tname(x)} {x!r}")
    return x


def _arity(args: list[Any], lo: int, hi: int, what: str) -> None:
    if not lo <= len(args) <= hi:
        n = f"{lo}" if lo == hi else f"{lo}-{hi}"
        raise ConfigError(f"expects {n} argument(s) ({what}), got {len(args)}")


def _pairs(args: list[Any], first: Callable[[Any], Any]) -> list[tuple[Any, float]]:
    if len(args) % 2:
        raise ConfigError(f"expects pairs (item, weight), got {len(args)} arguments")
    return [(first(args[i]), _number(args[i + 1])) for i in range(0, len(args), 2)]


def shape_value(kind: str, args: tuple[Any, ...]) -> Any:
    """OSC arguments -> the Python value the ParamStore validates."""
    flat = _flat(args)
    if kind in ("float", "int", "bool", "str", "enum"):
        _arity(flat, 1, 1, kind)
        conv: dict[str, Callable[[Any], Any]] = {
            "float": _number,
            "int": _integer,
            "bool": _boolean,
            "str": _string,
            "enum": _string,
        }
        return conv[kind](flat[0])
    if kind == "int_list":
        _arity(flat, 1, 50, "integers")
        return [_integer(x) for x in flat]
    if kind == "prompt_blend":
        return _pairs(flat, _string)
    if kind == "seed_blend":
        return _pairs(flat, _integer)
    raise ConfigError(f"parameter kind {kind!r} is not settable over OSC")


def _is_press(args: tuple[Any, ...]) -> bool:
    flat = _flat(args)
    _arity(flat, 0, 1, "none, or a button value")
    if not flat or flat[0] is None:
        return True
    if isinstance(flat[0], bool):
        return flat[0]
    return _number(flat[0]) != 0


# ------------------------------------------------------------------ server


class _UDPServer(BlockingOSCUDPServer):
    """python-osc's blocking server reading 64 KiB datagrams into our own handler."""

    max_packet_size = MAX_DATAGRAM

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, owner: OscServer) -> None:
        self._owner = owner
        super().__init__(address, dispatcher)

    def server_bind(self) -> None:
        # Bursts (a fader sweep, a bundle per frame) overflow the default ~200 KB buffer.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._owner._allowed(client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self._owner.handle_datagram(request[0], client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self._owner._limiter.warning(("<server>",), f"OSC: error serving {client_address}", exc_info=True)


class OscServer:
    """OSC over UDP on its own thread, writing validated values into a ParamStore."""

    def __init__(
        self,
        store: ParamStore,
        commands: CommandSink,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        allow: list[str] | None = None,
        prefix: str = "/streamvj",
        presets_dir: str | Path = "presets",
        tempo: Tempo | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.commands = commands
        self.tempo = tempo if tempo is not None else store.tempo
        self.prefix = prefix.rstrip("/")
        self.presets_dir = Path(presets_dir)
        self._allow = frozenset(allow) if allow is not None else None
        self._limiter = LogLimiter(log, clock=clock)
        self._counts = {"accepted": 0, "rejected": 0, "dropped": 0}
        self.dispatcher = Dispatcher(
            strict_timing=False
        )  # a future-stamped bundle must never sleep the thread
        for addr in address_table(self.prefix):
            self.dispatcher.map(addr.path, partial(self._on_message, addr), needs_reply_address=True)
        self.dispatcher.set_default_handler(self._on_unknown, needs_reply_address=True)
        try:
            self._server = _UDPServer((host, port), self.dispatcher, self)
        except OSError as exc:
            raise ConfigError(
                f"OSC: cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another streamvj or OSC app on that port? change osc.port/osc.host in the preset)"
            ) from None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls,
        settings: OscSettings,
        store: ParamStore,
        commands: CommandSink,
        *,
        presets_dir: str | Path = "presets",
        tempo: Tempo | None = None,
    ) -> OscServer:
        return cls(
            store,
            commands,
            host=settings.host,
            port=settings.port,
            allow=settings.allow,
            prefix=settings.prefix,
            presets_dir=presets_dir,
            tempo=tempo,
        )

    # ---------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def receive_buffer_bytes(self) -> int:
        return self._server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def start(self) -> OscServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.25,), name="streamvj-osc", daemon=True
        )
        self._thread.start()
        log.info("OSC listening on %s:%d (prefix %s)", *self.address, self.prefix)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    # ---------------------------------------------------------------- receiving

    def _allowed(self, client_address: Any) -> bool:
        ip = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self._allow is None or ip in self._allow:
            return True
        self._counts["dropped"] += 1
        self._limiter.warning(("<allow>", ip), f"OSC from {ip} dropped: not in osc.allow")
        return False

    def handle_datagram(self, data: bytes, client_address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        """Validate and apply one datagram (the server thread calls this; tests may too)."""
        try:
            reason = check_packet(data)
            if reason is None:
                try:
                    packet = osc_packet.OscPacket(data)
                except (osc_packet.ParseError, ValueError) as exc:  # ValueError: strings that are not UTF-8
                    reason = f"unparseable: {exc}"
            if reason is not None:
                self._counts["dropped"] += 1
                self._limiter.warning(
                    ("<malformed>", reason), f"OSC datagram ({len(data)} bytes) dropped: {reason}"
                )
                return
            # Time tags are not honoured: every message applies on arrival (strict_timing off).
            for timed in packet.messages:
                for handler in self.dispatcher.handlers_for_address(timed.message.address):
                    handler.invoke(client_address, timed.message)
        except Exception:  # the last guard of the server thread: log (rate-limited) and keep serving
            self._counts["dropped"] += 1
            self._limiter.warning(("<internal>",), "OSC: error handling a datagram", exc_info=True)

    def _on_unknown(self, client_address: Any, address: str, *args: Any) -> None:
        self._reject(address, "unknown address (see docs/osc.md)")

    def _on_message(self, addr: OscAddress, client_address: Any, address: str, *args: Any) -> None:
        try:
            self._apply(addr, args)
        except ConfigError as exc:
            self._reject(address, str(exc))
            return
        self._counts["accepted"] += 1

    def _reject(self, address: str, reason: str) -> None:
        self._counts["rejected"] += 1
        shown = address if len(address) <= 80 else address[:77] + "..."
        # Key without the value, so a fader sweeping out of range logs once, not per value.
        self._limiter.warning((shown, _GOT.sub("", reason)), f"OSC {shown!r} dropped: {reason}")

    def _apply(self, addr: OscAddress, args: tuple[Any, ...]) -> None:
        if addr.role == "param":
            self.store.set(addr.name, shape_value(LIVE_SPECS[addr.name].kind, args), source="osc")
        elif addr.role == "smoothing":
            self.store.set_smoothing(addr.name, shape_value("float", args), source="osc")
        elif addr.role == "command":
            self._command(addr.name, args)
        else:
            self._control(addr.name, args)

    def _command(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "preset/load":
            preset = shape_value("str", args)
            self.commands.on_command(name, (preset, resolve_preset(self.presets_dir, preset)))
        elif name == "midi/learn":
            param = shape_value("str", args)
            if param not in MIDI_MAPPABLE:
                raise ConfigError(f"cannot MIDI-map {param!r}; mappable: {', '.join(MIDI_MAPPABLE)}")
            self.commands.on_command(name, (param,))
        elif _is_press(args):
            self.commands.on_command(name, ())

    def _control(self, name: str, args: tuple[Any, ...]) -> None:
        flat = _flat(args)
        src = "osc"
        if name.startswith("tempo/"):
            if self.tempo is None:
                raise ConfigError("no tempo attached to the OSC server")
            if name == "tempo/bpm":
                self.tempo.set_bpm(shape_value("float", args))
            elif _is_press(args):
                self.tempo.tap()
            return
        timed = name.endswith("_beats")
        _arity(flat, 2, 3 if timed else 2, "target, length" + (", [beat|bar]" if timed else ""))
        length = float(_number(flat[1]))
        quantum = _string(flat[2]) if len(flat) == 3 else None
        if quantum not in (None, "beat", "bar"):
            raise ConfigError(f"quantum must be 'beat' or 'bar', got {quantum!r}")
        when: dict[str, Any] = {"beats": length, "quantum": quantum} if timed else {"duration_s": length}
        if name.startswith("prompt/"):
            self.store.transition_prompt(_string(flat[0]), source=src, **when)
        else:
            self.store.transition_seed(_integer(flat[0]), source=src, **when)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bridges.control.osc_docs import osc_markdown

    parser = argparse.ArgumentParser(prog="python -m bridges.control.osc", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the OSC address reference as Markdown")
    parser.add_argument("--prefix", default="/streamvj")
    ns = parser.parse_args(argv)
    if not ns.markdown:
        parser.print_help()
        return 2
    print(osc_markdown(ns.prefix), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
