"""The web page's protocol: what the page is told and what it may ask, over one WebSocket.

The page builds its controls from the OSCQuery tree (`GET /`, the same address table OSC
uses) and changes things by sending OSC messages as JSON, `{"osc": "/streamvj/seed",
"args": [7]}`: they are shaped, validated and run by OSC's own routes
(bridges/control/osc_routes.py), so the page can do exactly what OSC can and nothing
else. It is told (JSON text messages, each with a "type"):

- `hello`: whether it may change anything, the prefix, every current value, the status,
  the presets, the recent errors; then
- `value`: one value that changed (any source: OSC, MIDI, the page, a preset switch);
- `status`: once a second, the engine's state, fps in and out, latency, skip ratio,
  VRAM, GPU power, backend, last error;
- `presets`: the presets folder and which is on air, when that changes;
- `errors`: the recent warnings and errors, when a new one is logged;
- `refused`: why a message it sent was not applied.

Preview pictures arrive as binary messages: one byte naming the kind (`o`utput or
`i`nput), then a JPEG. The page asks for them with `{"preview": true}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridges.control.osc_address import OscAddress, address_table
from bridges.control.osc_routes import OscRoutes
from bridges.control.recent_errors import RecentErrors
from engine.config.preset_files import list_presets
from engine.errors import ConfigError, shown
from engine.live.commands import CommandSink
from engine.live.params import ParamStore
from engine.live.tempo import Tempo

PREVIEW_TAGS = {"output": b"o", "input": b"i"}
STATUS_FIELDS = ("state", "preset", "fps", "latency_ms", "skip_ratio", "error", "backend", "vram_mb", "gpu_power_w")
STATS_FIELDS = ("fps_in", "frames_received", "frames_rendered", "dropped_input")
READ_ONLY = "read-only: open the page with the link and token the engine printed when it started"

StatusReader = Callable[[], dict[str, Any]]


def page_status(payload: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """The status message from OSC feedback's payload (bridges/control/status.py) and the runtime's stats."""
    out: dict[str, Any] = {"type": "status"}
    out.update({k: payload[k] for k in STATUS_FIELDS if k in payload})
    out.update({k: stats[k] for k in STATS_FIELDS if k in stats})
    return out


class PageControl:
    def __init__(self, store: ParamStore, commands: CommandSink, *, prefix: str = "/streamvj",
                 presets_dir: str | Path = "presets", tempo: Tempo | None = None,
                 status: StatusReader | None = None, errors: RecentErrors | None = None) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.routes = OscRoutes(self.prefix, store, commands, tempo if tempo is not None else store.tempo)
        self.presets_dir = Path(presets_dir)
        self.status_reader = status
        self.errors = errors
        self._addresses: list[OscAddress] = [a for a in address_table(self.prefix) if a.role != "command"]
        self._preset = ""  # on air, as the last status said
        self._presets_sent = ""
        self._errors_sent = -1

    # ---- to the page ------------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """Every readable value by OSC path (blends as [item, weight] pairs)."""
        values = self.store.values()
        return {a.path: values["smoothing"].get(a.name, 0.0) if a.role == "smoothing" else values[a.name]
                for a in self._addresses}

    def hello(self, writable: bool) -> str:
        _, errors = self.errors.snapshot() if self.errors is not None else (0, [])
        status = self.status_reader() if self.status_reader is not None else None
        if status is not None:
            self._preset = str(status.get("preset", ""))
        return _json({"type": "hello", "writable": writable, "prefix": self.prefix, "values": self.values(),
                      "status": status, "presets": self._presets_doc(), "errors": errors})

    def tick(self) -> list[tuple[str, str]]:
        """Once a second while a page is open: (key, message) for the status, and for the
        presets and errors when they changed since the last tick."""
        out: list[tuple[str, str]] = []
        if self.status_reader is not None:
            status = self.status_reader()
            self._preset = str(status.get("preset", ""))
            out.append(("status", _json(status)))
        presets = _json(self._presets_doc())
        if presets != self._presets_sent:
            self._presets_sent = presets
            out.append(("presets", presets))
        if self.errors is not None:
            version, errors = self.errors.snapshot()
            if version != self._errors_sent:
                self._errors_sent = version
                out.append(("errors", _json({"type": "errors", "errors": errors})))
        return out

    def _presets_doc(self) -> dict[str, Any]:
        return {"type": "presets", "names": list_presets(self.presets_dir), "current": self._preset}

    @staticmethod
    def value_message(path: str, value: Any) -> str:
        return _json({"type": "value", "path": path, "value": value})

    @staticmethod
    def refused(address: str, reason: str) -> str:
        return _json({"type": "refused", "address": address, "reason": reason})

    # ---- from the page ----------------------------------------------------------------------------

    @staticmethod
    def parse(message: str | bytes) -> dict[str, Any]:
        """A page message as a dict with "osc" (str) and "args" (list), or "preview" (bool)."""
        if isinstance(message, bytes):
            raise ConfigError("the page sends JSON text, not binary messages")
        try:
            doc = json.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise ConfigError(f"not JSON: {shown(str(exc))}") from None
        if isinstance(doc, dict) and set(doc) == {"preview"} and isinstance(doc["preview"], bool):
            return doc
        if isinstance(doc, dict) and set(doc) == {"osc", "args"} and isinstance(doc["osc"], str) \
                and isinstance(doc["args"], list):
            return doc
        raise ConfigError(f'expected {{"osc": address, "args": [...]}} or {{"preview": true|false}}, got {shown(doc)}')

    def apply(self, address: str, args: list[Any], writable: bool) -> None:
        """Run one OSC-shaped message from the page; ConfigError says why it was refused."""
        addr = self.routes.get(address)
        if addr is None:
            raise ConfigError(f"unknown address {shown(address)} (see docs/osc.md)")
        if not writable:
            raise ConfigError(READ_ONLY)
        try:
            self.routes.apply(addr, tuple(args))
        except RecursionError:  # a list nested a thousand deep
            raise ConfigError("arguments nested too deep") from None


def _json(doc: dict[str, Any]) -> str:
    # Values are validated numbers and strings; NaN cannot reach here (the schema refuses it).
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))
