from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridges.control.osc_feedback import MAX_TEXT, OscFeedback
from engine.config.schema import OscSettings
from engine.errors import ConfigError
from tests.waiting import eventually


@pytest.fixture
def receiver() -> Iterator[tuple[tuple[str, int], list[tuple[str, Any]]]]:
    got: list[tuple[str, Any]] = []
    disp = Dispatcher()
    disp.set_default_handler(lambda address, *args: got.append((address, args[0] if args else None)))
    srv = BlockingOSCUDPServer(("127.0.0.1", 0), disp)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv.server_address, got
    srv.shutdown()
    thread.join()
    srv.server_close()


def test_feedback_publish_and_heartbeat(receiver: tuple[tuple[str, int], list[tuple[str, Any]]]) -> None:
    (host, port), got = receiver
    fb = OscFeedback(host, port, heartbeat_s=0.02)
    fb.publish({"state": "running", "fps": 29.5, "preset": "tiny", "vram_mb": 812})
    # Every message is waited for: the receiver thread may handle the datagrams in any order.
    for message in (("/streamvj/status/fps", 29.5), ("/streamvj/status/state", "running"),
                    ("/streamvj/status/vram_mb", 812.0)):
        assert eventually(lambda message=message: message in got), message
    fb.start()
    try:
        assert eventually(lambda: ("/streamvj/status/heartbeat", 2) in got)
    finally:
        fb.stop()
    # Heartbeats re-send the state (waited for, not assumed: the receiver may handle packets out of order).
    assert eventually(lambda: got.count(("/streamvj/status/preset", "tiny")) >= 2)


def test_long_error_text_is_cut(receiver: tuple[tuple[str, int], list[tuple[str, Any]]]) -> None:
    (host, port), got = receiver
    OscFeedback(host, port).publish({"error": "x" * 5000})
    assert eventually(lambda: any(a == "/streamvj/status/error" for a, _ in got))
    (text,) = [v for a, v in got if a == "/streamvj/status/error"]
    assert len(text) == MAX_TEXT and text.endswith("…")


@pytest.mark.parametrize(
    "stats, reason",
    [
        ({"state": "dancing"}, "state must be one of"),
        ({"fps": float("nan")}, "finite number"),
        ({"fps": True}, "finite number"),
        ({"latency": 3.0}, "unknown field 'latency'"),
        ({"error": 5}, "must be a string"),
    ],
)
def test_feedback_rejects_bad_stats(stats: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        OscFeedback("127.0.0.1", 9).publish(stats)


def test_a_failing_send_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    # Broadcast without SO_BROADCAST: the kernel refuses every send (EACCES), so each publish
    # and heartbeat really takes the error path (a closed unicast port would not: UDP sendto
    # on an unconnected socket never reports ICMP "port unreachable").
    fb = OscFeedback("255.255.255.255", 9)
    with caplog.at_level(logging.WARNING, logger="streamvj.osc"):
        for _ in range(5):
            fb.publish({"state": "error", "error": "x" * 5000})
            fb.beat()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # 5 publishes + 5 heartbeats, 20+ failed sends: one line
    assert lines[0].startswith("OSC feedback to ('255.255.255.255', 9): ")


def test_from_settings() -> None:
    settings = OscSettings(port=0, prefix="/vj", feedback={"host": "127.0.0.1", "port": 9})
    feedback = OscFeedback.from_settings(settings)
    assert feedback is not None and feedback.prefix == "/vj/status" and feedback.target == ("127.0.0.1", 9)
    assert OscFeedback.from_settings(OscSettings()) is None
