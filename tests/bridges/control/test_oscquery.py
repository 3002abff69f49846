from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage

from bridges.control.osc_address import address_table
from bridges.control.oscquery import ACCESS_RW, ACCESS_WRITE, MAX_WS_CLIENTS, OscQueryServer, osc_message
from bridges.control.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Decoder,
    close_payload,
    encode_frame,
    parse_close,
)
from engine.config.schema import LiveParams
from engine.live.params import ParamStore
from tests.paths import PRESETS


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat"))


@pytest.fixture
def query(store: ParamStore) -> Iterator[OscQueryServer]:
    with OscQueryServer(store, osc_port=9000, presets_dir=PRESETS) as srv:
        yield srv


def get(srv: OscQueryServer, path: str) -> tuple[int, Any]:
    host, port = srv.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_host_info(query: OscQueryServer) -> None:
    status, info = get(query, "/?HOST_INFO")
    assert status == 200
    assert (info["OSC_PORT"], info["OSC_TRANSPORT"], info["OSC_IP"]) == (9000, "UDP", "127.0.0.1")
    assert info["EXTENSIONS"]["VALUE"] is True and info["EXTENSIONS"]["LISTEN"] is True
    assert info["EXTENSIONS"]["PATH_CHANGED"] is False and "WS_PORT" not in info  # same port as HTTP


def test_bound_to_loopback(query: OscQueryServer) -> None:
    assert query.address[0] == "127.0.0.1"


def test_tree_has_every_address(query: OscQueryServer) -> None:
    status, root = get(query, "/")
    assert status == 200 and root["FULL_PATH"] == "/"
    for addr in address_table():
        node = root
        for part in addr.path.strip("/").split("/"):
            node = node["CONTENTS"][part]
        assert node["FULL_PATH"] == addr.path
        assert node["DESCRIPTION"] == addr.doc
        assert node["ACCESS"] in (ACCESS_RW, ACCESS_WRITE)
        assert "TYPE" in node


def test_param_nodes_carry_type_range_value(query: OscQueryServer, store: ParamStore) -> None:
    store.set("guidance_scale", 2.5)
    _, node = get(query, "/streamvj/guidance_scale")
    assert node == {
        "FULL_PATH": "/streamvj/guidance_scale",
        "DESCRIPTION": "Classifier-free guidance scale",
        "ACCESS": ACCESS_RW,
        "TYPE": "f",
        "VALUE": [2.5],
        "RANGE": [{"MIN": 0.0, "MAX": 20.0}],
    }
    _, t_index = get(query, "/streamvj/t_index_list")
    assert (t_index["TYPE"], t_index["VALUE"]) == ("ii", [32, 45])
    assert t_index["RANGE"] == [{"MIN": 0, "MAX": 49}] * 2
    _, interp = get(query, "/streamvj/prompt_interp")
    assert interp["RANGE"] == [{"VALS": ["linear", "slerp"]}]
    _, enabled = get(query, "/streamvj/similarity_enabled")
    assert (enabled["TYPE"], enabled["VALUE"]) == ("T", [False])


def test_value_follows_store(query: OscQueryServer, store: ParamStore) -> None:
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a cat"]})
    store.set("prompt", "a dog")
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a dog"]})
    store.set_smoothing("fx_hue", 2.0)
    assert get(query, "/streamvj/smoothing/fx_hue?VALUE") == (200, {"VALUE": [2.0]})


def test_node_with_value_and_children(query: OscQueryServer) -> None:
    _, prompt = get(query, "/streamvj/prompt")
    assert prompt["TYPE"] == "s" and "transition" in prompt["CONTENTS"]


def test_commands_are_write_only_with_choices(query: OscQueryServer) -> None:
    _, load = get(query, "/streamvj/preset/load")
    assert load["ACCESS"] == ACCESS_WRITE and "VALUE" not in load
    assert "tiny" in load["RANGE"][0]["VALS"]
    _, pause = get(query, "/streamvj/pause")
    assert (pause["TYPE"], pause["ACCESS"]) == ("N", ACCESS_WRITE)
    _, learn = get(query, "/streamvj/midi/learn")
    assert "guidance_scale" in learn["RANGE"][0]["VALS"]
    _, beats = get(query, "/streamvj/prompt/transition_beats")
    assert beats["TYPE"] == "sfs" and beats["RANGE"][2] == {"VALS": ["beat", "bar"]}


def test_errors(query: OscQueryServer) -> None:
    assert get(query, "/streamvj/nope")[0] == 404
    assert get(query, "/streamvj/guidance_scale?BOGUS")[0] == 400
    assert get(query, "/streamvj/pause?VALUE")[0] == 204


def test_port_in_use_is_a_config_error(query: OscQueryServer, store: ParamStore) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="OSCQuery: cannot listen"):
        OscQueryServer(store, osc_port=9000, port=query.address[1])


# ------------------------------------------------------------------ LISTEN over WebSocket

GS = "/streamvj/guidance_scale"


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0  # generous: a shared 2-core machine
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Ws:
    """A raw-socket WebSocket client built on the pure frame functions."""

    def __init__(
        self, srv: OscQueryServer, extra: str = "", *, key: str = "dGhlIHNhbXBsZSBub25jZQ==", rcvbuf: int = 0
    ) -> None:
        host, port = srv.address
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {buf!r}"
            buf += chunk
        self.head, rest = buf.split(b"\r\n\r\n", 1)
        self.status = int(self.head.split()[1])
        self.dec, self.queue = Decoder(masked=False), list[tuple[int, bytes]]()
        if self.status == 101 and rest:
            self.queue.extend(self.dec.feed(rest))

    def send(self, opcode: int, payload: bytes = b"", *, masked: bool = True) -> None:
        self.sock.sendall(encode_frame(opcode, payload, mask=os.urandom(4) if masked else None))

    def command(self, command: str, path: str) -> None:
        self.send(OP_TEXT, json.dumps({"COMMAND": command, "DATA": path}).encode())

    def recv(self) -> tuple[int, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)

    def recv_osc(self) -> tuple[str, list]:
        op, payload = self.recv()
        assert op == OP_BINARY
        msg = OscMessage(payload)
        return msg.address, list(msg.params)

    def recv_close(self) -> int | None:
        op, payload = self.recv()
        assert op == OP_CLOSE
        code = parse_close(payload)[0]
        assert self.sock.recv(65536) == b""  # then the server closes TCP
        return code

    def close(self) -> None:
        self.sock.close()


def listening(srv: OscQueryServer) -> list[set[str]]:
    return [paths for _, paths in srv.listening()]


def listen(srv: OscQueryServer, ws: Ws, *paths: str) -> None:
    for path in paths:
        ws.command("LISTEN", path)
    wait_for(lambda: any(set(paths) <= p for p in listening(srv)), f"LISTEN {paths}")


@pytest.fixture
def ws(query: OscQueryServer) -> Iterator[Ws]:
    client = Ws(query)
    assert client.status == 101
    yield client
    client.close()


def test_handshake_accept_value(ws: Ws) -> None:
    assert ws.head.startswith(b"HTTP/1.1 101 ")
    head = ws.head.decode().lower()
    assert "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head  # RFC 6455 section 1.3
    assert "upgrade: websocket" in head and "connection: upgrade" in head


@pytest.mark.parametrize(
    ("extra", "key", "status"),
    [
        ("", "short", 400),
        ("Origin: https://evil.example\r\n", "dGhlIHNhbXBsZSBub25jZQ==", 403),
    ],
)
def test_handshake_refusals(query: OscQueryServer, extra: str, key: str, status: int) -> None:
    client = Ws(query, extra, key=key)
    assert client.status == status
    client.close()
    assert listening(query) == []


def test_listen_delivers_osc_and_ignore_stops_it(query: OscQueryServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, GS, "/streamvj/t_index_list", "/streamvj/similarity_enabled", "/streamvj/prompt")
    store.set("guidance_scale", 2.5)
    assert ws.recv_osc() == (GS, [2.5])
    store.set("t_index_list", [10, 20])
    assert ws.recv_osc() == ("/streamvj/t_index_list", [10, 20])
    store.set("similarity_enabled", True)
    assert ws.recv_osc() == ("/streamvj/similarity_enabled", [True])
    store.set("prompt", "a dog, ünïcode")
    assert ws.recv_osc() == ("/streamvj/prompt", ["a dog, ünïcode"])
    store.set("delta", 0.3)  # not listened to: nothing sent

    ws.command("IGNORE", GS)
    wait_for(lambda: GS not in listening(query)[0], "IGNORE")
    store.set("guidance_scale", 3.0)
    store.set("prompt", "a bird")
    assert ws.recv_osc() == ("/streamvj/prompt", ["a bird"])  # guidance_scale was not sent


def test_listen_smoothing_sends_only_what_changed(query: OscQueryServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, "/streamvj/smoothing/fx_hue", "/streamvj/smoothing/delta")
    store.set_smoothing("fx_hue", 2.0)
    assert ws.recv_osc() == ("/streamvj/smoothing/fx_hue", [2.0])
    store.set_smoothing("delta", 1.5)
    assert ws.recv_osc() == ("/streamvj/smoothing/delta", [1.5])
    store.set_smoothing("fx_hue", 0.0)
    assert ws.recv_osc() == ("/streamvj/smoothing/fx_hue", [0.0])


def test_unknown_and_write_only_paths_are_ignored(
    query: OscQueryServer, ws: Ws, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="streamvj.oscquery")
    for path in ("/streamvj/nope", "/streamvj/pause", "/streamvj/prompt_blend", "../../etc/passwd"):
        ws.command("LISTEN", path)
    listen(query, ws, GS)
    assert listening(query) == [{GS}]
    assert any("not a readable path" in r.getMessage() for r in caplog.records)


def test_malformed_commands_are_logged_once_and_ignored(
    query: OscQueryServer, store: ParamStore, ws: Ws, logged: Callable[[str], list[str]]
) -> None:
    for _ in range(3):
        ws.send(OP_TEXT, b"{not json")
        ws.send(OP_TEXT, b'{"COMMAND": "DELETE", "DATA": "/"}')
        ws.send(OP_TEXT, b"[" * 5000 + b"]" * 5000)
        ws.send(OP_BINARY, osc_message(GS, "float", [9.0]))  # OSC in is not accepted
    listen(query, ws, GS)  # the connection still works
    assert store.get("guidance_scale") != 9.0
    assert len(logged("not JSON")) == 1 and len(logged("expected {")) == 1 and len(logged("binary")) == 1


def test_ping_gets_pong(ws: Ws) -> None:
    ws.send(OP_PING, b"are you there")
    assert ws.recv() == (OP_PONG, b"are you there")


def test_client_close_is_echoed(query: OscQueryServer, ws: Ws) -> None:
    ws.send(OP_CLOSE, close_payload(1000, "bye"))
    assert ws.recv_close() == 1000
    wait_for(lambda: listening(query) == [], "unregister")


def test_unmasked_frame_closes_with_1002(query: OscQueryServer, ws: Ws) -> None:
    ws.send(OP_TEXT, b'{"COMMAND": "LISTEN", "DATA": "/streamvj/delta"}', masked=False)
    assert ws.recv_close() == CLOSE_PROTOCOL
    wait_for(lambda: listening(query) == [], "unregister")


def test_oversized_frame_closes_with_1009(query: OscQueryServer, ws: Ws) -> None:
    ws.sock.sendall(encode_frame(OP_TEXT, b"x" * 100_000, mask=b"abcd")[:1000])  # header says 100 kB
    assert ws.recv_close() == CLOSE_TOO_BIG
    wait_for(lambda: listening(query) == [], "unregister")


def test_slow_client_queue_stays_bounded(query: OscQueryServer, store: ParamStore) -> None:
    slow = Ws(query, rcvbuf=4096)  # never reads: the server's socket fills up
    try:
        listen(query, slow, "/streamvj/prompt", GS)
        (conn,) = [c for c, _ in query.listening()]
        for i in range(4000):  # ~4 MB of prompts, far beyond the socket buffers
            store.set("prompt", f"{i:06d} " + "x" * 1000)
            store.set("guidance_scale", (i % 200) / 10)
            assert conn.pending() <= 2  # one latest value per listened path
        assert conn.dropped > 0
    finally:
        query.stop()  # returns although the writer is stuck on a full socket
        slow.close()


def test_client_limit(query: OscQueryServer) -> None:
    clients = [Ws(query) for _ in range(MAX_WS_CLIENTS)]
    try:
        assert all(c.status == 101 for c in clients)
        extra = Ws(query)
        assert extra.status == 503
        extra.close()
        assert get(query, "/?HOST_INFO")[0] == 200  # HTTP still served
        clients.pop().send(OP_CLOSE, close_payload(1000))
        wait_for(lambda: len(listening(query)) < MAX_WS_CLIENTS, "a free slot")
        clients.append(Ws(query))
        assert clients[-1].status == 101
    finally:
        for c in clients:
            c.close()


def test_http_unchanged_while_clients_listen(query: OscQueryServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, GS)
    store.set("guidance_scale", 4.0)
    assert get(query, "/streamvj/guidance_scale?VALUE") == (200, {"VALUE": [4.0]})
    assert ws.recv_osc() == (GS, [4.0])


def test_stop_closes_clients_and_leaves_no_threads(store: ParamStore) -> None:
    before = set(threading.enumerate())
    srv = OscQueryServer(store, osc_port=9000, presets_dir=PRESETS).start()
    polite, silent = Ws(srv), Ws(srv)
    listen(srv, polite, GS)
    codes: list[int | None] = []

    def answer_close() -> None:  # a well-behaved client replies to the server's close
        op, payload = polite.recv()
        codes.append(parse_close(payload)[0] if op == OP_CLOSE else None)
        polite.send(OP_CLOSE, payload)

    replier = threading.Thread(target=answer_close)
    replier.start()
    srv.stop()
    replier.join()
    assert codes == [CLOSE_GOING_AWAY]
    assert silent.recv_close() == CLOSE_GOING_AWAY  # sent, then cut off when it did not answer
    assert set(threading.enumerate()) - before == set()
    assert srv.listening() == []
    polite.close()
    silent.close()


def test_osc_message_types() -> None:
    def parsed(kind: str, args: list) -> list:
        return list(OscMessage(osc_message("/x", kind, args)).params)

    assert parsed("int", [4294967295]) == [4294967295]  # seeds past int32 go as int64
    assert parsed("int", [7]) == [7] and parsed("bool", [False]) == [False]
    assert parsed("float", [1]) == [1.0] and parsed("enum", ["slerp"]) == ["slerp"]
