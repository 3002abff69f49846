"""The seqlock frame exchange on in-process buffers (BufferIO), and what it does with a broken block."""

from __future__ import annotations

import numpy as np
import pytest

from bridges.video import shm_protocol as p
from bridges.video.shm_seqlock import (
    MISS_INDEX,
    MISS_ODD,
    MISS_RACED,
    BufferIO,
    ShmView,
    init_block,
    read_header,
)


def _view(w: int = 6, h: int = 4, slots: int = 3, fmt: int = p.PIXEL_RGBA8) -> tuple[ShmView, bytearray]:
    lay = p.layout_for(w, h, slots, fmt)
    buf = bytearray(lay.block_size)
    return init_block(BufferIO(buf), lay, generation=99, writer_pid=1), buf


def _reader(buf: bytearray | bytes) -> ShmView:
    io = BufferIO(buf)
    view = ShmView(io, read_header(io).layout)
    view.refresh()
    return view


def _u64(buf: bytearray, offset: int) -> np.ndarray:
    return np.frombuffer(buf, "<u8", 1, offset)


def test_init_block_marks_live_last() -> None:
    _, buf = _view()
    view = _reader(buf)
    assert view.state == p.STATE_LIVE and view.generation == 99 and view.writer_pid == 1


def test_seqlock_write_read_and_slot_rotation() -> None:
    writer, buf = _view(slots=3)
    reader = _reader(buf)
    out = np.empty((4, 6, 4), np.uint8)
    assert reader.read_frame(out, after=0) is None and reader.last_miss == ""  # nothing published yet
    slots = []
    for k in range(1, 6):
        frame = np.full((4, 6, 4), k, np.uint8)
        slots.append(writer.write_frame(frame, index=k, t_ns=1000 + k))
        assert reader.read_frame(out, after=k - 1) == (k, 1000 + k)
        assert reader.slot_seq(slots[-1]) % 2 == 0
        assert (out == k).all()
        assert reader.read_frame(out, after=k) is None  # nothing newer
    assert slots == [0, 1, 2, 0, 1]
    assert reader.frame_counter == 5 and reader.heartbeat_ns == 1005


def test_reader_skips_a_slot_being_written() -> None:
    writer, buf = _view()
    writer.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)
    _u64(buf, p.SLOT_TABLE_OFFSET)[0] += 1  # odd: the writer is mid-copy
    reader = _reader(buf)
    assert reader.read_frame(np.empty((4, 6, 4), np.uint8), after=0) is None
    assert reader.last_miss == MISS_ODD


def test_counter_ahead_of_the_slots_index_is_a_named_miss() -> None:
    writer, buf = _view()
    writer.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)
    _u64(buf, p.SLOT_TABLE_OFFSET + 8)[0] = 0  # frame_index 0: the writer never stored it
    reader = _reader(buf)
    assert reader.read_frame(np.empty((4, 6, 4), np.uint8), after=0) is None
    assert reader.last_miss == MISS_INDEX


class _RacingIO(BufferIO):
    """Simulates the writer rewriting the slot while the reader copies its pixels."""

    def __init__(self, buf: bytearray, layout: p.ShmLayout, bump_index: bool = False) -> None:
        super().__init__(buf)
        self.buf, self.layout, self.bump_index = buf, layout, bump_index

    def read_into(self, offset: int, dst: np.ndarray) -> int:
        got = super().read_into(offset, dst)
        if offset >= self.layout.header_size:  # a pixel copy: the writer moves on meanwhile
            entry = _u64(self.buf, p.SLOT_TABLE_OFFSET + 8 if self.bump_index else p.SLOT_TABLE_OFFSET)
            entry[0] += 2
        return got


@pytest.mark.parametrize("bump_index", [False, True])
def test_reader_discards_a_copy_raced_by_the_writer(bump_index: bool) -> None:
    writer, buf = _view()
    writer.write_frame(np.ones((4, 6, 4), np.uint8), 1, 1)
    raced = ShmView(_RacingIO(buf, writer.layout, bump_index), writer.layout)
    assert raced.read_frame(np.empty((4, 6, 4), np.uint8), after=0, tries=5) is None
    assert raced.last_miss == MISS_RACED


def test_bgra_blocks_are_read_as_rgba() -> None:
    writer, buf = _view(fmt=p.PIXEL_BGRA8)
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 40
    writer.write_frame(bgra, 1, 1)
    out = np.empty_like(bgra)
    _reader(buf).read_frame(out, after=0)
    assert out[0, 0].tolist() == [30, 20, 10, 40]


def test_reader_works_on_a_read_only_buffer() -> None:
    writer, buf = _view(slots=2)
    writer.write_frame(np.full((4, 6, 4), 3, np.uint8), 1, 5)
    ro = _reader(bytes(buf))
    out = np.empty((4, 6, 4), np.uint8)
    assert ro.read_frame(out, after=0) == (1, 5) and (out == 3).all()


class _ShrinkingIO(BufferIO):
    """A block that a peer truncated to `size` bytes: reads past it come back short."""

    def __init__(self, buf: bytearray) -> None:
        super().__init__(buf)
        self.cut: int | None = None

    def size(self) -> int:
        return super().size() if self.cut is None else self.cut

    def read_into(self, offset: int, dst: np.ndarray) -> int:
        got = super().read_into(offset, dst)
        return got if self.cut is None else max(0, min(got, self.cut - offset))


def test_a_shrunk_block_raises_instead_of_being_read() -> None:
    writer, buf = _view()
    writer.write_frame(np.ones((4, 6, 4), np.uint8), 1, 1)
    io = _ShrinkingIO(buf)
    reader = ShmView(io, writer.layout)
    reader.refresh()
    io.cut = 300  # the block is 640 bytes: the header survives, the pixels do not
    with pytest.raises(p.ShmTruncatedError, match="shrank to 300 bytes while in use"):
        reader.read_frame(np.empty((4, 6, 4), np.uint8), after=0)
    with pytest.raises(p.ShmTruncatedError):
        reader.refresh()


def test_a_rewritten_or_zeroed_header_raises_changed() -> None:
    writer, buf = _view()
    reader = _reader(buf)
    buf[16:20] = (7).to_bytes(4, "little")  # width rewritten in place
    with pytest.raises(p.ShmChangedError, match="rewritten while in use"):
        reader.refresh()
    buf[:32] = bytes(32)
    with pytest.raises(p.ShmChangedError, match="zeroed while in use"):
        reader.refresh()
    with pytest.raises(p.ShmChangedError, match="zeroed"):
        writer.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)


def test_writer_checks_its_block_before_every_frame() -> None:
    writer, buf = _view()
    io = _ShrinkingIO(buf)
    view = ShmView(io, writer.layout)
    view.check_intact()
    io.cut = 200
    with pytest.raises(p.ShmTruncatedError, match="shrank to 200 bytes"):
        view.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)
    assert bytes(buf[p.SLOT_TABLE_OFFSET:p.SLOT_TABLE_OFFSET + 8]) == bytes(8)  # nothing was written
    io.cut = None
    buf[28:32] = p.STATE_CLOSED.to_bytes(4, "little")  # someone else closed it
    with pytest.raises(p.ShmChangedError, match="state changed to 2"):
        view.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)


def test_read_header_of_empty_or_short_blocks() -> None:
    with pytest.raises(p.ShmNotReadyError, match="0 bytes"):
        read_header(BufferIO(bytearray()))
    with pytest.raises(p.ShmHeaderError, match="smaller than"):
        read_header(BufferIO(bytearray(40)))
    with pytest.raises(p.ShmNotReadyError, match="all zero"):
        read_header(BufferIO(bytearray(4096)))


def test_reader_refuses_an_out_buffer_of_the_wrong_shape() -> None:
    writer, buf = _view()
    writer.write_frame(np.zeros((4, 6, 4), np.uint8), 1, 1)
    with pytest.raises(ValueError, match="C-contiguous 4x6x4"):
        _reader(buf).read_frame(np.empty((6, 4, 4), np.uint8), after=0)
