from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from bridges.control.websocket import (
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Connection,
    Decoder,
    HandshakeError,
    ProtocolError,
    accept_key,
    check_handshake,
    close_payload,
    decode_frame,
    encode_frame,
    origin_allowed,
    parse_close,
)

RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
MASK = b"\x37\xfa\x21\x3d"


def good_headers(**over: str) -> dict[str, str]:
    h = {
        "upgrade": "websocket",
        "connection": "keep-alive, Upgrade",
        "sec-websocket-version": "13",
        "sec-websocket-key": RFC_KEY,
    }
    h.update(over)
    return h


# ------------------------------------------------------------------ handshake


def test_accept_key_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT
    assert check_handshake(good_headers()) == RFC_ACCEPT
    assert check_handshake(good_headers(upgrade="WebSocket")) == RFC_ACCEPT


@pytest.mark.parametrize(
    "headers",
    [
        good_headers(upgrade="h2c"),
        good_headers(connection="keep-alive"),
        good_headers(**{"sec-websocket-version": "8"}),
        good_headers(**{"sec-websocket-key": "not base64!"}),
        good_headers(**{"sec-websocket-key": "c2hvcnQ="}),  # 5 bytes, not 16
        {k: v for k, v in good_headers().items() if k != "sec-websocket-key"},
    ],
)
def test_bad_handshakes(headers: dict[str, str]) -> None:
    with pytest.raises(HandshakeError):
        check_handshake(headers)


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, "127.0.0.1:5678", True),  # TouchDesigner, Chataigne: no Origin
        ("http://localhost:3000", "127.0.0.1:5678", True),
        ("http://127.0.0.1:8080", "127.0.0.1:5678", True),
        ("http://[::1]:8080", "[::1]:5678", True),
        ("http://192.168.1.5:8080", "192.168.1.5:5678", True),  # a page served by this machine's IP
        ("https://evil.example", "127.0.0.1:5678", False),
        ("http://evil.example", "evil.example:5678", False),  # DNS rebinding
        ("http://192.168.1.9", "192.168.1.5:5678", False),
        ("null", "127.0.0.1:5678", False),
    ],
)
def test_origin_allowed(origin: str | None, host: str, ok: bool) -> None:
    assert origin_allowed(origin, host) is ok


# ------------------------------------------------------------------ frames


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [None, MASK])
def test_frame_round_trip_all_length_forms(n: int, mask: bytes | None) -> None:
    payload = os.urandom(n)
    data = encode_frame(OP_BINARY, payload, mask=mask)
    assert data[1] & 0x7F == (n if n < 126 else 126 if n < 65536 else 127)
    if n:
        assert (data[-n:] == payload) is (mask is None)  # MASK has no zero byte: every byte changes
    frame, used = decode_frame(data + b"extra", max_payload=1 << 20, masked=mask is not None) or (None, 0)
    assert frame is not None and used == len(data)
    assert (frame.fin, frame.opcode, frame.payload) == (True, OP_BINARY, payload)


def test_partial_frames_wait_for_more() -> None:
    data = encode_frame(OP_TEXT, b"x" * 300, mask=MASK)
    for cut in range(len(data)):
        assert decode_frame(data[:cut]) is None


def expect_error(code: int, data: bytes, masked: bool = True) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_frame(data, masked=masked)
    assert err.value.code == code


def test_frame_protocol_errors() -> None:
    expect_error(CLOSE_PROTOCOL, encode_frame(OP_TEXT, b"hi"))  # client frame not masked
    expect_error(CLOSE_PROTOCOL, encode_frame(OP_TEXT, b"hi", mask=MASK), masked=False)
    expect_error(CLOSE_PROTOCOL, bytes([0x80 | 0x40 | OP_TEXT]) + encode_frame(OP_TEXT, b"", mask=MASK)[1:])
    expect_error(CLOSE_PROTOCOL, bytes([0x80 | 0x3, 0x80]) + MASK)  # reserved opcode
    expect_error(CLOSE_PROTOCOL, encode_frame(OP_PING, b"p", fin=False, mask=MASK))
    expect_error(CLOSE_PROTOCOL, encode_frame(OP_PING, b"p" * 126, mask=MASK))


def test_oversized_frame_fails_from_its_header_alone() -> None:
    header = encode_frame(OP_BINARY, b"\0" * 70000, mask=MASK)[:14]
    expect_error(CLOSE_TOO_BIG, header)
    expect_error(CLOSE_TOO_BIG, bytes([0x82, 0xFF]) + (1 << 62).to_bytes(8, "big"))
    expect_error(CLOSE_PROTOCOL, bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big"))


def test_decoder_joins_fragments_around_control_frames() -> None:
    dec = Decoder()
    data = (
        encode_frame(OP_TEXT, b'{"COMMAND": ', fin=False, mask=MASK)
        + encode_frame(OP_PING, b"mid", mask=MASK)
        + encode_frame(OP_CONT, b'"LISTEN"}', mask=MASK)
    )
    got = [m for i in range(0, len(data), 3) for m in dec.feed(data[i : i + 3])]
    assert got == [(OP_PING, b"mid"), (OP_TEXT, b'{"COMMAND": "LISTEN"}')]


@pytest.mark.parametrize(
    ("code", "frames"),
    [
        (CLOSE_PROTOCOL, [(OP_CONT, b"x", True)]),
        (CLOSE_PROTOCOL, [(OP_TEXT, b"a", False), (OP_TEXT, b"b", True)]),
        (CLOSE_TOO_BIG, [(OP_BINARY, b"a" * 40000, False), (OP_CONT, b"b" * 40000, True)]),
        (CLOSE_INVALID_DATA, [(OP_TEXT, b"\xff\xfe", True)]),
    ],
)
def test_decoder_message_errors(code: int, frames: list[tuple[int, bytes, bool]]) -> None:
    data = b"".join(encode_frame(op, p, fin=fin, mask=MASK) for op, p, fin in frames)
    with pytest.raises(ProtocolError) as err:
        list(Decoder().feed(data))
    assert err.value.code == code


def test_close_payloads() -> None:
    assert parse_close(b"") == (None, "")
    assert parse_close(close_payload(1001, "bye")) == (1001, "bye")
    assert len(close_payload(1000, "é" * 200)) <= 125
    for bad in (b"\x03", (1005).to_bytes(2, "big"), (999).to_bytes(2, "big"), (5000).to_bytes(2, "big")):
        with pytest.raises(ProtocolError):
            parse_close(bad)


# ------------------------------------------------------------------ Connection over a socketpair


class Peer:
    """The client end of a socketpair: masked frames out, server frames in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.dec, self.queue = sock, Decoder(masked=False), list[tuple[int, bytes]]()
        sock.settimeout(10)

    def send(self, opcode: int, payload: bytes = b"", *, mask: bytes | None = MASK) -> None:
        self.sock.sendall(encode_frame(opcode, payload, mask=mask))

    def recv(self) -> tuple[int, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)

    def at_eof(self) -> bool:
        return self.sock.recv(65536) == b""


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Peer, list[tuple[int, bytes]], threading.Thread]]:
    server, client = socket.socketpair()
    got: list[tuple[int, bytes]] = []
    conn = Connection(server, server.makefile("rb"), lambda c, op, p: got.append((op, p)), name="test-ws")
    thread = threading.Thread(target=conn.serve, name="test-ws-serve")
    yield conn, Peer(client), got, thread
    conn.abort()
    if thread.ident is not None:
        thread.join()
    server.close()
    client.close()


def test_connection_latest_value_wins_in_first_come_order(pair: tuple) -> None:
    conn, peer, _, thread = pair
    conn.offer("/a", b"1")
    conn.offer("/b", b"2")
    conn.offer("/a", b"3")
    assert (conn.pending(), conn.dropped) == (2, 1)
    thread.start()
    assert [peer.recv(), peer.recv()] == [(OP_BINARY, b"3"), (OP_BINARY, b"2")]


def test_connection_ping_message_and_close_handshake(pair: tuple) -> None:
    conn, peer, got, thread = pair
    thread.start()
    peer.send(OP_PING, b"hello")
    assert peer.recv() == (OP_PONG, b"hello")
    peer.send(OP_TEXT, b"cmd")
    peer.send(OP_PONG, b"unsolicited")  # ignored
    peer.send(OP_CLOSE, close_payload(CLOSE_NORMAL))
    assert peer.recv() == (OP_CLOSE, close_payload(CLOSE_NORMAL))
    assert peer.at_eof()
    thread.join()
    assert conn.finished.is_set() and got == [(OP_TEXT, b"cmd")]
    conn.offer("/a", b"late")  # after close: dropped, not queued
    assert conn.pending() == 0


def test_connection_closes_on_protocol_error(pair: tuple) -> None:
    conn, peer, _, thread = pair
    thread.start()
    peer.send(OP_TEXT, b"unmasked", mask=None)
    op, payload = peer.recv()
    assert op == OP_CLOSE and parse_close(payload)[0] == CLOSE_PROTOCOL
    assert peer.at_eof()
    thread.join()


def test_connection_abort_ends_a_silent_peer(pair: tuple) -> None:
    conn, peer, _, thread = pair
    thread.start()
    conn.abort()
    thread.join()
    assert conn.finished.is_set()
