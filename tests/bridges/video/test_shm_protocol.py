"""Header layout, validation and the seqlock of the shared-memory protocol, on plain buffers."""

from __future__ import annotations

import struct

import numpy as np
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


def _view(w: int = 6, h: int = 4, slots: int = 3, fmt: int = p.PIXEL_RGBA8) -> p.ShmView:
    lay = p.layout_for(w, h, slots, fmt)
    return p.init_block(memoryview(bytearray(lay.block_size)), lay, generation=99, writer_pid=1)


def test_init_block_marks_live_last() -> None:
    view = _view()
    assert view.state == p.STATE_LIVE and view.generation == 99 and view.writer_pid == 1


def test_seqlock_write_read_and_slot_rotation() -> None:
    view = _view(slots=3)
    out = np.empty((4, 6, 4), np.uint8)
    assert view.read_frame(out, after=0) is None  # nothing published yet
    slots = []
    for k in range(1, 6):
        frame = np.full((4, 6, 4), k, np.uint8)
        slots.append(view.write_frame(frame, index=k, t_ns=1000 + k))
        assert view.slot_seq(slots[-1]) % 2 == 0
        assert view.read_frame(out, after=k - 1) == (k, 1000 + k)
        assert (out == k).all()
        assert view.read_frame(out, after=k) is None  # nothing newer
    assert slots == [0, 1, 2, 0, 1]
    assert view.frame_counter == 5 and view.heartbeat_ns == 1005


def test_reader_skips_a_slot_being_written() -> None:
    view = _view()
    view.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)
    view._slots[0, 0] += 1  # odd: the writer is mid-copy
    assert view.read_frame(np.empty((4, 6, 4), np.uint8), after=0) is None


class _RacedView(p.ShmView):
    """Simulates the writer overwriting the slot while the reader copies it."""

    def _copy_out(self, dst: np.ndarray, src: np.ndarray) -> None:
        super()._copy_out(dst, src)
        self._slots[:, 0] += 2


def test_reader_discards_a_copy_raced_by_the_writer() -> None:
    lay = p.layout_for(6, 4, 3)
    buf = memoryview(bytearray(lay.block_size))
    p.init_block(buf, lay, 1, 1).write_frame(np.ones((4, 6, 4), np.uint8), 1, 1)
    raced = _RacedView(buf, lay)
    assert raced.read_frame(np.empty((4, 6, 4), np.uint8), after=0, tries=5) is None


def test_bgra_blocks_are_read_as_rgba() -> None:
    view = _view(fmt=p.PIXEL_BGRA8)
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 40
    view.write_frame(bgra, 1, 1)
    out = np.empty_like(bgra)
    view.read_frame(out, after=0)
    assert out[0, 0].tolist() == [30, 20, 10, 40]


def test_reader_works_on_a_read_only_buffer() -> None:
    lay = p.layout_for(6, 4, 2)
    buf = bytearray(lay.block_size)
    p.init_block(memoryview(buf), lay, 1, 1).write_frame(np.full((4, 6, 4), 3, np.uint8), 1, 5)
    ro = p.ShmView(memoryview(bytes(buf)), p.unpack_header(bytes(buf)).layout)
    out = np.empty((4, 6, 4), np.uint8)
    assert ro.read_frame(out, after=0) == (1, 5) and (out == 3).all()
    ro.release()
