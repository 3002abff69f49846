"""OSCQuery: an HTTP description of the OSC address space, with current values.

Follows the core of the Vidvox OSCQuery proposal: `GET /` returns the namespace as
nested nodes (FULL_PATH, CONTENTS, TYPE, RANGE, VALUE, ACCESS, DESCRIPTION),
`GET /<path>` one node, `GET /<path>?VALUE` one attribute, and `GET /?HOST_INFO`
where to send OSC. TouchDesigner's OSCQuery client builds its parameter UI from this.

LISTEN: a WebSocket upgrade on the same port; a client sends text commands
{"COMMAND": "LISTEN"|"IGNORE", "DATA": "<path>"} and gets every change of a listened
value as a binary frame holding one OSC message. The WebSocket is read-only: it never
sets values, and nothing received names a file or runs anything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pythonosc.osc_message_builder import BuildError, OscMessageBuilder

from bridges.control.osc_address import OscAddress, address_table
from bridges.control.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_WAIT_S,
    OP_TEXT,
    Connection,
    HandshakeError,
    check_handshake,
    origin_allowed,
)
from engine.config.preset_files import list_presets
from engine.config.schema import LIVE_SPECS
from engine.errors import ConfigError, shown
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
MAX_WS_CLIENTS = 16
_INT32 = range(-(2**31), 2**31)


class OscQueryServer:
    def __init__(
        self,
        store: ParamStore,
        *,
        osc_port: int,
        osc_host: str = "127.0.0.1",
        prefix: str = "/streamvj",
        host: str = "127.0.0.1",
        port: int = 0,
        presets_dir: str | Path = "presets",
        name: str = "streamvj",
    ) -> None:
        self.store = store
        self.osc_host, self.osc_port = osc_host, osc_port
        self.prefix = prefix.rstrip("/")
        self.presets_dir = Path(presets_dir)
        self.name = name
        try:
            self._http = ThreadingHTTPServer((host, port), _make_handler(self))
        except OSError as exc:
            raise ConfigError(
                f"OSCQuery: cannot listen on {host}:{port}: {exc.strerror or exc} (change osc.query_port)"
            ) from None
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._limiter = LogLimiter(log)
        self._lock = threading.Lock()
        self._clients: dict[Connection, set[str]] = {}  # WebSocket client -> listened paths
        self._sessions: dict[Connection, threading.Thread] = {}  # daemon threads: server_close skips them
        self._stopping = False
        # Readable paths -> (kind, name): what LISTEN accepts. Blends and commands have no VALUE.
        self._listenable: dict[str, tuple[str, str]] = {}
        for addr in address_table(self.prefix):
            if addr.role == "smoothing":
                self._listenable[addr.path] = ("smoothing", addr.name)
            elif addr.role == "param" and LIVE_SPECS[addr.name].kind not in ("prompt_blend", "seed_blend"):
                self._listenable[addr.path] = (LIVE_SPECS[addr.name].kind, addr.name)
        # The store reports the whole smoothing dict; this tells which entries changed.
        self._smoothing: dict[str, float] = dict(store.values()["smoothing"])
        store.add_listener(self._on_change)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def start(self) -> OscQueryServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.25,), name="streamvj-oscquery", daemon=True
        )
        self._thread.start()
        log.info("OSCQuery on http://%s:%d/", *self.address)
        return self

    def stop(self) -> None:
        self.store.remove_listener(self._on_change)
        with self._lock:
            self._stopping = True  # a WebSocket upgrade from now on gets 503
            conns, sessions = list(self._clients), list(self._sessions.values())
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        for conn in conns:
            conn.close(CLOSE_GOING_AWAY, "server stopping")
        deadline = time.monotonic() + CLOSE_WAIT_S
        for conn in conns:  # a client that does not answer the close is cut off
            if not conn.finished.wait(max(0.0, deadline - time.monotonic())):
                conn.abort()
        self._http.server_close()
        for thread in sessions:
            thread.join()

    def listening(self) -> list[tuple[Connection, set[str]]]:
        """Connected WebSocket clients and the paths each listens to (copies)."""
        with self._lock:
            return [(conn, set(paths)) for conn, paths in self._clients.items()]

    def __enter__(self) -> OscQueryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- documents

    def host_info(self) -> dict[str, Any]:
        return {
            "NAME": self.name,
            "OSC_IP": self.osc_host,
            "OSC_PORT": self.osc_port,
            "OSC_TRANSPORT": "UDP",
            "EXTENSIONS": _EXTENSIONS,
        }

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

    def _leaf(self, addr: OscAddress, values: dict[str, Any]) -> dict[str, Any]:
        leaf: dict[str, Any] = {"FULL_PATH": addr.path, "DESCRIPTION": addr.doc}
        kind = LIVE_SPECS[addr.name].kind if addr.role == "param" else addr.role
        one = _range(addr)
        if addr.role == "param" and kind not in ("prompt_blend", "seed_blend"):
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

    def _register(self, conn: Connection) -> bool:
        with self._lock:
            if self._stopping or len(self._clients) >= MAX_WS_CLIENTS:
                return False
            self._clients[conn] = set()
            self._sessions[conn] = threading.current_thread()
            return True

    def _unregister(self, conn: Connection) -> None:
        with self._lock:
            self._clients.pop(conn, None)
            self._sessions.pop(conn, None)

    def _on_ws_message(self, conn: Connection, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            self._limiter.warning(
                ("ws", "binary"), "OSCQuery WebSocket: binary (OSC) messages are not accepted; ignored"
            )
            return
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            self._limiter.warning(("ws", "json"), f"OSCQuery WebSocket: not JSON, ignored: {shown(str(exc))}")
            return
        command = doc.get("COMMAND") if isinstance(doc, dict) else None
        path = doc.get("DATA") if isinstance(doc, dict) else None
        if command not in ("LISTEN", "IGNORE") or not isinstance(path, str):
            self._limiter.warning(
                ("ws", "command"),
                f"OSCQuery WebSocket: expected {{'COMMAND': 'LISTEN'|'IGNORE', 'DATA': path}}, "
                f"ignored {shown(payload)}",
            )
            return
        if path not in self._listenable:
            log.debug(
                "OSCQuery WebSocket %s: %s %s: not a readable path; ignored", conn.name, command, shown(path)
            )
            return
        with self._lock:
            paths = self._clients.get(conn)
            if paths is not None and command == "LISTEN":
                paths.add(path)
            elif paths is not None:
                paths.discard(path)

    def _on_change(self, name: str, value: Any, source: str) -> None:
        # Runs on whichever thread set the value (OSC, MIDI, engine): only enqueues.
        with self._lock:
            if name == "smoothing":
                old, self._smoothing = self._smoothing, dict(value)
                changed = [
                    (f"{self.prefix}/smoothing/{p}", [float(value.get(p, 0.0))])
                    for p in sorted(set(old) | set(value))
                    if value.get(p, 0.0) != old.get(p, 0.0)
                ]
            elif f"{self.prefix}/{name}" in self._listenable:
                changed = [(f"{self.prefix}/{name}", value if isinstance(value, list) else [value])]
            else:
                return
            targets = [
                (path, args, [c for c, paths in self._clients.items() if path in paths])
                for path, args in changed
            ]
        for path, args, conns in targets:
            if not conns:
                continue
            try:
                packet = osc_message(path, self._listenable[path][0], args)
            except (BuildError, TypeError, ValueError) as exc:
                self._limiter.warning(("ws", "build", path), f"OSCQuery LISTEN: cannot encode {path}: {exc}")
                continue
            for conn in conns:
                conn.offer(path, packet)


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


def _range(addr: OscAddress) -> dict[str, Any]:
    return _bounds(addr.choices, addr.min, addr.max)


def _make_handler(owner: OscQueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "streamvj-oscquery"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if "websocket" in (self.headers.get("Upgrade") or "").lower():  # others (h2c) get plain HTTP
                return self._websocket()
            url = urlsplit(self.path)
            attr = unquote(url.query)
            if attr == "HOST_INFO":
                return self._json(owner.host_info())
            node = owner.node(unquote(url.path))
            if node is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no such OSC path {shown(url.path)}")
            if not attr:
                return self._json(node)
            if attr not in ("FULL_PATH", "CONTENTS", "TYPE", "RANGE", "VALUE", "ACCESS", "DESCRIPTION"):
                return self._error(HTTPStatus.BAD_REQUEST, f"unsupported attribute {shown(attr)}")
            if attr not in node:
                return self._error(HTTPStatus.NO_CONTENT, "")
            return self._json({attr: node[attr]})

        def _websocket(self) -> None:
            self.close_connection = True  # after a session (or a refusal) no HTTP follows
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                accept = check_handshake(headers)
            except HandshakeError as exc:
                return self._error(HTTPStatus.BAD_REQUEST, f"WebSocket handshake: {exc}")
            if not origin_allowed(headers.get("origin"), headers.get("host")):
                return self._error(HTTPStatus.FORBIDDEN, "WebSocket: pages from this origin may not connect")
            peer = "{}:{}".format(*self.client_address[:2])
            conn = Connection(
                self.connection, self.rfile, owner._on_ws_message, name=f"streamvj-oscquery-ws-{peer}"
            )
            if not owner._register(conn):
                return self._error(
                    HTTPStatus.SERVICE_UNAVAILABLE, f"at most {MAX_WS_CLIENTS} WebSocket clients"
                )
            try:
                self.protocol_version = "HTTP/1.1"  # browsers refuse an "HTTP/1.0 101"
                self.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                log.debug("OSCQuery WebSocket %s connected", peer)
                conn.serve()
            finally:
                owner._unregister(conn)
            log.debug("OSCQuery WebSocket %s closed", peer)

        def _json(self, doc: dict[str, Any]) -> None:
            body = json.dumps(doc, allow_nan=False).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            if status != HTTPStatus.NO_CONTENT:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != HTTPStatus.NO_CONTENT:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
