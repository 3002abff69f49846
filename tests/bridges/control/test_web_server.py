"""The web server's HTTP and WebSocket behaviour on loopback: the handshake and its refusals,
the closing handshake, limits (size, clients, slow readers), the page's files and channel,
the token, and a clean stop. RFC 6455 itself is websockets'; these check what we rely on."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from websockets.sync.client import connect

from bridges.control.oscquery import OscQuery
from bridges.control.web_page import PageControl
from bridges.control.web_security import Token
from bridges.control.web_server import MAX_CLIENTS, MAX_MESSAGE, WebServer
from bridges.video.preview import Preview
from engine.config.schema import LiveParams
from engine.live.commands import Command
from engine.live.params import ParamStore
from tests.bridges.control.ws_client import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RFC_ACCEPT,
    Ws,
    close_payload,
    frame,
)
from tests.paths import PRESETS
from tests.waiting import wait_for

GS = "/streamvj/guidance_scale"


class Commands:
    def __init__(self) -> None:
        self.got: list[tuple[Command, tuple]] = []

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None:
        self.got.append((command, args))


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat"))


@pytest.fixture
def commands() -> Commands:
    return Commands()


def make_server(store: ParamStore, commands: Commands, **kw: Any) -> WebServer:
    page = PageControl(store, commands, presets_dir=PRESETS,
                       status=lambda: {"type": "status", "state": "running", "preset": "tiny", "fps": 30.0})
    return WebServer(OscQuery(store, osc_port=9000, presets_dir=PRESETS), page=page, **kw)


@pytest.fixture
def srv(store: ParamStore, commands: Commands) -> Iterator[WebServer]:
    with make_server(store, commands) as server:
        yield server

def http(srv: WebServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def page_url(srv: WebServer, token: str | None = None) -> str:
    host, port = srv.address
    return f"ws://{host}:{port}/control" + (f"?token={token}" if token else "")


def next_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        msg = ws.recv(timeout=10)
        if isinstance(msg, str) and json.loads(msg)["type"] == kind:
            return json.loads(msg)


# ------------------------------------------------------------------ handshake and closing


def test_handshake_accept_value(srv: WebServer) -> None:
    ws = Ws(srv.address)
    try:
        assert ws.head.startswith(b"HTTP/1.1 101 ")
        head = ws.head.decode().lower()
        assert f"sec-websocket-accept: {RFC_ACCEPT.lower()}" in head  # RFC 6455 section 1.3
        assert "upgrade: websocket" in head and "connection: upgrade" in head
        assert "sec-websocket-extensions" not in head  # no compression negotiated
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("extra", "key", "status"),
    [
        ("", "short", 400),
        ("Origin: https://evil.example\r\n", "dGhlIHNhbXBsZSBub25jZQ==", 403),
    ],
)
def test_handshake_refusals(srv: WebServer, extra: str, key: str, status: int) -> None:
    client = Ws(srv.address, extra=extra, key=key)
    assert client.status == status
    client.close()
    assert srv.sessions() == []


def test_a_foreign_host_name_is_refused_dns_rebinding(srv: WebServer) -> None:
    status, _, body = http(srv, "/?HOST_INFO", {"Host": f"evil.example:{srv.address[1]}"})
    assert status == 403 and b"does not name this server" in body
    assert http(srv, "/?HOST_INFO", {"Host": f"localhost:{srv.address[1]}"})[0] == 200


def test_only_get(srv: WebServer) -> None:
    host, port = srv.address
    request = urllib.request.Request(f"http://{host}:{port}/streamvj/guidance_scale", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405


def test_ping_gets_pong(srv: WebServer) -> None:
    ws = Ws(srv.address)
    try:
        ws.send(OP_PING, b"are you there")
        assert ws.recv() == (OP_PONG, b"are you there")
    finally:
        ws.close()


def test_client_close_is_echoed(srv: WebServer) -> None:
    ws = Ws(srv.address)
    try:
        ws.send(OP_CLOSE, close_payload(1000, "bye"))
        assert ws.recv_close() == 1000
        wait_for(lambda: srv.sessions() == [], "unregister")
    finally:
        ws.close()


def test_unmasked_frame_closes_with_1002(srv: WebServer) -> None:
    ws = Ws(srv.address)
    try:
        ws.send(OP_TEXT, b'{"COMMAND": "LISTEN", "DATA": "/streamvj/delta"}', masked=False)
        assert ws.recv_close() == 1002
        wait_for(lambda: srv.sessions() == [], "unregister")
    finally:
        ws.close()


def test_oversized_frame_closes_with_1009_from_its_header(srv: WebServer) -> None:
    ws = Ws(srv.address)
    try:
        ws.sock.sendall(frame(OP_TEXT, b"x" * (MAX_MESSAGE + 1))[:1000])  # only the start is sent
        assert ws.recv_close() == 1009
        wait_for(lambda: srv.sessions() == [], "unregister")
    finally:
        ws.close()


# ------------------------------------------------------------------ limits


def test_slow_client_queue_stays_bounded(srv: WebServer, store: ParamStore) -> None:
    slow = Ws(srv.address, rcvbuf=4096)  # never reads: the server's socket fills up
    try:
        for path in ("/streamvj/prompt", GS):
            slow.command("LISTEN", path)
        wait_for(lambda: any(len(s.paths) == 2 for s in srv.sessions()), "LISTEN")
        (session,) = srv.sessions()
        for i in range(4000):  # ~4 MB of prompts, far beyond the socket buffers
            store.set("prompt", f"{i:06d} " + "x" * 1000)
            store.set("guidance_scale", (i % 200) / 10)
            assert session.outbox.pending() <= 2  # one latest value per listened path
        assert session.outbox.dropped > 0
    finally:
        srv.stop()  # returns although the writer is stuck on a full socket
        slow.close()


def test_client_limit(srv: WebServer) -> None:
    clients = [Ws(srv.address) for _ in range(MAX_CLIENTS)]
    try:
        assert all(c.status == 101 for c in clients)
        extra = Ws(srv.address)
        assert extra.status == 503
        extra.close()
        assert http(srv, "/?HOST_INFO")[0] == 200  # HTTP still served
        clients.pop().send(OP_CLOSE, close_payload(1000))
        wait_for(lambda: len(srv.sessions()) < MAX_CLIENTS, "a free slot")
        clients.append(Ws(srv.address))
        assert clients[-1].status == 101
    finally:
        for c in clients:
            c.close()


def test_stop_closes_clients_and_leaves_no_threads(store: ParamStore, commands: Commands) -> None:
    before = set(threading.enumerate())
    server = make_server(store, commands).start()
    polite, silent = Ws(server.address), Ws(server.address)
    polite.command("LISTEN", GS)
    wait_for(lambda: len(server.sessions()) == 2, "both connected")
    codes: list[int | None] = []

    def answer_close() -> None:  # a well-behaved client replies to the server's close
        op, payload = polite.recv()
        codes.append(int.from_bytes(payload[:2], "big") if op == OP_CLOSE else None)
        polite.send(OP_CLOSE, payload)

    replier = threading.Thread(target=answer_close)
    replier.start()
    server.stop()
    replier.join()
    assert codes == [1001]
    assert silent.recv_close() == 1001  # sent, then cut off when it did not answer
    assert set(threading.enumerate()) - before == set()
    assert server.sessions() == []
    polite.close()
    silent.close()


# ------------------------------------------------------------------ the page


def test_page_files_are_served_with_their_types_and_guards(srv: WebServer) -> None:
    status, headers, body = http(srv, "/ui/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8" and b"app.js" in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert http(srv, "/ui/app.js")[1]["Content-Type"] == "text/javascript; charset=utf-8"
    assert http(srv, "/ui/style.css")[1]["Content-Type"] == "text/css; charset=utf-8"
    assert http(srv, "/ui/../../run_engine.py")[0] == 404
    assert http(srv, "/ui/nope.js")[0] == 404


def test_a_browser_at_the_root_is_sent_to_the_page(srv: WebServer) -> None:
    status, headers, _ = http(srv, "/", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert status == 303 and headers["Location"] == "/ui/"
    status, _, body = http(srv, "/", {"Accept": "*/*"})  # an OSCQuery client
    assert status == 200 and json.loads(body)["FULL_PATH"] == "/"


def test_page_channel_hello_values_and_changes(srv: WebServer, store: ParamStore, commands: Commands) -> None:
    with connect(page_url(srv)) as ws:
        hello = next_of(ws, "hello")
        assert hello["writable"] is True and hello["prefix"] == "/streamvj"
        assert hello["values"]["/streamvj/prompt"] == "a cat" and hello["presets"]["current"] == "tiny"
        assert "tiny" in hello["presets"]["names"] and hello["status"]["fps"] == 30.0
        ws.send(json.dumps({"osc": GS, "args": [3.5]}))
        assert next_of(ws, "value") == {"type": "value", "path": GS, "value": 3.5}
        assert store.get("guidance_scale") == 3.5
        ws.send(json.dumps({"osc": GS, "args": [35]}))
        refused = next_of(ws, "refused")
        assert refused["address"] == GS and "less than or equal to 20" in refused["reason"]
        ws.send(json.dumps({"osc": "/streamvj/preset/next", "args": []}))
        wait_for(lambda: commands.got == [(Command.PRESET_NEXT, ())], "the command")
        store.set("seed", 7, source="midi")  # every source's change reaches the page
        assert next_of(ws, "value") == {"type": "value", "path": "/streamvj/seed", "value": 7}
        assert next_of(ws, "status")["state"] == "running"  # the tick


def test_page_without_token_on_a_lan_server_is_read_only(store: ParamStore, commands: Commands) -> None:
    # A LAN server (token required), bound to loopback so that the test reaches nothing else.
    token = Token("sesame-open-sesame", required=True)
    with make_server(store, commands, token=token) as server, connect(page_url(server)) as ws:
        assert next_of(ws, "hello")["writable"] is False
        ws.send(json.dumps({"osc": GS, "args": [3.5]}))
        assert "read-only" in next_of(ws, "refused")["reason"] and store.get("guidance_scale") == 1.2
        with connect(page_url(server, "wrong-token-here")) as bad:
            assert next_of(bad, "hello")["writable"] is False
        with connect(page_url(server, token.value)) as good:
            assert next_of(good, "hello")["writable"] is True
            good.send(json.dumps({"osc": GS, "args": [3.5]}))
            assert next_of(good, "value")["value"] == 3.5
        assert server.page_url().endswith(f"/ui/#token={token.value}")


def test_preview_pictures_reach_watching_pages_only(store: ParamStore, commands: Commands) -> None:
    preview = Preview(fps=60).start()
    try:
        with make_server(store, commands, preview=preview) as server, connect(page_url(server)) as ws:
            next_of(ws, "hello")
            frame_ = np.full((64, 64, 4), 200, np.uint8)
            preview.offer("output", frame_)
            assert preview.stats()["output"]["made"] == 0  # nobody watches: nothing made
            ws.send(json.dumps({"preview": True}))
            wait_for(lambda: any(s.watching for s in server.sessions()), "watching")
            got = None
            deadline = time.monotonic() + 10
            while got is None and time.monotonic() < deadline:
                preview.offer("output", frame_)
                try:
                    msg = ws.recv(timeout=0.05)
                except TimeoutError:
                    continue
                got = msg if isinstance(msg, bytes) else None
            assert got is not None and got[:1] == b"o" and got[1:3] == b"\xff\xd8"  # a JPEG
            ws.send(json.dumps({"preview": False}))
            wait_for(lambda: not any(s.watching for s in server.sessions()), "not watching")
    finally:
        preview.stop()


def test_a_failing_change_never_reaches_the_setter(srv: WebServer, store: ParamStore, monkeypatch: pytest.MonkeyPatch,
                                                    logged: Callable[[str], list[str]]) -> None:
    def broken(name: str, value: Any) -> list:
        raise ValueError("a bug")

    monkeypatch.setattr(srv.query, "changes", broken)
    store.set("guidance_scale", 2.0, source="osc")  # the OSC thread's set must not see the web's bug
    assert store.get("guidance_scale") == 2.0
    assert len(logged("could not pass on a change of guidance_scale")) == 1
