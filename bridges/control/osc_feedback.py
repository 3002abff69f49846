"""OSC feedback: engine status to the VJ's host (TouchDesigner, Resolume, a phone).

`publish(stats)` sends what changed right away; a heartbeat thread re-sends the
last known state every second with a counter, so a peer that starts late (or
restarts) sees the full state within a second and can tell a hung engine
(heartbeat stops) from an idle one.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from pythonosc.udp_client import SimpleUDPClient

from engine.config.schema import OscSettings
from engine.errors import ConfigError, shown
from engine.realtime.log_limit import LogLimiter
from engine.realtime.periodic import Periodic

log = logging.getLogger("streamvj.osc")

STATES = ("loading", "building", "ready", "running", "paused", "error")
NUMBERS = ("fps", "latency_ms", "skip_ratio", "vram_mb", "gpu_power_w")
TEXTS = ("state", "preset", "error", "backend")
FIELDS = TEXTS + NUMBERS
MAX_TEXT = 1000


class OscFeedback:
    """Sends `<prefix>/status/<field>` messages to host:port (UDP, never blocks)."""

    def __init__(self, host: str, port: int, *, prefix: str = "/streamvj", heartbeat_s: float = 1.0) -> None:
        self.target = (host, port)
        self.prefix = prefix.rstrip("/") + "/status"
        self.heartbeat_s = heartbeat_s
        self._client = SimpleUDPClient(host, port)  # non-blocking socket: a full buffer drops, never stalls
        self._limiter = LogLimiter(log)
        self._lock = threading.Lock()
        self._last: dict[str, Any] = {"state": "loading"}
        self._beats = 0
        self._heart = Periodic("streamvj-osc-feedback", heartbeat_s, self.beat)

    @classmethod
    def from_settings(cls, settings: OscSettings) -> OscFeedback | None:
        """Feedback for a preset's `osc:` section, or None when no feedback target is set."""
        if settings.feedback is None:
            return None
        return cls(settings.feedback.host, settings.feedback.port, prefix=settings.prefix)

    @staticmethod
    def check(stats: dict[str, Any]) -> dict[str, Any]:
        """Validated copy of `stats`; unknown keys and non-finite numbers are caller bugs: raise."""
        out: dict[str, Any] = {}
        for key, value in stats.items():
            if key in NUMBERS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"feedback: {key} must be a finite number, got {shown(value)}")
                out[key] = float(value)
            elif key in TEXTS:
                if not isinstance(value, str):
                    raise ConfigError(f"feedback: {key} must be a string, got {shown(value)}")
                if key == "state" and value not in STATES:
                    raise ConfigError(f"feedback: state must be one of {', '.join(STATES)}, got {shown(value)}")
                # Error texts can be long tracebacks; a status line only needs the start.
                out[key] = value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
            else:
                raise ConfigError(f"feedback: unknown field {shown(key)}; known: {', '.join(FIELDS)}")
        return out

    def publish(self, stats: dict[str, Any]) -> None:
        """Send these fields now and remember them for the heartbeat."""
        checked = self.check(stats)
        with self._lock:
            self._last.update(checked)
        for key, value in checked.items():
            self._send(key, value)

    def beat(self) -> None:
        """One heartbeat: a counter, then every last-known field."""
        with self._lock:
            self._beats += 1
            n, last = self._beats, dict(self._last)
        self._send("heartbeat", n)
        for key, value in last.items():
            self._send(key, value)

    def _send(self, key: str, value: Any) -> None:
        try:
            self._client.send_message(f"{self.prefix}/{key}", value)
        except OSError as exc:  # peer gone (ICMP refused), buffer full: status is best-effort
            self._limiter.warning(("send", type(exc).__name__), f"OSC feedback to {self.target}: {exc}")

    def start(self) -> OscFeedback:
        self._heart.start()
        return self

    def stop(self) -> None:
        self._heart.stop()
