"""A raw-socket WebSocket client for protocol tests: it writes its own handshake and frames
(masked or not, whole or cut short), so tests can send what a well-behaved library never would.

Frames are built with websockets' own serializer and parsed by the few lines below.
"""

from __future__ import annotations

import json
import socket
import struct

from websockets.frames import Frame, Opcode

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = (Opcode.TEXT, Opcode.BINARY, Opcode.CLOSE, Opcode.PING,
                                                  Opcode.PONG)
RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def frame(opcode: Opcode, payload: bytes = b"", *, masked: bool = True) -> bytes:
    return Frame(opcode, payload).serialize(mask=masked, extensions=[])


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class Ws:
    def __init__(self, address: tuple[str, int], path: str = "/", extra: str = "", *, key: str = RFC_KEY,
                 rcvbuf: int = 0) -> None:
        host, port = address
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {buf!r}"
            buf += chunk
        self.head, self._buf = buf.split(b"\r\n\r\n", 1)
        self.status = int(self.head.split()[1])

    def send(self, opcode: Opcode, payload: bytes = b"", *, masked: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, masked=masked))

    def command(self, command: str, path: str) -> None:
        self.send(OP_TEXT, json.dumps({"COMMAND": command, "DATA": path}).encode())

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        """One whole server frame: (opcode, payload); server frames are unmasked."""
        b0, b1 = self._read(2)
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def recv_close(self) -> int | None:
        while True:
            op, payload = self.recv()
            if op == OP_CLOSE:
                break
        code = struct.unpack("!H", payload[:2])[0] if payload else None
        assert self._buf == b"" and self.sock.recv(65536) == b""  # then the server closes TCP
        return code

    def close(self) -> None:
        self.sock.close()
