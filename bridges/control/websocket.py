"""A minimal RFC 6455 WebSocket server side, for OSCQuery LISTEN streaming.

Pure parts (handshake check, frame encode/decode, message reassembly) take and return
bytes so they unit-test without sockets. `Connection` runs one upgraded socket: the
caller's thread reads, a writer thread sends, and `offer` only enqueues (latest value
per key wins), so whoever produces values is never blocked by a slow client.
No extensions (permessage-deflate) and no subprotocols are negotiated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("streamvj.oscquery")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_UNSUPPORTED = 1000, 1001, 1002, 1003
CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1007, 1009
MAX_MESSAGE = 64 * 1024  # clients only send small JSON commands
READ_CHUNK = 16 * 1024
SEND_BUFFER = 64 * 1024  # small, so stale values wait in our coalescing queue, not in the kernel
CLOSE_WAIT_S = 1.0  # how long a closing peer may take to answer before it is cut off


class HandshakeError(ValueError):
    """The upgrade request is not a valid WebSocket handshake (answer 400)."""


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


# ------------------------------------------------------------------ handshake


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def check_handshake(headers: Mapping[str, str]) -> str:
    """The Sec-WebSocket-Accept value for an upgrade request's headers (names lower-case)."""
    if "websocket" not in _tokens(headers.get("upgrade")):
        raise HandshakeError("missing 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers.get("connection")):
        raise HandshakeError("missing 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError("Sec-WebSocket-Version must be 13")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError("Sec-WebSocket-Key must be 16 bytes, base64-encoded")
    return accept_key(key)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """Whether a browser page of this Origin may connect (cross-site WebSocket hijacking).

    Non-browser clients (TouchDesigner, Chataigne) send no Origin. A page may connect
    when it comes from loopback, or from the IP literal the server was addressed by; a
    DNS name is not enough, since DNS rebinding makes any site's name point here.
    """
    if origin is None:
        return True
    try:
        origin_host = urlsplit(origin.strip()).hostname
        server_host = urlsplit("//" + (host or "").strip()).hostname
    except ValueError:
        return False
    if not origin_host:
        return False
    if _loopback(origin_host):
        return True
    try:
        ipaddress.ip_address(origin_host)
    except ValueError:
        return False
    return origin_host == server_host


# ------------------------------------------------------------------ frames


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame; servers send unmasked (mask=None), clients pass a 4-byte mask."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += n.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    if len(mask) != 4:
        raise ValueError("a WebSocket mask is 4 bytes")
    return bytes(head) + mask + _mask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:123]  # control payloads are <= 125 bytes


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(status code or None, reason) of a close frame's payload."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999):
        raise ProtocolError(CLOSE_PROTOCOL, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None


def decode_frame(
    buf: bytes | bytearray, *, max_payload: int = MAX_MESSAGE, masked: bool = True
) -> tuple[Frame, int] | None:
    """The first frame in `buf` and the bytes it used, or None if `buf` holds only part of it.

    `masked`: whether frames must be masked (True reading a client, False reading a
    server). Oversized frames fail as soon as the header is in, before the payload.
    """
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    fin, opcode, n = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F
    if b0 & 0x70:
        raise ProtocolError(CLOSE_PROTOCOL, "reserved bits set (no extension was negotiated)")
    if opcode not in _OPCODES:
        raise ProtocolError(CLOSE_PROTOCOL, f"unknown opcode {opcode:#x}")
    if opcode >= OP_CLOSE and (not fin or n > 125):
        raise ProtocolError(CLOSE_PROTOCOL, "control frames must be unfragmented and <= 125 bytes")
    if bool(b1 & 0x80) != masked:
        raise ProtocolError(
            CLOSE_PROTOCOL, "client frames must be masked" if masked else "masked server frame"
        )
    i = 2
    if n >= 126:
        i = 4 if n == 126 else 10
        if len(buf) < i:
            return None
        n = int.from_bytes(buf[2:i], "big")
        if n >> 63:
            raise ProtocolError(CLOSE_PROTOCOL, "payload length has its top bit set")
    if n > max_payload:
        raise ProtocolError(CLOSE_TOO_BIG, f"frame of {n} bytes exceeds {max_payload}")
    key = b""
    if masked:
        if len(buf) < i + 4:
            return None
        key, i = bytes(buf[i : i + 4]), i + 4
    if len(buf) < i + n:
        return None
    payload = bytes(buf[i : i + n])
    return Frame(fin, opcode, _mask(payload, key) if masked else payload), i + n


class Decoder:
    """Bytes in, whole messages out: (opcode, payload), continuation frames joined,
    control frames passed through as they come (they may sit between fragments)."""

    def __init__(self, *, masked: bool = True, max_message: int = MAX_MESSAGE) -> None:
        self.masked, self.max_message = masked, max_message
        self._buf = bytearray()
        self._op: int | None = None  # opcode of the fragmented message in progress
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Messages completed by `data`; consume the iterator fully. Raises ProtocolError."""
        self._buf += data
        while True:
            got = decode_frame(self._buf, max_payload=self.max_message, masked=self.masked)
            if got is None:
                return
            frame, used = got
            del self._buf[:used]
            msg = self._assemble(frame)
            if msg is not None:
                yield msg

    def _assemble(self, frame: Frame) -> tuple[int, bytes] | None:
        if frame.opcode >= OP_CLOSE:
            return frame.opcode, frame.payload
        if frame.opcode == OP_CONT:
            if self._op is None:
                raise ProtocolError(CLOSE_PROTOCOL, "continuation frame with no message to continue")
        elif self._op is not None:
            raise ProtocolError(CLOSE_PROTOCOL, "new message before the fragmented one ended")
        else:
            self._op = frame.opcode
        self._size += len(frame.payload)
        if self._size > self.max_message:
            raise ProtocolError(CLOSE_TOO_BIG, f"message exceeds {self.max_message} bytes")
        self._parts.append(frame.payload)
        if not frame.fin:
            return None
        op, payload = self._op, b"".join(self._parts)
        self._op, self._parts, self._size = None, [], 0
        if op == OP_TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
        return op, payload


# ------------------------------------------------------------------ connection

OnMessage = Callable[["Connection", int, bytes], None]


class Connection:
    """One upgraded socket. `serve()` reads on the calling thread until the connection
    ends; a writer thread sends. `offer`, `close` and `abort` are safe from any thread."""

    def __init__(
        self, sock: socket.socket, rfile: io.BufferedIOBase, on_message: OnMessage, *, name: str
    ) -> None:
        self._sock, self._rfile, self._on_message, self.name = sock, rfile, on_message, name
        self._cond = threading.Condition()
        self._values: OrderedDict[str, bytes] = OrderedDict()  # key -> latest encoded frame
        self._pong: bytes | None = None  # only the latest ping is answered (RFC 6455 5.5.3)
        self._close: bytes | None = None
        self._dead = False  # writer must exit without sending more
        self.dropped = 0  # values replaced before they were sent
        self.finished = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a vanished peer frees its slot
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # live values: no Nagle delay

    # ---------------------------------------------------------------- any thread

    def offer(self, key: str, payload: bytes) -> None:
        """Queue a binary message; an unsent one with the same key is replaced. Never blocks."""
        frame = encode_frame(OP_BINARY, payload)
        with self._cond:
            if self._close is not None or self._dead:
                return
            if key in self._values:
                self.dropped += 1  # keeps its place in line: the oldest pending change goes first
            self._values[key] = frame
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._values)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame after nothing else (unsent values are dropped); first call wins."""
        with self._cond:
            if self._close is None and not self._dead:
                self._close = encode_frame(OP_CLOSE, close_payload(code, reason))
                self._values.clear()
                self._cond.notify()

    def abort(self) -> None:
        """Drop the connection now: unblocks the reader and a writer stuck on a full socket."""
        with self._cond:
            self._dead = True
            self._cond.notify()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already gone
            log.debug("WebSocket %s: shutdown: %s", self.name, exc)

    # ---------------------------------------------------------------- serving

    def serve(self) -> None:
        self._writer.start()
        try:
            self._read_loop()
        finally:
            self._finish()

    def _read_loop(self) -> None:
        decoder = Decoder()
        while True:
            try:
                data = self._rfile.read1(READ_CHUNK)  # what is buffered, or one recv
            except OSError as exc:
                log.debug("WebSocket %s: read: %s", self.name, exc)
                return
            if not data:
                return
            try:
                for opcode, payload in decoder.feed(data):
                    if opcode == OP_PING:
                        with self._cond:
                            self._pong = encode_frame(OP_PONG, payload)
                            self._cond.notify()
                    elif opcode == OP_CLOSE:
                        code, _ = parse_close(payload)
                        self.close(CLOSE_NORMAL if code is None else code)  # echo it
                        return
                    elif opcode != OP_PONG:
                        self._on_message(self, opcode, payload)
            except ProtocolError as exc:
                log.info("WebSocket %s: %s; closing (%d)", self.name, exc.reason, exc.code)
                self.close(exc.code, exc.reason)
                return

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not (self._dead or self._close or self._pong or self._values):
                    self._cond.wait()
                if self._dead:
                    return
                last = self._close is not None
                if self._close is not None:
                    frame = self._close
                elif self._pong is not None:
                    frame, self._pong = self._pong, None
                else:
                    frame = self._values.popitem(last=False)[1]
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                log.debug("WebSocket %s: send: %s", self.name, exc)
                self.abort()
                return
            if last:
                return

    def _finish(self) -> None:
        with self._cond:
            closing = self._close is not None
        if closing:
            self._writer.join(CLOSE_WAIT_S)  # let the close frame go out, unless the peer stalls
        self.abort()
        self._writer.join()
        self.finished.set()
