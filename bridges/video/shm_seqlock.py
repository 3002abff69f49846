"""The seqlock frame exchange of docs/shared-memory.md, on a block reached through a `BlockIO`.

A block is reached only through a `BlockIO` (read this many bytes at this offset into my
buffer; write these bytes there), never through a memory mapping. On POSIX the engine's
BlockIO reads and writes the block's file descriptor (bridges/video/shm_block.py): when a
peer truncates a mapped block, the next access to a vanished page kills the process with
SIGBUS, while a read through the descriptor just comes back short. Every access here
checks that it got all its bytes (a short one raises ShmTruncatedError) and the block's
size before each frame; header and slot-table reads land in preallocated arrays, pixels go
straight between the block and the caller's array (no per-frame allocation).

Each access is one system call, so a u64 field is not guaranteed to be copied in one
store; the seqlock stays sound because the seq only ever increases: a torn read of it is
either a value it really had or one that no later read can reproduce, and a copy is kept
only when the seq *and* frame_index read after it equal those read before.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bridges.video.shm_protocol import (
    COUNTER_WORD,
    GEN_WORD,
    HEADER_STATIC,
    HEARTBEAT_WORD,
    INDEX_COL,
    LATEST_WORD,
    MAGIC,
    MAX_SLOTS,
    PID_WORD,
    PIXEL_BGRA8,
    SEQ_COL,
    SLOT_ENTRY_SIZE,
    SLOT_TABLE_OFFSET,
    STATE_INIT,
    STATE_LIVE,
    TS_COL,
    ShmChangedError,
    ShmHeader,
    ShmHeaderError,
    ShmLayout,
    ShmNotReadyError,
    ShmTruncatedError,
    check_layout,
    pack_header,
    unpack_header,
)


class BlockIO(Protocol):
    """Byte access to one block. Reads return how many bytes arrived (fewer: the block ends)."""

    def size(self) -> int: ...

    def read_into(self, offset: int, dst: np.ndarray) -> int: ...

    def write_from(self, offset: int, src: np.ndarray | bytes) -> int: ...


class BufferIO:
    """BlockIO over an in-process buffer (a bytearray in tests, a Windows mapping).

    Windows cannot shrink a mapped section, so a mapping there stays as long as it was mapped.
    """

    def __init__(self, buf: memoryview | bytearray | bytes) -> None:
        self._mv = memoryview(buf).cast("B")

    def size(self) -> int:
        return self._mv.nbytes

    def read_into(self, offset: int, dst: np.ndarray) -> int:
        n = max(0, min(dst.nbytes, self._mv.nbytes - offset))
        np.copyto(dst.reshape(-1).view(np.uint8)[:n], np.frombuffer(self._mv, np.uint8, n, offset))
        return n

    def write_from(self, offset: int, src: np.ndarray | bytes) -> int:
        data = np.frombuffer(src, np.uint8) if isinstance(src, bytes | bytearray) else src.reshape(-1).view(np.uint8)
        n = max(0, min(data.nbytes, self._mv.nbytes - offset))
        np.copyto(np.frombuffer(self._mv, np.uint8, n, offset), data[:n])
        return n

    def release(self) -> None:
        self._mv.release()


def read_header(io: BlockIO) -> ShmHeader:
    """Read and validate a block's header through `io` (attach time: allocates)."""
    size = io.size()
    if size == 0:
        raise ShmNotReadyError("the block is 0 bytes (its writer created the name but has not sized it)")
    head = np.zeros(min(size, SLOT_TABLE_OFFSET + SLOT_ENTRY_SIZE * MAX_SLOTS), np.uint8)
    got = io.read_into(0, head)
    return unpack_header(head[:got], size if got == head.nbytes else got)



# Why ShmView.read_frame returned None although the writer announced a newer frame.
MISS_ODD = "odd"  # the newest slot's seq was odd (mid-write) on every try
MISS_INDEX = "index"  # frame_counter is newer than the frame_index the newest slot holds
MISS_RACED = "raced"  # the writer overwrote the slot during every copy

_FIXED = 28  # magic .. slot_stride: the part of a header that never changes in a block's life


class ShmView:
    """The seqlock of one block, read and written through a BlockIO.

    `refresh()` re-reads the header and slot table (one read of `layout.table_end` bytes)
    into a preallocated array, checks that the block is still as large as its layout and
    that the fixed part of the header is unchanged; the properties then describe that read.
    Readers call `read_frame`, the block's one writer `write_frame`; both raise
    ShmTruncatedError or ShmChangedError instead of touching a block that broke the rules.
    """

    def __init__(self, io: BlockIO, layout: ShmLayout) -> None:
        check_layout(layout, None)
        self.io = io
        self.layout = layout
        n, w, h = layout.slot_count, layout.width, layout.height
        self._head = np.zeros(layout.table_end // 8, "<u8")
        self._head_u8 = self._head.view(np.uint8)
        self._state = self._head_u8[28:32].view("<u4")
        self._slots = self._head[SLOT_TABLE_OFFSET // 8 :].reshape(n, SLOT_ENTRY_SIZE // 8)
        self._fixed = memoryview(self._head_u8[:_FIXED])
        self._expect = memoryview(pack_header(layout, 0, 0)[:_FIXED])
        self._entry = np.zeros(3, "<u8")  # reader: seq, frame_index, timestamp_ns re-read after a copy
        self._word = np.zeros(1, "<u8")  # writer scratch for one field
        self._pair = np.zeros(2, "<u8")  # writer scratch for two adjacent fields
        self._state_word = np.zeros(1, "<u4")
        self._bgra = layout.pixel_format == PIXEL_BGRA8
        self._plane = np.empty((h, w), np.uint8) if self._bgra else None
        self._w_seq = [0] * n  # writer: the seq it last stored per slot (it owns them)
        self._w_latest = 0
        self.last_miss = ""

    # ---- reading the header --------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read header and slot table; raise if the block shrank or its fixed header changed."""
        self._check_size()
        if self.io.read_into(0, self._head_u8) < self._head_u8.nbytes:
            raise self._shrunk()
        if self._fixed != self._expect:
            raise ShmChangedError(self._change())

    @property
    def state(self) -> int:
        return int(self._state[0])

    @property
    def generation(self) -> int:
        return int(self._head[GEN_WORD])

    @property
    def writer_pid(self) -> int:
        return int(self._head[PID_WORD])

    @property
    def heartbeat_ns(self) -> int:
        return int(self._head[HEARTBEAT_WORD])

    @property
    def frame_counter(self) -> int:
        return int(self._head[COUNTER_WORD])

    @property
    def latest_slot(self) -> int:
        return int(self._head[LATEST_WORD])

    def slot_seq(self, slot: int) -> int:
        return int(self._slots[slot, SEQ_COL])

    def slot_index(self, slot: int) -> int:
        return int(self._slots[slot, INDEX_COL])

    # ---- reader --------------------------------------------------------------------------------

    def read_frame(
        self, out: np.ndarray, after: int, tries: int = 3, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        """Copy the newest frame into `out` (C-contiguous H x W x 4 uint8, RGBA) if its index > `after`.

        Returns (frame_index, timestamp_ns), or None when nothing newer is published or the
        writer kept overwriting the slot during `tries` attempts (`last_miss` says which; the
        caller tries again on its next poll: a torn copy is never returned). The slot's seq
        *and* frame_index are re-read after the copy: a copy is kept only if neither moved.
        `fresh`: the caller has just refreshed, so the first try uses that read.
        """
        n = self.layout.slot_count
        self.last_miss = ""
        for attempt in range(tries):
            if attempt or not fresh:
                self.refresh()
            if self.frame_counter <= after:
                self.last_miss = ""
                return None
            slot = self.latest_slot
            if slot >= n:
                raise ShmHeaderError(f"latest slot {slot} is out of range for {n} slots")
            seq = int(self._slots[slot, SEQ_COL])
            if seq & 1:
                self.last_miss = MISS_ODD
                continue
            index = int(self._slots[slot, INDEX_COL])
            t_ns = int(self._slots[slot, TS_COL])
            if index <= after:
                self.last_miss = MISS_INDEX
                return None
            self._copy_out(out, slot)
            self._read_exact(SLOT_TABLE_OFFSET + SLOT_ENTRY_SIZE * slot, self._entry)
            if int(self._entry[SEQ_COL]) == seq and int(self._entry[INDEX_COL]) == index:
                self.last_miss = ""
                return index, t_ns
            self.last_miss = MISS_RACED
        return None

    def _copy_out(self, out: np.ndarray, slot: int) -> None:
        lay = self.layout
        if out.shape != (lay.height, lay.width, 4) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"read_frame needs a C-contiguous {lay.height}x{lay.width}x4 uint8 array")
        self._read_exact(lay.slot_offset(slot), out)
        if self._plane is not None:  # BGRA in the block: swap R and B in place
            np.copyto(self._plane, out[..., 0])
            np.copyto(out[..., 0], out[..., 2])
            np.copyto(out[..., 2], self._plane)

    def _read_exact(self, offset: int, dst: np.ndarray) -> None:
        if self.io.read_into(offset, dst) < dst.nbytes:
            raise self._shrunk()

    # ---- writer --------------------------------------------------------------------------------

    def check_intact(self) -> None:
        """Writer: raise unless the block is still as large as it was made and its header is ours."""
        self._check_size()
        if self.io.read_into(0, self._head_u8[:32]) < 32:
            raise self._shrunk()
        if self._fixed != self._expect or self.state != STATE_LIVE:
            raise ShmChangedError(self._change())

    def write_frame(self, rgba_u8: np.ndarray, index: int, t_ns: int) -> int:
        """Writer: publish frame `index` (1, 2, 3…) into the slot after the latest; returns the slot.

        Seqlock: the slot's counter is odd while its pixels are being written, so a reader
        copying it concurrently sees the counter change and discards its copy. The block is
        checked first (check_intact); `rgba_u8` is C-contiguous H x W x 4 uint8.
        """
        self.check_intact()
        slot = (self._w_latest + 1) % self.layout.slot_count if index > 1 else 0
        entry = SLOT_TABLE_OFFSET + SLOT_ENTRY_SIZE * slot
        odd = (self._w_seq[slot] + 1) | 1
        self._put(entry, odd)  # odd: being written
        self._write_exact(self.layout.slot_offset(slot), rgba_u8)
        self._pair[0], self._pair[1] = index, t_ns
        self._write_exact(entry + 8, self._pair)  # frame_index, timestamp_ns
        self._put(entry, odd + 1)  # even: stable
        self._put(LATEST_WORD * 8, slot)
        self._pair[0], self._pair[1] = t_ns, index
        self._write_exact(HEARTBEAT_WORD * 8, self._pair)  # heartbeat_ns, frame_counter
        self._w_seq[slot], self._w_latest = odd + 1, slot
        return slot

    def touch(self, t_ns: int) -> None:
        """Writer: refresh the heartbeat without publishing a frame."""
        self._put(HEARTBEAT_WORD * 8, t_ns)

    def set_state(self, state: int) -> bool:
        """Write the state field; False (nothing written) when the block no longer reaches it."""
        if self.io.size() < 32:
            return False  # writing would grow a truncated block back just to say CLOSED
        self._state_word[0] = state
        return self.io.write_from(28, self._state_word) == 4

    def _put(self, offset: int, value: int) -> None:
        self._word[0] = value
        self._write_exact(offset, self._word)

    def _write_exact(self, offset: int, src: np.ndarray) -> None:
        if self.io.write_from(offset, src) < src.nbytes:
            raise self._shrunk()

    # ---- what went wrong -----------------------------------------------------------------------

    def _check_size(self) -> None:
        if self.io.size() < self.layout.block_size:
            raise self._shrunk()

    def _shrunk(self) -> ShmTruncatedError:
        return ShmTruncatedError(
            f"the block shrank to {self.io.size()} bytes while in use (its header describes "
            f"{self.layout.block_size}): a peer truncated it"
        )

    def _change(self) -> str:
        fixed = self._head_u8[:32].tobytes()
        if fixed == bytes(32):
            return "its header was zeroed while in use"
        magic, version, *_ = HEADER_STATIC.unpack_from(fixed, 0)
        if magic != MAGIC:
            return f"its magic changed to {magic!r} while in use (overwritten by another program?)"
        if fixed[:_FIXED] != bytes(self._expect):
            return f"its header was rewritten while in use (version {version}, new size or format)"
        return f"its state changed to {self.state} (expected LIVE) behind its writer's back"


def init_block(io: BlockIO, layout: ShmLayout, generation: int, writer_pid: int) -> ShmView:
    """Writer: write a fresh header into a zero-filled block, then mark it LIVE (last)."""
    head = np.frombuffer(pack_header(layout, generation, writer_pid, STATE_INIT), np.uint8)
    if io.write_from(0, head) < head.nbytes:
        raise ShmTruncatedError(f"the block is {io.size()} bytes, too small for its {head.nbytes}-byte header")
    view = ShmView(io, layout)
    view.set_state(STATE_LIVE)
    return view
