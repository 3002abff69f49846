from __future__ import annotations

from typing import Any

import pytest
from pythonosc.osc_message_builder import build_msg

from bridges.control.osc_datagram import check_packet
from tests.bridges.control.osc_datagrams import (
    BUNDLE_SEED_AND_PROMPT,
    GOOD,
    GUIDANCE_2_5,
    PROMPT_HI,
    SEED_42,
    SIMILARITY_ON,
    T_INDEX_10_20,
)


def msg(address: str, *args: Any) -> bytes:
    return build_msg(address, list(args)).dgram


def test_byte_constants_match_the_spec_builder() -> None:
    assert GUIDANCE_2_5 == msg("/streamvj/guidance_scale", 2.5)
    assert SEED_42 == msg("/streamvj/seed", 42)
    assert PROMPT_HI == msg("/streamvj/prompt", "hi")
    assert SIMILARITY_ON == msg("/streamvj/similarity_enabled", True)
    assert T_INDEX_10_20 == msg("/streamvj/t_index_list", 10, 20)


@pytest.mark.parametrize("dgram", GOOD)
def test_known_good_packets_pass(dgram: bytes) -> None:
    assert check_packet(dgram) is None


def nest(inner: bytes, depth: int) -> bytes:
    for _ in range(depth):
        inner = b"#bundle\x00" + b"\x00" * 7 + b"\x01" + len(inner).to_bytes(4, "big") + inner
    return inner


@pytest.mark.parametrize(
    "dgram, reason",
    [
        (b"", "not an OSC message"),
        (b"/streamvj/*\x00", "wildcards"),
        (b"/streamvj/seed\x00\x00,i\x00\x00" + b"\x00" * 3 + b"x", None),  # payload bytes are the parser's
        (b"/streamvj/seed\x00\x00,i", "not NUL-terminated"),
        (b"/streamvj/seed\x00", "truncated after the address"),
        (BUNDLE_SEED_AND_PROMPT[:-3], "bad bundle element size"),
        (BUNDLE_SEED_AND_PROMPT + b"\x00\x00", "truncated bundle element size"),
        (nest(SEED_42, 7), None),
        (nest(SEED_42, 9), "nested too deep"),
    ],
)
def test_check_packet_reasons(dgram: bytes, reason: str | None) -> None:
    got = check_packet(dgram)
    assert got is None if reason is None else reason in (got or "")
