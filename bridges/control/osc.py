"""OSC control server: UDP on its own thread, every message validated, never blocking.

A datagram is checked (osc_datagram), parsed by python-osc, and each message is routed
by its exact address (osc_routes): parameters go into the ParamStore, commands to the
show or the live controls, never executed here. A bad message is dropped and logged once
per (address, reason); no datagram, however malformed, can stop the server thread. With
debug logging (`run_engine.py -v`) every accepted message leaves one line.

The address reference (docs/osc.md) is `run_engine.py osc`.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pythonosc import osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridges.control.osc_datagram import MAX_DATAGRAM, check_packet
from bridges.control.osc_routes import OscRoutes
from engine.config.schema import OscSettings
from engine.errors import ConfigError, shown
from engine.live.commands import CommandSink
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from engine.realtime.log_limit import LogLimiter

__all__ = ["OscServer"]

log = logging.getLogger("streamvj.osc")

RCVBUF_BYTES = 4 * 1024 * 1024  # the kernel caps this at net.core.rmem_max
_GOT = re.compile(r"\s*\(got .*\)$|, got .*$", re.S)


class _UDPServer(BlockingOSCUDPServer):
    """python-osc's blocking UDP server (it picks IPv4/IPv6 from the host) reading 64 KiB datagrams.

    Its dispatcher is left empty: datagrams go to OscServer.handle_datagram, which checks
    them before parsing and routes by exact address.
    """

    max_packet_size = MAX_DATAGRAM

    def __init__(self, address: tuple[str, int], owner: OscServer) -> None:
        self._owner = owner
        super().__init__(address, Dispatcher())

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
        tempo: Tempo | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.routes = OscRoutes(self.prefix, store, commands, tempo if tempo is not None else store.tempo)
        self._allow = frozenset(allow) if allow is not None else None
        self._limiter = LogLimiter(log, clock=clock)
        self._counts = {"accepted": 0, "rejected": 0, "dropped": 0}
        try:
            self._server = _UDPServer((host, port), self)
        except OSError as exc:
            raise ConfigError(
                f"OSC: cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another streamvj or OSC app on that port? change osc.port/osc.host in the preset)"
            ) from None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: OscSettings, store: ParamStore, commands: CommandSink, *, tempo: Tempo | None = None
    ) -> OscServer:
        return cls(
            store,
            commands,
            host=settings.host,
            port=settings.port,
            allow=settings.allow,
            prefix=settings.prefix,
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
                    reason = f"unparseable: {shown(str(exc))}"
            if reason is not None:
                self._counts["dropped"] += 1
                self._limiter.warning(
                    ("<malformed>", reason), f"OSC datagram ({len(data)} bytes) dropped: {reason}"
                )
                return
            # Time tags are not honoured: every message applies on arrival (never sleep this thread).
            for timed in packet.messages:
                self._on_message(timed.message.address, tuple(timed.message.params))
        except Exception:  # the last guard of the server thread: log (rate-limited) and keep serving
            self._counts["dropped"] += 1
            self._limiter.warning(("<internal>",), "OSC: error handling a datagram", exc_info=True)

    def _on_message(self, address: str, args: tuple[Any, ...]) -> None:
        addr = self.routes.get(address)
        if addr is None:
            self._reject(address, "unknown address (see docs/osc.md)")
            return
        try:
            self.routes.apply(addr, args)
        except ConfigError as exc:
            self._reject(address, str(exc))
            return
        self._counts["accepted"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("OSC %s %s", address, shown(args))

    def _reject(self, address: str, reason: str) -> None:
        self._counts["rejected"] += 1
        where = shown(address)
        # Key without the value, so a fader sweeping out of range logs once, not per value.
        self._limiter.warning((where, _GOT.sub("", reason)), f"OSC {where} dropped: {reason}")
