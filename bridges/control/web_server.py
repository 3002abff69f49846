"""One small HTTP and WebSocket server: OSCQuery and the web page, on `websockets`.

On one port, on its own thread and asyncio loop:

- `GET /`, `GET /<osc path>[?ATTRIBUTE]`, `GET /?HOST_INFO`: OSCQuery documents
  (bridges/control/oscquery.py); a browser asking for `/` as a page is sent to `/ui/`;
- `GET /ui/...`: the page's static files (bridges/control/web/, no build step, no CDN);
- a WebSocket at `/control`: the page's channel (bridges/control/web_page.py);
- a WebSocket at any other path: OSCQuery LISTEN.

`websockets` does the HTTP/1.1 parsing and all of RFC 6455 (handshake, framing, masking,
fragments, ping/pong, the closing handshake, size limits); this module decides who may
connect and what each connection is told. Rules (bridges/control/web_security.py): the
Host header must name this server, a browser's Origin must be loopback or the server's
own IP; at most MAX_CLIENTS WebSockets; messages at most MAX_MESSAGE bytes; and on a
server reachable from the LAN, the page changes nothing without the token.

Every producer (ParamStore listeners on the OSC/MIDI threads, the preview encoder, the
status tick) only offers messages to each client's Outbox; a slow client gets the latest
of each, never a backlog, and never slows a producer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from bridges.control.osc_datagram import MAX_DATAGRAM
from bridges.control.oscquery import OscQuery
from bridges.control.outbox import Outbox
from bridges.control.web_page import PREVIEW_TAGS, PageControl
from bridges.control.web_security import Token, host_allowed, is_loopback, origin_allowed, own_names
from bridges.video.preview import Preview
from engine.errors import ConfigError, shown
from engine.realtime.log_limit import LogLimiter

log = logging.getLogger("streamvj.web")

MAX_CLIENTS = 16  # WebSockets, LISTEN and page together
MAX_MESSAGE = MAX_DATAGRAM  # what a client may send: the same bound as one OSC datagram
CLOSE_TIMEOUT_S = 1.0  # a peer that does not answer the closing handshake is cut off after this
TICK_S = 1.0  # status, presets and errors to open pages
PAGE_PATH = "/control"
UI_PATH = "/ui/"
STATIC_DIR = Path(__file__).resolve().parent / "web"
_PAGE_HEADERS = (
    # The page loads only its own files, talks only to this server, and is never framed.
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(eq=False)
class Session:
    """One WebSocket client."""

    peer: str
    kind: Literal["listen", "page"]
    outbox: Outbox
    writable: bool = False  # page: may change state (token presented, or a loopback-only server)
    paths: set[str] = field(default_factory=set)  # LISTEN: the paths it listens to
    watching: bool = False  # page: wants preview pictures


class _Quiet(logging.LoggerAdapter):
    """websockets' log, one level down: its INFO (every HTTP answer, every connection: an
    OSCQuery client polls) is our DEBUG, and its DEBUG (every frame: five preview pictures a
    second) is dropped. Its warnings and errors stay."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's naming)
        return level > logging.DEBUG and self.logger.isEnabledFor(logging.DEBUG if level == logging.INFO else level)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            msg, kwargs = self.process(msg, kwargs)
            self.logger.log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


# Spelled out, not mimetypes': on Windows that reads the registry, which may call .js text/plain,
# and a browser refuses a script served so (nosniff).
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _load_static(folder: Path) -> dict[str, tuple[bytes, str]]:
    """The page's files, read once (a few kB): name -> (bytes, Content-Type)."""
    return {path.name: (path.read_bytes(), _TYPES[path.suffix])
            for path in sorted(folder.iterdir()) if path.is_file() and path.suffix in _TYPES}


class WebServer:
    """OSCQuery (always) and the web page (with `page`) on host:port; see the module docstring."""

    def __init__(self, query: OscQuery, *, page: PageControl | None = None, preview: Preview | None = None,
                 host: str = "127.0.0.1", port: int = 0, token: Token | None = None,
                 names: Iterable[str] = ()) -> None:
        self.query, self.page, self.preview = query, page, preview
        self.host, self.port = host, port
        self.token = token if token is not None else Token(required=not is_loopback(host))
        self._names = own_names(names)
        self._static = _load_static(STATIC_DIR) if page is not None else {}
        self._limiter = LogLimiter(log)
        self._lock = threading.Lock()
        self._sessions: dict[ServerConnection, Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] = (host, port)

    # ---- lifecycle ----------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def page_url(self, host: str | None = None) -> str:
        """The page's address; with the token in the fragment (never sent in a request) when one is needed."""
        where = host or self._address[0]
        where = f"[{where}]" if ":" in where else where
        url = f"http://{where}:{self._address[1]}{UI_PATH}"
        return url + f"#token={self.token.value}" if self.token.required else url

    def start(self) -> WebServer:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="streamvj-web", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except ConfigError:
            self._thread.join()
            self._thread = None
            raise
        self.query.store.add_listener(self._on_change)
        if self.preview is not None:
            self.preview.on_jpeg = self._on_jpeg
        return self

    def stop(self) -> None:
        self.query.store.remove_listener(self._on_change)
        if self.preview is not None:
            self.preview.on_jpeg = None
            self.preview.watch(False)
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sessions(self) -> list[Session]:
        """Connected WebSocket clients (the objects themselves: tests read paths and outboxes)."""
        with self._lock:
            return [s for c, s in self._sessions.items() if c.protocol.state is State.OPEN]

    # ---- the loop's thread --------------------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())  # host lookups ran there
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._stopping = asyncio.Event()
        try:
            self._server = await serve(
                self._handler, self.host, self.port, process_request=self._process_request,
                process_response=self._process_response, server_header="streamvj",
                compression=None,  # JPEGs and short JSON: deflate would cost CPU for nothing
                close_timeout=CLOSE_TIMEOUT_S, max_size=MAX_MESSAGE, logger=_Quiet(log, {}),
            )
        except OSError as exc:
            ready.set_exception(ConfigError(
                f"web/OSCQuery server: cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(change osc.query_port or --web-port)"))
            return
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self._address = (str(host), int(port))
        ready.set_result(None)
        ticker = asyncio.create_task(self._tick())
        await self._stopping.wait()
        ticker.cancel()
        self._server.close()  # closes every WebSocket with 1001, cut off after CLOSE_TIMEOUT_S
        await self._server.wait_closed()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            pages = [s for s in self.sessions() if s.kind == "page"]
            if not pages or self.page is None:
                continue
            try:
                messages = self.page.tick()
            except Exception:  # a status reader's bug must not end the page's updates
                self._limiter.warning(("tick",), "web page: status update failed", exc_info=True)
                continue
            for key, message in messages:
                for session in pages:
                    session.outbox.offer(key, message)

    # ---- HTTP ---------------------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        headers = request.headers
        if not host_allowed(headers.get("Host"), self._names):
            return _text(HTTPStatus.FORBIDDEN, f"Host {shown(headers.get('Host'))} does not name this server "
                                               "(use its IP address, localhost or its .local name)")
        method = getattr(request, "method", "GET")
        if method != "GET":
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, f"{shown(method)} not allowed: OSCQuery and the page are GET only")
        url = urlsplit(request.path)
        if "websocket" not in headers.get("Upgrade", "").lower():
            return self._http(unquote(url.path), unquote(url.query), headers.get("Accept", ""))
        if not origin_allowed(headers.get("Origin"), headers.get("Host")):
            return _text(HTTPStatus.FORBIDDEN, "WebSocket: pages from this origin may not connect")
        if url.path == PAGE_PATH and self.page is None:
            return _text(HTTPStatus.NOT_FOUND, "this server has no web page")
        return None  # websockets checks the handshake (400 when it is not one)

    def _http(self, path: str, query: str, accept: str) -> Response:
        if path.startswith(UI_PATH) or path == UI_PATH.rstrip("/"):
            name = path[len(UI_PATH):] or "index.html"
            found = self._static.get(name)
            if found is None:
                return _text(HTTPStatus.NOT_FOUND, f"no such file {shown(name)}")
            return _response(HTTPStatus.OK, found[0], found[1], _PAGE_HEADERS)
        if path == "/" and not query and self.page is not None and accept.startswith("text/html"):
            # A browser opening the server's address wants the page; OSCQuery clients ask for JSON.
            return _response(HTTPStatus.SEE_OTHER, b"", "text/plain", (("Location", UI_PATH),))
        status, doc = self.query.answer(path, query)
        if isinstance(doc, str):
            return _text(status, doc)
        return _response(status, _json_bytes(doc), "application/json")

    def _process_response(self, conn: ServerConnection, request: Request, response: Response) -> Response | None:
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        path = urlsplit(request.path).path
        with self._lock:
            # A reservation whose handshake then failed is closed: it frees its slot here.
            for gone in [c for c in self._sessions if c.protocol.state is State.CLOSED]:
                del self._sessions[gone]
            if len(self._sessions) >= MAX_CLIENTS:
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {MAX_CLIENTS} WebSocket clients")
            assert self._loop is not None
            peer = "{}:{}".format(*conn.remote_address[:2]) if conn.remote_address else "?"
            if path == PAGE_PATH:
                token = dict(_query_pairs(urlsplit(request.path).query)).get("token")
                session = Session(peer, "page", Outbox(self._loop), writable=self.token.accepts(token))
            else:
                session = Session(peer, "listen", Outbox(self._loop))
            self._sessions[conn] = session
        return None

    # ---- WebSocket ----------------------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        with self._lock:
            session = self._sessions.get(conn)
        if session is None:
            return
        log.debug("web: %s client %s connected", session.kind, session.peer)
        writer = asyncio.create_task(self._write(conn, session))
        try:
            if session.kind == "page" and self.page is not None:
                session.outbox.offer("hello", self.page.hello(session.writable))
            async for message in conn:
                self._receive(session, message)
        except ConnectionClosed as exc:
            log.debug("web: %s client %s: %s", session.kind, session.peer, exc)
        finally:
            writer.cancel()
            session.outbox.close()
            with self._lock:
                self._sessions.pop(conn, None)
            self._update_watching()
            log.debug("web: %s client %s closed", session.kind, session.peer)

    async def _write(self, conn: ServerConnection, session: Session) -> None:
        try:
            while True:
                await conn.send(await session.outbox.get())
        except ConnectionClosed:
            return

    def _receive(self, session: Session, message: str | bytes) -> None:
        if session.kind == "listen":
            with self._lock:  # the store listener reads `paths` from other threads
                self.query.listen_command(session.paths, message, session.peer)
            return
        assert self.page is not None
        address = ""
        try:
            doc = self.page.parse(message)
            if "preview" in doc:
                session.watching = doc["preview"]
                self._update_watching()
                return
            address = doc["osc"]
            self.page.apply(address, doc["args"], session.writable)
        except ConfigError as exc:
            log.debug("web page %s: %s refused: %s", session.peer, shown(address), exc)
            session.outbox.offer(("refused", address), self.page.refused(address, str(exc)))

    # ---- producers (any thread) ---------------------------------------------------------------------

    def _on_change(self, name: str, value: Any, source: str) -> None:
        # Runs on whichever thread set the value (OSC, MIDI, a preset switch): it only offers,
        # and nothing it meets may reach back into that thread's store.set.
        try:
            self._offer_change(name, value)
        except Exception:  # noqa: BLE001 (the last guard of someone else's thread)
            self._limiter.warning(("change", name), f"web: could not pass on a change of {name}", exc_info=True)

    def _offer_change(self, name: str, value: Any) -> None:
        changes = self.query.changes(name, value)
        with self._lock:
            targets = [(s, set(s.paths)) for s in self._sessions.values()]
        for path, new in changes:
            packet = text = None
            for session, paths in targets:
                if session.kind == "page":
                    text = text or PageControl.value_message(path, new)
                    session.outbox.offer(("value", path), text)
                elif path in paths:
                    packet = packet or self.query.listen_packet(path, new)
                    if packet is not None:
                        session.outbox.offer(path, packet)

    def _on_jpeg(self, kind: str, jpeg: bytes) -> None:
        message = PREVIEW_TAGS[kind] + jpeg
        with self._lock:
            watching = [s for s in self._sessions.values() if s.watching]
        for session in watching:
            session.outbox.offer(("preview", kind), message)

    def _update_watching(self) -> None:
        if self.preview is not None:
            with self._lock:
                on = any(s.watching for s in self._sessions.values())
            self.preview.watch(on)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True, max_num_fields=8)
    except ValueError:  # more fields than any page sends
        return []


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, allow_nan=False).encode()


def _response(status: HTTPStatus, body: bytes, content_type: str,
              extra: Iterable[tuple[str, str]] = ()) -> Response:
    headers = Headers()
    if status not in (HTTPStatus.NO_CONTENT, HTTPStatus.SEE_OTHER):
        headers["Content-Type"] = content_type
    if status is not HTTPStatus.NO_CONTENT:
        headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Connection"] = "close"
    for key, value in extra:
        headers[key] = value
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    body = b"" if status is HTTPStatus.NO_CONTENT else text.encode()
    return _response(status, body, "text/plain; charset=utf-8")
