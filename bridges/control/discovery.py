"""Discovery over mDNS / DNS-SD: the engine announces its OSC and OSCQuery ports.

TouchDesigner, Chataigne, Vezér and other OSCQuery clients browse `_oscjson._tcp` for
OSCQuery servers, and OSC tools browse `_osc._udp`; with both advertised, the engine shows
up in their lists by name, and nobody types a host and port. Advertised by default only
when the servers are reachable from other machines (bound to a non-loopback address);
`--mdns` advertises a loopback server too (on the loopback interface only), `--no-mdns`
never. Withdrawn on exit (zeroconf sends goodbye packets).

Registration probes the network for name conflicts (about a second): it runs on its own
thread, so the engine's start does not wait for it. A name already taken on the network
gets a number ("streamvj (2)").
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading

from bridges.control.web_security import is_loopback
from engine.errors import ConfigError

log = logging.getLogger("streamvj.discovery")

OSCQUERY_TYPE = "_oscjson._tcp.local."
OSC_TYPE = "_osc._udp.local."


def wanted(host: str, asked: bool | None) -> bool:
    """Whether to advertise: as asked (--mdns / --no-mdns), else when reachable from the LAN."""
    return asked if asked is not None else not is_loopback(host)


def server_name() -> str:
    """This machine's mDNS host name, e.g. `studio-pc.local.` (letters, digits and - only)."""
    base = socket.gethostname().split(".")[0].lower()
    clean = "".join(c if c.isalnum() or c == "-" else "-" for c in base).strip("-") or "streamvj"
    return f"{clean}.local."


def addresses_for(host: str) -> tuple[list[str] | None, list[str]]:
    """(interfaces to announce on, None = all; the IP addresses to announce) for a bind address."""
    import ifaddr

    if host in ("", "0.0.0.0", "::"):
        ips = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                text = ip.ip if ip.is_IPv4 else ip.ip[0]
                addr = ipaddress.ip_address(text.split("%")[0])
                if not addr.is_loopback and not addr.is_link_local and (ip.is_IPv4 or host == "::"):
                    ips.append(str(addr))
        if not ips:
            raise ConfigError(f"mDNS: bound to {host} but this machine has no network address to announce")
        return None, ips
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except socket.gaierror as exc:
        raise ConfigError(f"mDNS: cannot resolve {host!r}: {exc.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first: what OSC tools expect
    ip = str(infos[0][4][0])
    return [ip], [ip]


def address_for_people(host: str) -> str:
    """Where to tell a person to point a browser: the bind address, or for one that listens
    everywhere this machine's first network address (its host name when it has none)."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    try:
        return addresses_for(host)[1][0]
    except ConfigError:
        return socket.gethostname()


class Advertiser:
    """Announces `_osc._udp` (with `osc_port`) and `_oscjson._tcp` (with `query_port`) for `host`."""

    def __init__(self, name: str, host: str, *, osc_port: int | None, query_port: int | None) -> None:
        try:
            import zeroconf
        except ImportError:  # a core dependency: only a broken install lacks it
            raise ConfigError("mDNS: the zeroconf package is missing; reinstall streamvj (pip install -e .)") from None
        self._zc_module = zeroconf
        self.name, self.host = name, host
        self.interfaces, self.ips = addresses_for(host)
        self.server = server_name()
        packed = [ipaddress.ip_address(ip).packed for ip in self.ips]
        self.infos = [
            zeroconf.ServiceInfo(kind, f"{name}.{kind}", port=port, addresses=packed, server=self.server,
                                 properties={"txtvers": "1"})
            for kind, port in ((OSC_TYPE, osc_port), (OSCQUERY_TYPE, query_port)) if port is not None
        ]
        self._zc: zeroconf.Zeroconf | None = None
        self._thread: threading.Thread | None = None
        self.registered: list[str] = []  # instance names as announced (after any renaming)

    def start(self) -> Advertiser:
        zc = self._zc_module
        try:
            self._zc = zc.Zeroconf(interfaces=self.interfaces if self.interfaces else zc.InterfaceChoice.All,
                                   ip_version=zc.IPVersion.All if any(":" in ip for ip in self.ips)
                                   else zc.IPVersion.V4Only)
        except OSError as exc:
            raise ConfigError(f"mDNS: cannot open the multicast socket: {exc.strerror or exc} "
                              "(start with --no-mdns to skip discovery)") from None
        self._thread = threading.Thread(target=self._register, name="streamvj-mdns", daemon=True)
        self._thread.start()
        return self

    def _register(self) -> None:
        assert self._zc is not None
        for info in self.infos:
            try:
                self._zc.register_service(info, allow_name_change=True)
            except (self._zc_module.Error, OSError) as exc:
                log.warning("mDNS: could not announce %s: %s", info.type, exc)
                continue
            self.registered.append(info.name)
            log.info("mDNS: announced %s port %d on %s", info.name, info.port, ", ".join(self.ips))

    def stop(self) -> None:
        if self._zc is None:
            return
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._zc.unregister_all_services()  # goodbye packets: browsers drop us at once
        except (self._zc_module.Error, OSError) as exc:
            log.warning("mDNS: could not withdraw the announcements: %s", exc)
        self._zc.close()
        self._zc = None
