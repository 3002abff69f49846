"""mDNS announcements seen by a real zeroconf browser. Both sides use the loopback interface
only, where multicast works in this sandbox too; nothing is sent onto a real network."""

from __future__ import annotations

import socket

import pytest
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from bridges.control.discovery import OSC_TYPE, OSCQUERY_TYPE, Advertiser, addresses_for, server_name, wanted
from engine.errors import ConfigError
from tests.waiting import wait_for


@pytest.mark.parametrize(("host", "asked", "want"), [
    ("127.0.0.1", None, False),
    ("localhost", None, False),
    ("0.0.0.0", None, True),
    ("192.168.1.5", None, True),
    ("127.0.0.1", True, True),
    ("0.0.0.0", False, False),
])
def test_advertised_when_reachable_or_asked(host: str, asked: bool | None, want: bool) -> None:
    assert wanted(host, asked) is want


def test_addresses_for_a_bind_address() -> None:
    assert addresses_for("127.0.0.1") == (["127.0.0.1"], ["127.0.0.1"])
    assert addresses_for("localhost") == (["127.0.0.1"], ["127.0.0.1"])  # IPv4 first
    interfaces, ips = addresses_for("0.0.0.0")  # every interface, each non-loopback IPv4
    assert interfaces is None and ips and all(":" not in ip and not ip.startswith("127.") for ip in ips)


def test_server_name_is_a_local_host_name() -> None:
    name = server_name()
    assert name.endswith(".local.") and all(c.isalnum() or c in "-." for c in name)

def test_a_browser_finds_both_services_and_sees_them_withdrawn() -> None:
    browser_zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    present: dict[str, str] = {}  # name -> type

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            present.pop(name, None)
        else:
            present[name] = service_type

    browser = ServiceBrowser(browser_zc, [OSC_TYPE, OSCQUERY_TYPE], handlers=[on_change])
    advertiser = Advertiser("streamvj-test", "127.0.0.1", osc_port=9000, query_port=9001).start()
    try:
        wait_for(lambda: set(present.values()) == {OSC_TYPE, OSCQUERY_TYPE}, "both announcements")
        ports = {}
        for name, kind in present.items():
            info = browser_zc.get_service_info(kind, name, timeout=5000)
            assert info is not None and info.parsed_addresses() == ["127.0.0.1"]
            assert info.server == server_name() and info.properties[b"txtvers"] == b"1"
            ports[kind] = info.port
        assert ports == {OSC_TYPE: 9000, OSCQUERY_TYPE: 9001}
        wait_for(lambda: sorted(advertiser.registered) == sorted(present), "registration to return")
    finally:
        advertiser.stop()
    try:
        wait_for(lambda: not present, "the goodbye packets")
    finally:
        browser.cancel()
        browser_zc.close()


def test_osc_only_without_a_query_port() -> None:
    advertiser = Advertiser("streamvj-test", "127.0.0.1", osc_port=9000, query_port=None)
    assert [info.type for info in advertiser.infos] == [OSC_TYPE]
    advertiser.stop()  # never started: nothing to withdraw


def test_address_for_people() -> None:
    from bridges.control.discovery import address_for_people

    assert address_for_people("127.0.0.1") == "127.0.0.1" and address_for_people("192.168.1.5") == "192.168.1.5"
    try:
        expected = addresses_for("0.0.0.0")[1][0]  # a real address of this machine, not 0.0.0.0
    except ConfigError:  # a machine with no network at all: its name
        expected = socket.gethostname()
    assert address_for_people("0.0.0.0") == expected
