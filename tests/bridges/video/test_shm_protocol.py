"""Header layout, validation and the seqlock of the shared-memory protocol, on plain buffers."""

from __future__ import annotations

import struct

import pytest

from bridges.video import shm_protocol as p
from engine.errors import ConfigError, StreamVJError


def _block(layout: p.ShmLayout, **kw: object) -> bytearray:
    buf = bytearray(layout.block_size)
    buf[: layout.header_size] = p.pack_header(layout, generation=7, writer_pid=123, state=p.STATE_LIVE, **kw)
    return buf


def _patch(buf: bytearray, offset: int, fmt: str, value: int) -> bytearray:
    struct.pack_into(fmt, buf, offset, value)
    return buf


def test_layout_is_aligned_and_sized() -> None:
    lay = p.layout_for(33, 7, 3)
    assert lay.header_size == 256
    assert lay.slot_stride % 64 == 0 and lay.slot_stride >= 33 * 7 * 4
    assert lay.block_size == 256 + 3 * lay.slot_stride
    assert p.layout_for(16384, 1, 2).width == 16384


def test_header_bytes_match_the_documented_offsets() -> None:
    lay = p.layout_for(640, 360, 3, p.PIXEL_BGRA8)
    head = p.pack_header(lay, generation=0xABCD, writer_pid=4242, state=p.STATE_LIVE)
    assert len(head) == 256
    assert head[0:8] == b"STREAMVJ"
    assert struct.unpack_from("<HHHH", head, 8) == (1, 256, 2, 3)
    assert struct.unpack_from("<IIII", head, 16) == (640, 360, 640 * 360 * 4, 1)
    assert struct.unpack_from("<QQQQQ", head, 32) == (0xABCD, 4242, 0, 0, 0)
    assert head[72:] == bytes(256 - 72)


def test_unpack_round_trip() -> None:
    lay = p.layout_for(64, 48, 2)
    hdr = p.unpack_header(_block(lay))
    assert hdr.layout == lay
    assert (hdr.state, hdr.generation, hdr.writer_pid, hdr.frame_counter) == (p.STATE_LIVE, 7, 123, 0)


@pytest.mark.parametrize(
    ("mutate", "exc", "words"),
    [
        (lambda b: b.__setitem__(slice(0, 8), b"NOTSTRVJ"), p.ShmHeaderError, "magic"),
        (lambda b: _patch(b, 8, "<H", 2), p.ShmVersionError, "version 2"),
        (lambda b: _patch(b, 16, "<I", 20000), p.ShmHeaderError, "out of range"),
        (lambda b: _patch(b, 20, "<I", 0), p.ShmHeaderError, "out of range"),
        (lambda b: _patch(b, 12, "<H", 3), p.ShmHeaderError, "pixel format 3"),
        (lambda b: _patch(b, 14, "<H", 4), p.ShmHeaderError, "slot count 4"),
        (lambda b: _patch(b, 14, "<H", 1), p.ShmHeaderError, "slot count 1"),
        (lambda b: _patch(b, 10, "<H", 100), p.ShmHeaderError, "header size"),
        (lambda b: _patch(b, 24, "<I", 64), p.ShmHeaderError, "slot stride"),
        (lambda b: _patch(b, 24, "<I", 1 << 20), p.ShmHeaderError, "block holds only"),
        (lambda b: _patch(b, 28, "<I", 9), p.ShmHeaderError, "state 9"),
        (lambda b: _patch(b, 64, "<Q", 5), p.ShmHeaderError, "latest slot 5"),
    ],
)
def test_bad_headers_raise_specific_errors(mutate, exc: type, words: str) -> None:
    buf = _block(p.layout_for(64, 48, 3))
    mutate(buf)
    with pytest.raises(exc, match=words) as info:
        p.unpack_header(buf)
    assert isinstance(info.value, StreamVJError)


def test_truncated_block_is_rejected() -> None:
    with pytest.raises(p.ShmHeaderError, match="smaller than"):
        p.unpack_header(bytes(40))


def test_unwritten_or_initialising_header_is_not_ready() -> None:
    lay = p.layout_for(8, 8, 2)
    with pytest.raises(p.ShmNotReadyError):
        p.unpack_header(bytes(lay.block_size))
    buf = bytearray(lay.block_size)
    buf[:256] = p.pack_header(lay, 1, 1, state=p.STATE_INIT)
    with pytest.raises(p.ShmNotReadyError):
        p.unpack_header(buf)


def test_layout_for_rejects_absurd_sizes() -> None:
    with pytest.raises(p.ShmHeaderError, match="out of range"):
        p.layout_for(16385, 10)
    with pytest.raises(p.ShmHeaderError, match="slot count"):
        p.layout_for(10, 10, 5)


@pytest.mark.parametrize("name", ["streamvj_out", "a", "TD.to-svj_1", "x" * 64])
def test_valid_names(name: str) -> None:
    assert p.validate_name(name, platform="linux") == name


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "-dash", "x" * 65, "with space", "caf\u00e9", "/lead"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(p.ShmNameError, match="invalid"):
        p.validate_name(name, platform="linux")


def test_macos_name_limit() -> None:
    assert p.validate_name("x" * 30, platform="darwin")
    with pytest.raises(p.ShmNameError, match="macOS") as info:
        p.validate_name("x" * 31, platform="darwin")
    assert isinstance(info.value, ConfigError)


def test_header_size_comes_from_the_caller_when_only_the_header_was_read() -> None:
    lay = p.layout_for(64, 48, 3)
    head = _block(lay)[: lay.table_end]
    assert p.unpack_header(head, lay.block_size).layout == lay
    with pytest.raises(p.ShmHeaderError, match="block holds only 1000 bytes"):
        p.unpack_header(head, 1000)


def test_names_follow_the_transport_spec_rules() -> None:
    from engine.config.transport_specs import shm_name_problem

    for name in ("ok", "../x", "x" * 65):
        problem = shm_name_problem(name, "linux")
        if problem is None:
            assert p.validate_name(name, platform="linux") == name
        else:
            with pytest.raises(p.ShmNameError, match="invalid"):
                p.validate_name(name, platform="linux")

