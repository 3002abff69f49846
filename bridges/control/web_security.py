"""Who may talk to the web server: Host and Origin checks, and the token for state changes.

The server is bound to 127.0.0.1 by default, where only this machine's programs reach it.
Two browser attacks still reach a loopback server, and are refused here:

- cross-site requests: any web page the VJ has open may open a WebSocket to 127.0.0.1;
  the browser then sends that page's Origin, which must be loopback or the IP literal the
  server was addressed by (`origin_allowed`);
- DNS rebinding: a site's name made to resolve to 127.0.0.1 reads our HTTP answers as its
  own; the browser then sends that name as Host, which must be an IP literal, localhost, or
  this machine's own name (`host_allowed`).

Bound to any other address (the LAN), reading stays open (OSCQuery clients must browse
without a password) but changing anything from the page needs the token printed in the log
(`Token`). OSC over UDP is not the web server's: `osc.allow` governs it.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from engine.errors import ConfigError

TOKEN_BYTES = 16  # 128 bits, URL-safe base64: 22 characters
TOKEN_MIN = 12  # a token chosen by hand (STREAMVJ_WEB_TOKEN) is at least this long


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a URL's host) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def own_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """Names the Host header may carry besides IP literals: localhost, this machine's host
    name, and its mDNS name (`<hostname>.local`, what discovery advertises)."""
    hostname = socket.gethostname().lower()
    names = {"localhost", hostname, f"{hostname.split('.')[0]}.local"}
    names.update(n.lower().rstrip(".") for n in extra)
    return frozenset(n for n in names if n)


def _host_of(authority: str) -> str | None:
    try:
        return urlsplit("//" + authority.strip()).hostname
    except ValueError:
        return None


def host_allowed(host_header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's Host header names this server (DNS rebinding sends a foreign name).

    A request without Host (an HTTP/1.0 tool) is not a browser's, so it is allowed.
    """
    if host_header is None:
        return True
    host = _host_of(host_header)
    if not host:
        return False
    return _is_ip(host) or host.rstrip(".") in names


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """Whether a browser page of this Origin may open a WebSocket (cross-site WebSocket hijacking).

    Non-browser clients (TouchDesigner, Chataigne) send no Origin. A page may connect when
    it comes from loopback, or from the IP literal the server was addressed by; a DNS name
    is not enough, since DNS rebinding makes any site's name point here.
    """
    if origin is None:
        return True
    try:
        origin_host = urlsplit(origin.strip()).hostname
    except ValueError:
        return False
    server_host = _host_of(host_header or "")
    if not origin_host:
        return False
    if is_loopback(origin_host):
        return True
    return _is_ip(origin_host) and origin_host == server_host


class Token:
    """The secret a page presents to change state when the server is reachable from the LAN.

    `required` is False on a loopback-only server: there every local program can already send
    OSC, so a token would protect nothing.
    """

    def __init__(self, value: str | None = None, *, required: bool) -> None:
        if value is not None and len(value) < TOKEN_MIN:
            raise ConfigError(f"the web token must be at least {TOKEN_MIN} characters (STREAMVJ_WEB_TOKEN), "
                              f"got {len(value)}")
        self.required = required
        self.value = value if value is not None else secrets.token_urlsafe(TOKEN_BYTES)

    def accepts(self, presented: str | None) -> bool:
        if not self.required:
            return True
        if not presented:
            return False
        # Constant time: the comparison must not tell an attacker how many characters matched.
        return hmac.compare_digest(presented.encode(), self.value.encode())
