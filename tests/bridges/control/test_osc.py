from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder, build_msg
from pythonosc.udp_client import SimpleUDPClient

from bridges.control.osc import RCVBUF_BYTES, OscServer
from bridges.control.osc_address import address_table
from bridges.control.osc_datagram import check_packet
from engine.config.schema import LIVE_SPECS, LiveParams, OscSettings
from engine.errors import ConfigError
from engine.live.commands import Command, Target
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from tests.bridges.control.osc_datagrams import (
    BUNDLE_SEED_AND_PROMPT,
    GOOD,
    GUIDANCE_2_5,
    PAUSE_NO_ARGS,
    PROMPT_HI,
    SEED_42,
    SIMILARITY_ON,
    T_INDEX_10_20,
)
from tests.waiting import eventually

LOGGER = "streamvj.osc"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Command, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None:
        with self._lock:
            self.calls.append((command, args))

@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="start"), tempo=Tempo(120.0))


@pytest.fixture
def commands() -> Recorder:
    return Recorder()


@pytest.fixture
def server(store: ParamStore, commands: Recorder) -> Iterator[OscServer]:
    srv = OscServer(store, commands, port=0).start()
    yield srv
    srv.stop()


@pytest.fixture
def osc(store: ParamStore, commands: Recorder) -> Iterator[OscServer]:
    """Not started: tests feed datagrams to handle_datagram directly (what the thread calls)."""
    srv = OscServer(store, commands, port=0)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OscServer) -> SimpleUDPClient:
    return SimpleUDPClient(*server.address)


def msg(address: str, *args: Any) -> bytes:
    return build_msg(address, list(args)).dgram


# ------------------------------------------------------------------ every address over real UDP


def sample_value(name: str) -> tuple[list[Any], Any]:
    """(OSC args, expected stored value) differing from the default, for every live kind."""
    spec = LIVE_SPECS[name]
    if spec.kind == "float":
        v = spec.min + (spec.max - spec.min) * 0.375
        return [v], pytest.approx(v, rel=1e-6)  # OSC floats are 32-bit
    if spec.kind == "int":
        return [7], 7
    if spec.kind == "bool":
        return [True], True
    if spec.kind == "str":
        text = "shm:streamvj_depth" if name.endswith("_source") else "a temple of glass"  # a source spec's syntax
        return [text], text
    if spec.kind == "enum":
        other = [c for c in spec.choices if c != spec.default][0]
        return [other], other
    if spec.kind == "int_list":
        return [10, 20], [10, 20]
    if spec.kind == "prompt_blend":
        return ["fire", 1.0, "ice", 3.0], [("fire", 1.0), ("ice", 3.0)]
    if spec.kind == "seed_blend":
        return [5, 1.0, 6, 0.5], [(5, 1.0), (6, 0.5)]
    raise AssertionError(f"no sample for kind {spec.kind!r}: extend the test")


def test_every_generated_address_applies(
    server: OscServer, client: SimpleUDPClient, store: ParamStore, commands: Recorder
) -> None:
    table = address_table()
    assert {a.role for a in table} == {"param", "smoothing", "command"}
    for addr in table:
        if addr.role == "param":
            args, expected = sample_value(addr.name)
            client.send_message(addr.path, args)
            assert eventually(lambda n=addr.name, e=expected: store.get(n) == e), addr.path
        elif addr.role == "smoothing":
            client.send_message(addr.path, 0.5)
            assert eventually(lambda n=addr.name: store.get("smoothing").get(n) == 0.5), addr.path

    # Every show command reaches the sink as its enum member, arguments typed.
    show_args = {Command.PRESET_LOAD: ("tiny",), Command.MIDI_LEARN: ("fx_hue",)}
    expected_calls = [(c, show_args.get(c, ())) for c in Command if c.target is Target.SHOW]
    assert {c for c, _ in expected_calls} >= {Command.PAUSE, Command.RESET}
    for command, args in expected_calls:
        client.send_message(f"/streamvj/{command.address}", list(args))
    assert eventually(lambda: commands.calls == expected_calls), commands.calls

    tempo = store.tempo
    assert tempo is not None
    client.send_message("/streamvj/tempo/bpm", 140.0)
    assert eventually(lambda: tempo.bpm == 140.0)
    client.send_message("/streamvj/tempo/tap", [])
    client.send_message("/streamvj/tempo/beat", 1.0)
    assert eventually(lambda: tempo.source == "tap")
    client.send_message("/streamvj/prompt/transition", ["a new world", 2.0])
    assert eventually(lambda: store.get("prompt") == "a new world")
    client.send_message("/streamvj/prompt/transition_beats", ["on the bar", 4.0, "bar"])
    assert eventually(lambda: store.get("prompt") == "on the bar")
    client.send_message("/streamvj/seed/transition", [99, 1.0])
    assert eventually(lambda: store.get("seed") == 99)
    client.send_message("/streamvj/seed/transition_beats", [100, 2.0])
    assert eventually(lambda: store.get("seed") == 100)
    assert server.is_alive()
    assert server.stats()["rejected"] == 0


def test_bound_to_loopback_with_big_receive_buffer(server: OscServer) -> None:
    assert server.address[0] == "127.0.0.1"
    rmem_max = Path("/proc/sys/net/core/rmem_max")
    cap = int(rmem_max.read_text()) if rmem_max.exists() else RCVBUF_BYTES
    assert server.receive_buffer_bytes >= min(RCVBUF_BYTES, cap)


def test_touchdesigner_style_values(osc: OscServer, store: ParamStore) -> None:
    # CHOPs send floats for everything; buttons send 1 on press and 0 on release.
    osc.handle_datagram(msg("/streamvj/seed", 12.0))
    osc.handle_datagram(msg("/streamvj/similarity_enabled", 1.0))
    osc.handle_datagram(msg("/streamvj/t_index_list", 20.0, 40.0))
    assert (store.get("seed"), store.get("similarity_enabled"), store.get("t_index_list")) == (
        12,
        True,
        [20, 40],
    )


def test_button_release_is_ignored(osc: OscServer, commands: Recorder) -> None:
    osc.handle_datagram(msg("/streamvj/pause", 1.0))
    osc.handle_datagram(msg("/streamvj/pause", 0.0))
    osc.handle_datagram(msg("/streamvj/pause", False))
    assert commands.calls == [(Command.PAUSE, ())]


def test_osc_array_is_flattened(osc: OscServer, store: ParamStore) -> None:
    builder = OscMessageBuilder("/streamvj/prompt_blend")
    builder.add_arg(["a", 1.0, "b", 1.0])
    osc.handle_datagram(builder.build().dgram)
    assert store.get("prompt_blend") == [("a", 1.0), ("b", 1.0)]
    osc.handle_datagram(msg("/streamvj/prompt_blend"))
    assert store.get("prompt_blend") == []


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    "address, args, reason",
    [
        ("/streamvj/guidance_scale", ["abc"], "expected a number, got string"),
        ("/streamvj/guidance_scale", [True], "expected a number, got bool"),
        ("/streamvj/guidance_scale", [25.0], "less than or equal to 20"),
        ("/streamvj/guidance_scale", [1.0, 2.0], "expects 1 argument"),
        ("/streamvj/guidance_scale", [], "expects 1 argument"),
        ("/streamvj/seed", [1.5], "expected an integer, got float"),
        ("/streamvj/seed", [-1], "greater than or equal to 0"),
        ("/streamvj/similarity_enabled", [2], "expected true/false"),
        ("/streamvj/prompt_interp", ["cubic"], "'linear' or 'slerp'"),
        ("/streamvj/t_index_list", [10, 20, 30], "needs exactly 2 entries"),
        ("/streamvj/t_index_list", [30, 20], "strictly increasing"),
        ("/streamvj/prompt_blend", ["a"], "expects pairs"),
        ("/streamvj/prompt", ["x" * 4001], "at most 4000 characters"),
        ("/streamvj/smoothing/fx_hue", [100.0], "less than or equal to 60"),
        ("/streamvj/nope", [1.0], "unknown address"),
        ("/streamvj/preset/load", [3], "expected a string"),
        ("/streamvj/preset/load", [], "expects 1 argument(s) (name), got 0"),
        ("/streamvj/tempo/bpm", [1000.0], "bpm must be 20..300"),
        ("/streamvj/prompt/transition", ["x"], "expects 2 argument"),
        ("/streamvj/prompt/transition", ["x", -1.0], "0..600"),
        ("/streamvj/prompt/transition_beats", ["x", 4.0, "phrase"], "quantum must be"),
        ("/streamvj/*", [1.0], "wildcards"),
    ],
)
def test_bad_messages_are_dropped_with_reason(
    osc: OscServer,
    store: ParamStore,
    commands: Recorder,
    caplog: pytest.LogCaptureFixture,
    address: str,
    args: list[Any],
    reason: str,
) -> None:
    before = store.values()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        osc.handle_datagram(msg(address, *args))
    assert store.values() == before and commands.calls == []
    assert len(caplog.records) == 1
    assert reason in caplog.records[0].getMessage()


HUGE = "x" * 60_000


@pytest.mark.parametrize(
    "address, args",
    [
        ("/streamvj/guidance_scale", [HUGE]),  # type mismatch: the value is quoted in the reason
        ("/streamvj/seed", [HUGE]),
        ("/streamvj/t_index_list", [1, 2, HUGE]),
        ("/streamvj/prompt", [HUGE]),  # too long for the schema
        ("/streamvj/prompt_blend", [HUGE, 1.0, "b"]),
        ("/streamvj/tempo/bpm", [HUGE]),
        ("/streamvj/" + "y" * 60_000, [1.0]),  # unknown address
        ("/streamvj/prompt/transition_beats", ["x", 1.0, HUGE]),
    ],
)
def test_huge_values_are_logged_cut_short(
    osc: OscServer, caplog: pytest.LogCaptureFixture, address: str, args: list[Any]
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        osc.handle_datagram(msg(address, *args))
    assert osc.stats()["rejected"] == 1 and len(caplog.records) == 1
    assert len(caplog.records[0].getMessage()) < 600, caplog.records[0].getMessage()[:300]


def test_accepted_messages_leave_a_debug_trace(osc: OscServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        osc.handle_datagram(msg("/streamvj/guidance_scale", 2.0))
        osc.handle_datagram(msg("/streamvj/prompt", HUGE))  # accepted? no: the schema caps prompts
        osc.handle_datagram(msg("/streamvj/prompt", "z" * 3000))
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug[0] == "OSC /streamvj/guidance_scale (2.0,)"
    assert debug[1].startswith("OSC /streamvj/prompt ('zzz") and len(debug[1]) < 200


def test_rejection_over_udp_is_logged(
    server: OscServer, client: SimpleUDPClient, store: ParamStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        client.send_message("/streamvj/fx_contrast", 9.0)
        client.send_message("/streamvj/fx_contrast", 2.0)
        assert eventually(lambda: store.get("fx_contrast") == 2.0)
    assert any(
        "fx_contrast" in r.getMessage() and "less than or equal to 4" in r.getMessage()
        for r in caplog.records
    )


def test_each_address_reason_logged_once(osc: OscServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for v in range(21, 71):  # a fader sweeping out of range: one reason, many values
            osc.handle_datagram(msg("/streamvj/guidance_scale", float(v)))
        osc.handle_datagram(msg("/streamvj/guidance_scale", "x"))
    assert len(caplog.records) == 2
    assert osc.stats()["rejected"] == 51


def test_allow_list_drops_other_senders(
    store: ParamStore, commands: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        OscServer(store, commands, port=0, allow=["10.1.2.3"]) as srv,
        caplog.at_level(logging.WARNING, LOGGER),
    ):
        SimpleUDPClient(*srv.address).send_message("/streamvj/delta", 0.5)
        assert eventually(lambda: srv.stats()["dropped"] == 1)
    assert store.get("delta") == 1.0
    assert "OSC from 127.0.0.1 dropped: not in osc.allow" in caplog.text


def test_allow_list_accepts_listed_sender(store: ParamStore, commands: Recorder) -> None:
    with OscServer(store, commands, port=0, allow=["127.0.0.1"]) as srv:
        SimpleUDPClient(*srv.address).send_message("/streamvj/delta", 0.5)
        assert eventually(lambda: store.get("delta") == 0.5)


# ------------------------------------------------------------------ known datagrams


@pytest.mark.parametrize(
    "dgram, name, value",
    [
        (GUIDANCE_2_5, "guidance_scale", 2.5),
        (SEED_42, "seed", 42),
        (PROMPT_HI, "prompt", "hi"),
        (SIMILARITY_ON, "similarity_enabled", True),
        (T_INDEX_10_20, "t_index_list", [10, 20]),
    ],
)
def test_known_good_datagrams(osc: OscServer, store: ParamStore, dgram: bytes, name: str, value: Any) -> None:
    assert check_packet(dgram) is None
    osc.handle_datagram(dgram)
    assert store.get(name) == value


def test_known_good_bundle_and_trigger(osc: OscServer, store: ParamStore, commands: Recorder) -> None:
    assert check_packet(BUNDLE_SEED_AND_PROMPT) is None
    osc.handle_datagram(BUNDLE_SEED_AND_PROMPT)
    assert (store.get("seed"), store.get("prompt")) == (42, "hi")
    osc.handle_datagram(PAUSE_NO_ARGS)
    assert commands.calls == [(Command.PAUSE, ())]


@pytest.mark.parametrize(
    "dgram, reason",
    [
        (b"", "not an OSC message"),
        (b"hello", "not an OSC message"),
        (b"/streamvj/seed", "not NUL-terminated"),
        (b"/streamvj/seed\x00\x00i\x00\x00\x00", "must start with ','"),
        (b"/streamvj/seed\x00\x00,X\x00\x00", "unsupported OSC type tag"),
        (b"/stream vj\x00\x00", "printable ASCII"),
        (b"#bundle\x00\x00\x00", "shorter than its 16-byte header"),
        (b"#bundle\x00" + b"\x00" * 7 + b"\x01" + b"\xff\xff\xff\xfc", "bad bundle element size -4"),
        (
            b"#bundle\x00" + b"\x00" * 7 + b"\x01" + b"\x00\x00\x01\x00" + SEED_42,
            "bad bundle element size 256",
        ),
    ],
)
def test_malformed_datagrams(
    osc: OscServer, caplog: pytest.LogCaptureFixture, dgram: bytes, reason: str
) -> None:
    assert reason in (check_packet(dgram) or "")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        osc.handle_datagram(dgram)
    assert reason in caplog.text


def test_non_utf8_string_is_dropped(osc: OscServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        osc.handle_datagram(b"/streamvj/prompt\x00\x00\x00\x00,s\x00\x00\xff\xfe\x00\x00")
    assert "unparseable" in caplog.text


# ------------------------------------------------------------------ size, timing, robustness


def test_20kb_prompt_blend_datagram_is_applied(server: OscServer, store: ParamStore) -> None:
    blend = [(f"{i} " + "glass cathedral " * 220, 1.0) for i in range(6)]
    args = [x for pair in blend for x in pair]
    dgram = msg("/streamvj/prompt_blend", *args)
    assert len(dgram) > 20_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(dgram, server.address)
    assert eventually(lambda: store.get("prompt_blend") == blend)


def test_future_bundle_does_not_block(server: OscServer, client: SimpleUDPClient, store: ParamStore) -> None:
    m = OscMessageBuilder("/streamvj/guidance_scale")
    m.add_arg(3.0)
    builder = OscBundleBuilder(time.time() + 3600.0)  # an hour ahead: strict timing would sleep that long
    builder.add_content(m.build())
    client.send(builder.build())
    client.send_message("/streamvj/seed", 77)
    assert eventually(lambda: store.get("seed") == 77)
    assert store.get("guidance_scale") == 3.0  # time tags are not honoured: applied on arrival


def _mutations(rng: random.Random) -> Iterator[bytes]:
    for i in range(3000):
        base = bytearray(rng.choice(GOOD))
        kind = i % 6
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            for _ in range(rng.randint(1, 6)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            yield bytes(base)
        elif kind == 2:
            yield bytes(base[: rng.randrange(len(base))])
        elif kind == 3:
            yield bytes(base) + rng.randbytes(rng.randint(1, 40))
        elif kind == 4:
            size = rng.choice([-8, -4, 0, 3, 4, 1 << 30, rng.randint(-100, 400)])
            yield b"#bundle\x00" + rng.randbytes(8) + struct.pack(">i", size) + bytes(base)
        else:
            tags = "".join(rng.choice("ifdhsbrmtTFN[]XI") for _ in range(rng.randint(0, 8)))
            tagbytes = ("," + tags).encode() + b"\x00"
            tagbytes += b"\x00" * (-len(tagbytes) % 4)
            yield b"/streamvj/seed\x00\x00" + tagbytes + rng.randbytes(rng.randint(0, 32))


def test_fuzz_direct_never_reaches_the_last_guard(osc: OscServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for dgram in _mutations(random.Random(1234)):
            osc.handle_datagram(dgram)
    assert "error handling a datagram" not in caplog.text
    assert not [r for r in caplog.records if r.name != LOGGER and r.levelno >= logging.WARNING]


def test_fuzz_over_udp_server_survives(server: OscServer, client: SimpleUDPClient, store: ParamStore) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for dgram in _mutations(random.Random(99)):
            if dgram:  # an empty UDP datagram is legal but says nothing
                sock.sendto(dgram, server.address)
    client.send_message("/streamvj/fx_saturation", 2.5)
    assert eventually(lambda: store.get("fx_saturation") == 2.5)
    assert server.is_alive()


def test_port_in_use_is_a_config_error(server: OscServer, store: ParamStore, commands: Recorder) -> None:
    with pytest.raises(ConfigError, match="OSC: cannot listen on 127.0.0.1:.*change osc.port"):
        OscServer(store, commands, port=server.address[1])


def test_from_settings(store: ParamStore, commands: Recorder) -> None:
    settings = OscSettings(
        port=0, prefix="/vj", allow=["127.0.0.1"], feedback={"host": "127.0.0.1", "port": 9}
    )
    with OscServer.from_settings(settings, store, commands) as srv:
        SimpleUDPClient(*srv.address).send_message("/vj/delta", 0.25)
        assert eventually(lambda: store.get("delta") == 0.25)
