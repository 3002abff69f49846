"""OSCQuery: an HTTP description of the OSC address space, with current values.

Follows the core of the Vidvox OSCQuery proposal: `GET /` returns the namespace as
nested nodes (FULL_PATH, CONTENTS, TYPE, RANGE, VALUE, ACCESS, DESCRIPTION),
`GET /<path>` one node, `GET /<path>?VALUE` one attribute, and `GET /?HOST_INFO`
where to send OSC. TouchDesigner's OSCQuery client builds its parameter UI from this.
No LISTEN/websocket streaming (the HOST_INFO EXTENSIONS say so).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bridges.osc import OscAddress, address_table
from engine.errors import ConfigError
from engine.params import ParamStore
from engine.preset_schema import LIVE_SPECS, MIDI_MAPPABLE, list_presets

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
    "LISTEN": False,
    "PATH_CHANGED": False,
    "PATH_RENAMED": False,
    "PATH_ADDED": False,
    "PATH_REMOVED": False,
}


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
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

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
        else:
            # Write-only: blends (variable length; TYPE shows one pair), commands, controls.
            tags = addr.typetag.replace("…", "").replace("[s]", "s")
            ranges: list[dict[str, Any]] = [{} for _ in tags]
            if addr.name == "preset/load":
                ranges[0] = {"VALS": list_presets(self.presets_dir)}
            elif addr.name == "midi/learn":
                ranges[0] = {"VALS": list(MIDI_MAPPABLE)}
            elif addr.min is not None and addr.role == "control":
                ranges[1 if len(tags) > 1 else 0] = one
                if len(tags) == 3:
                    ranges[2] = {"VALS": ["beat", "bar"]}
            elif kind == "prompt_blend":
                ranges[1] = {"MIN": 0.0}
            leaf.update(ACCESS=ACCESS_WRITE, TYPE=tags, RANGE=ranges)
        return leaf


def _range(addr: OscAddress) -> dict[str, Any]:
    if addr.choices:
        return {"VALS": list(addr.choices)}
    out: dict[str, Any] = {}
    if addr.min is not None:
        out["MIN"] = addr.min
    if addr.max is not None:
        out["MAX"] = addr.max
    return out


def _make_handler(owner: OscQueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "streamvj-oscquery"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            attr = unquote(url.query)
            if attr == "HOST_INFO":
                return self._json(owner.host_info())
            node = owner.node(unquote(url.path))
            if node is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no such OSC path {url.path!r}")
            if not attr:
                return self._json(node)
            if attr not in ("FULL_PATH", "CONTENTS", "TYPE", "RANGE", "VALUE", "ACCESS", "DESCRIPTION"):
                return self._error(HTTPStatus.BAD_REQUEST, f"unsupported attribute {attr!r}")
            if attr not in node:
                return self._error(HTTPStatus.NO_CONTENT, "")
            return self._json({attr: node[attr]})

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
