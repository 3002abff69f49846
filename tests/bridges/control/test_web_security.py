from __future__ import annotations

import socket

import pytest

from bridges.control.web_security import (
    TOKEN_MIN,
    Token,
    host_allowed,
    is_loopback,
    origin_allowed,
    own_names,
)
from engine.errors import ConfigError


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
        ("http://[not-an-ip", "127.0.0.1:5678", False),
    ],
)
def test_origin_allowed(origin: str | None, host: str, ok: bool) -> None:
    assert origin_allowed(origin, host) is ok


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (None, True),  # an HTTP/1.0 tool, not a browser
        ("127.0.0.1:9001", True),
        ("[::1]:9001", True),
        ("192.168.1.5:9001", True),
        ("localhost:9001", True),
        ("LOCALHOST", True),
        ("evil.example:9001", False),  # DNS rebinding: a foreign name resolving to us
        ("127.0.0.1.evil.example", False),
        ("", False),
        ("[bad", False),
    ],
)
def test_host_allowed(host: str | None, ok: bool) -> None:
    assert host_allowed(host, own_names()) is ok


def test_own_names_include_this_machine_and_its_mdns_name() -> None:
    me = socket.gethostname().lower()
    names = own_names(["studio.local."])
    assert {"localhost", me, f"{me.split('.')[0]}.local", "studio.local"} <= names
    assert host_allowed(f"{me}:9001", names) and host_allowed("studio.local:9001", names)


@pytest.mark.parametrize(("host", "loop"), [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("studio.local", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_token() -> None:
    open_ = Token(required=False)
    assert open_.accepts(None) and open_.accepts("anything")
    lan = Token(required=True)
    assert len(lan.value) >= 20 and lan.value != Token(required=True).value  # random per run
    assert lan.accepts(lan.value)
    assert not lan.accepts(None) and not lan.accepts("") and not lan.accepts(lan.value[:-1])
    assert Token("a-chosen-token", required=True).accepts("a-chosen-token")
    with pytest.raises(ConfigError, match=f"at least {TOKEN_MIN} characters"):
        Token("short", required=True)
