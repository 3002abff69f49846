"""OSCQuery: the OSC address space described as JSON, with current values, and LISTEN.

Follows the core of the Vidvox OSCQuery proposal: `GET /` returns the namespace as
nested nodes (FULL_PATH, CONTENTS, TYPE, RANGE, VALUE, ACCESS, DESCRIPTION),
`GET /<path>` one node, `GET /<path>?VALUE` one attribute, and `GET /?HOST_INFO`
where to send OSC. TouchDesigner's OSCQuery client builds its parameter UI from this,
and so does streamvj's own web page.

LISTEN: a WebSocket client sends text commands {"COMMAND": "LISTEN"|"IGNORE", "DATA":
"<path>"} and gets every change of a listened value as a binary message holding one OSC
message. Listening is read-only: it never sets values, and nothing received names a file
or runs anything.

This module holds the documents and the LISTEN rules, with no I/O: the HTTP and WebSocket
transport is bridges/control/web_server.py.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pythonosc.osc_message_builder import BuildError, OscMessageBuilder

from bridges.control.osc_address import OscAddress, address_table
from engine.config.preset_files import list_presets
from engine.config.schema import LIVE_SPECS
from engine.errors import shown
from engine.live.commands import Arg
from engine.live.params import ParamStore
from engine.realtime.log_limit import LogLimiter

log = logging.getLogger("streamvj.oscquery")

ACCESS_NONE, ACCESS_READ, ACCESS_WRITE, ACCESS_RW = 0, 1, 2, 3
_EXTENSIONS = {
    "ACCESS": True,
    "VALUE": True,
    "RANGE": True,
    "DESCRIPTION": True,
    "TAGS": False,
    "EXTENDED_TYPE": False,
    "UNIT": False,
    "CRITICAL": False,
    "CLIPMODE": False,
    "LISTEN": True,
    "PATH_CHANGED": False,
    "PATH_RENAMED": False,
    "PATH_ADDED": False,
    "PATH_REMOVED": False,
}
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "RANGE", "VALUE", "ACCESS", "DESCRIPTION")
_BLENDS = ("prompt_blend", "seed_blend")  # write-only: variable length, no VALUE
_INT32 = range(-(2**31), 2**31)


class OscQuery:
    """The namespace of one OSC server (its port, prefix and ParamStore)."""

    def __init__(
        self,
        store: ParamStore,
        *,
        osc_port: int,
        osc_host: str = "127.0.0.1",
        prefix: str = "/streamvj",
        presets_dir: str | Path = "presets",
        name: str = "streamvj",
    ) -> None:
        self.store = store
        self.osc_host, self.osc_port = osc_host, osc_port
        self.prefix = prefix.rstrip("/")
        self.presets_dir = Path(presets_dir)
        self.name = name
        self._limiter = LogLimiter(log)
        self.addresses = address_table(self.prefix)
        # Readable paths -> kind: what LISTEN accepts. Blends and commands have no VALUE.
        self.listenable: dict[str, str] = {}
        for addr in self.addresses:
            if addr.role == "smoothing":
                self.listenable[addr.path] = "smoothing"
            elif addr.role == "param" and LIVE_SPECS[addr.name].kind not in _BLENDS:
                self.listenable[addr.path] = LIVE_SPECS[addr.name].kind
        # The store reports the whole smoothing dict; this tells which entries changed.
        self._lock = threading.Lock()
        self._smoothing: dict[str, float] = dict(store.values()["smoothing"])

    # ---------------------------------------------------------------- documents

    def host_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"NAME": self.name, "OSC_IP": self.osc_host, "OSC_PORT": self.osc_port,
                                "OSC_TRANSPORT": "UDP", "EXTENSIONS": _EXTENSIONS}
        if self.osc_host in ("0.0.0.0", "::", ""):
            # Listening everywhere: no one address is right for every client. Without OSC_IP a
            # client sends to the address it reached this server at (OSCQuery proposal, HOST_INFO).
            del info["OSC_IP"]
        return info

    def tree(self) -> dict[str, Any]:
        values = self.store.values()
        root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": ACCESS_NONE, "CONTENTS": {}}
        for addr in address_table(self.prefix, steps=self.store.steps):
            node = root
            parts = addr.path.strip("/").split("/")
            # "/streamvj/prompt" is a value and the parent of "/streamvj/prompt/transition":
            # OSCQuery nodes may hold both a VALUE and CONTENTS.
            for i, part in enumerate(parts[:-1]):
                child = node["CONTENTS"].setdefault(
                    part, {"FULL_PATH": "/" + "/".join(parts[: i + 1]), "ACCESS": ACCESS_NONE}
                )
                child.setdefault("CONTENTS", {})
                node = child
            node["CONTENTS"].setdefault(parts[-1], {}).update(self._leaf(addr, values))
        return root

    def node(self, path: str) -> dict[str, Any] | None:
        node = self.tree()
        for part in [p for p in path.split("/") if p]:
            node = node.get("CONTENTS", {}).get(part)
            if node is None:
                return None
        return node

    def answer(self, path: str, query: str) -> tuple[HTTPStatus, dict[str, Any] | str]:
        """What `GET path?query` returns (path and query already URL-decoded): a JSON
        document, or an error status with one line saying why."""
        if query == "HOST_INFO":
            return HTTPStatus.OK, self.host_info()
        node = self.node(path)
        if node is None:
            return HTTPStatus.NOT_FOUND, f"no such OSC path {shown(path)}"
        if not query:
            return HTTPStatus.OK, node
        if query not in ATTRIBUTES:
            return HTTPStatus.BAD_REQUEST, f"unsupported attribute {shown(query)}"
        if query not in node:
            return HTTPStatus.NO_CONTENT, ""
        return HTTPStatus.OK, {query: node[query]}

    def _leaf(self, addr: OscAddress, values: dict[str, Any]) -> dict[str, Any]:
        leaf: dict[str, Any] = {"FULL_PATH": addr.path, "DESCRIPTION": addr.doc}
        kind = LIVE_SPECS[addr.name].kind if addr.role == "param" else addr.role
        # The on-air preset's choices where it holds a parameter to them (a ControlNet's listed sources).
        one = _bounds(self.store.choices.get(addr.name, addr.choices), addr.min, addr.max)
        if addr.role == "param" and kind not in _BLENDS:
            value = values[addr.name]
            flat = value if isinstance(value, list) else [value]
            leaf.update(ACCESS=ACCESS_RW, TYPE=addr.typetag, VALUE=flat, RANGE=[one] * len(addr.typetag))
        elif addr.role == "smoothing":
            value = values["smoothing"].get(addr.name, 0.0)
            leaf.update(ACCESS=ACCESS_RW, TYPE="f", VALUE=[value], RANGE=[one])
        elif addr.typetag == "N":
            leaf.update(ACCESS=ACCESS_WRITE, TYPE="N")
        elif addr.command is not None:
            # Write-only, one RANGE per argument (an optional one is sent as a plain tag).
            tags = addr.typetag.replace("[", "").replace("]", "")
            ranges = [self._arg_range(arg) for arg in addr.command.args]
            leaf.update(ACCESS=ACCESS_WRITE, TYPE=tags, RANGE=ranges)
        else:
            # Write-only blends: variable length; TYPE shows one pair.
            tags = addr.typetag.replace("…", "")
            ranges = [{}, {"MIN": 0.0}] if kind == "prompt_blend" else [{} for _ in tags]
            leaf.update(ACCESS=ACCESS_WRITE, TYPE=tags, RANGE=ranges)
        return leaf

    def _arg_range(self, arg: Arg) -> dict[str, Any]:
        if arg.presets:
            return {"VALS": list_presets(self.presets_dir)}
        return _bounds(arg.choices, arg.min, arg.max)

    # ---------------------------------------------------------------- LISTEN

    def listen_command(self, paths: set[str], message: str | bytes, client: str) -> None:
        """Apply one LISTEN/IGNORE command from `client` to its set of listened `paths`;
        anything else is logged (rate-limited) and ignored."""
        if isinstance(message, bytes):
            self._limiter.warning(("ws", "binary"), "OSCQuery WebSocket: binary (OSC) messages are not accepted; ignored")
            return
        try:
            doc = json.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            self._limiter.warning(("ws", "json"), f"OSCQuery WebSocket: not JSON, ignored: {shown(str(exc))}")
            return
        command = doc.get("COMMAND") if isinstance(doc, dict) else None
        path = doc.get("DATA") if isinstance(doc, dict) else None
        if command not in ("LISTEN", "IGNORE") or not isinstance(path, str):
            self._limiter.warning(
                ("ws", "command"),
                f"OSCQuery WebSocket: expected {{'COMMAND': 'LISTEN'|'IGNORE', 'DATA': path}}, ignored {shown(message)}",
            )
            return
        if path not in self.listenable:
            log.debug("OSCQuery WebSocket %s: %s %s: not a readable path; ignored", client, command, shown(path))
            return
        if command == "LISTEN":
            paths.add(path)
        else:
            paths.discard(path)

    def changes(self, name: str, value: Any) -> list[tuple[str, Any]]:
        """The (path, value) pairs one ParamStore change makes: one, or one per smoothing
        time that changed (the store reports the whole smoothing dict)."""
        if name != "smoothing":
            return [(f"{self.prefix}/{name}", value)]
        with self._lock:
            old, self._smoothing = self._smoothing, dict(value)
        return [
            (f"{self.prefix}/smoothing/{p}", float(value.get(p, 0.0)))
            for p in sorted(set(old) | set(value))
            if value.get(p, 0.0) != old.get(p, 0.0)
        ]

    def listen_packet(self, path: str, value: Any) -> bytes | None:
        """The binary LISTEN message for a readable path's new value (None: not listenable)."""
        kind = self.listenable.get(path)
        if kind is None:
            return None
        try:
            return osc_message(path, kind, value if isinstance(value, list) else [value])
        except (BuildError, TypeError, ValueError) as exc:
            self._limiter.warning(("ws", "build", path), f"OSCQuery LISTEN: cannot encode {path}: {exc}")
            return None


def osc_message(path: str, kind: str, args: list[Any]) -> bytes:
    """One OSC message with the namespace's TYPE tags for a parameter of this kind."""
    msg = OscMessageBuilder(path)
    for v in args:
        if kind in ("float", "smoothing"):
            msg.add_arg(float(v), OscMessageBuilder.ARG_TYPE_FLOAT)
        elif kind in ("int", "int_list"):
            # Seeds reach 2**32-1: past int32 a correct int64 beats the advertised "i".
            tag = OscMessageBuilder.ARG_TYPE_INT if v in _INT32 else OscMessageBuilder.ARG_TYPE_INT64
            msg.add_arg(int(v), tag)
        elif kind == "bool":
            msg.add_arg(bool(v), OscMessageBuilder.ARG_TYPE_TRUE if v else OscMessageBuilder.ARG_TYPE_FALSE)
        else:
            msg.add_arg(str(v), OscMessageBuilder.ARG_TYPE_STRING)
    return msg.build().dgram


def _bounds(choices: tuple[str, ...], lo: float | None, hi: float | None) -> dict[str, Any]:
    if choices:
        return {"VALS": list(choices)}
    out: dict[str, Any] = {}
    if lo is not None:
        out["MIN"] = lo
    if hi is not None:
        out["MAX"] = hi
    return out
