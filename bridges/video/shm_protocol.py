"""The streamvj shared-memory frame protocol, version 1: header layout, validation, seqlock.

docs/shared-memory.md is the specification; this module is its one implementation inside
streamvj (clients/streamvj_shm_client.py duplicates the constants on purpose, to stand
alone). Pure layout and validation on buffers: no processes, no naming of blocks beyond
validating a name; bridges/video/shm_seqlock.py reads and writes frames with it. All
fields are little-endian.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

import numpy as np

from engine.config.transport_specs import shm_name_problem
from engine.errors import ConfigError, StreamVJError

MAGIC = b"STREAMVJ"
VERSION = 1
HEADER_SIZE = 256  # v1 writers use 256; readers honour the header_size field
SLOT_TABLE_OFFSET = 128
SLOT_ENTRY_SIZE = 32
MAX_HEADER_SIZE = 4096
MAX_SIDE = 16384
MIN_SLOTS, MAX_SLOTS = 2, 3
ALIGN = 64

PIXEL_RGBA8 = 1
PIXEL_BGRA8 = 2
PIXEL_FORMATS = {PIXEL_RGBA8: "RGBA8", PIXEL_BGRA8: "BGRA8"}

STATE_INIT, STATE_LIVE, STATE_CLOSED = 0, 1, 2

# magic, version, header_size, pixel_format, slot_count, width, height, slot_stride, state
HEADER_STATIC = struct.Struct("<8sHHHHIIII")
# generation, writer_pid, heartbeat_ns, frame_counter, latest_slot
HEADER_DYNAMIC = struct.Struct("<QQQQQ")
DYNAMIC_OFFSET = 32
# Indices into the u64 view of the first 128 bytes.
GEN_WORD, PID_WORD, HEARTBEAT_WORD, COUNTER_WORD, LATEST_WORD = 4, 5, 6, 7, 8
# Columns of the slot table (u64 each).
SEQ_COL, INDEX_COL, TS_COL = 0, 1, 2



class ShmError(StreamVJError):
    """A shared-memory block or name is not usable."""


class ShmHeaderError(ShmError):
    """A block's header is not a valid streamvj v1 header (wrong magic, absurd sizes…)."""


class ShmVersionError(ShmHeaderError):
    """A block speaks another protocol version."""


class ShmNotReadyError(ShmError):
    """The block exists but its writer has not finished creating it (size 0, header zero or INIT)."""


class ShmTruncatedError(ShmError):
    """The block ended before the bytes an access needed: someone shrank it (a protocol violation)."""


class ShmChangedError(ShmHeaderError):
    """The fixed part of an attached block's header changed (rewritten, zeroed, resized in place)."""


class ShmNameError(ShmError, ConfigError):
    """A block name breaks the naming rules."""


class ShmNameInUseError(ShmError):
    """Another live writer (or another program) owns a block of that name."""


def validate_name(name: str, platform: str = sys.platform) -> str:
    """Return `name` if it is a valid block name on `platform`, else raise ShmNameError.

    The rule itself is engine/config/transport_specs.py's, which presets are checked with.
    """
    problem = shm_name_problem(name, platform)
    if problem:
        raise ShmNameError(problem)
    return name


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class ShmLayout:
    """Where everything lives in a block; fixed for the block's life."""

    width: int
    height: int
    pixel_format: int = PIXEL_RGBA8
    slot_count: int = 3
    header_size: int = HEADER_SIZE
    slot_stride: int = 0

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 4

    @property
    def block_size(self) -> int:
        return self.header_size + self.slot_count * self.slot_stride

    @property
    def table_end(self) -> int:
        """End of the slot table: the bytes a reader re-reads on every poll."""
        return SLOT_TABLE_OFFSET + SLOT_ENTRY_SIZE * self.slot_count

    def slot_offset(self, slot: int) -> int:
        return self.header_size + slot * self.slot_stride


@dataclass(frozen=True)
class ShmHeader:
    """A snapshot of a whole header (the dynamic fields may have moved on since)."""

    layout: ShmLayout
    state: int
    generation: int
    writer_pid: int
    heartbeat_ns: int
    frame_counter: int
    latest_slot: int


def check_layout(layout: ShmLayout, block_size: int | None) -> None:
    w, h = layout.width, layout.height
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise ShmHeaderError(f"frame size {w}x{h} is out of range (each side 1..{MAX_SIDE})")
    if layout.pixel_format not in PIXEL_FORMATS:
        raise ShmHeaderError(
            f"unknown pixel format {layout.pixel_format} (known: 1 = RGBA8, 2 = BGRA8)"
        )
    if not MIN_SLOTS <= layout.slot_count <= MAX_SLOTS:
        raise ShmHeaderError(f"slot count {layout.slot_count} is out of range ({MIN_SLOTS}..{MAX_SLOTS})")
    min_header = SLOT_TABLE_OFFSET + SLOT_ENTRY_SIZE * layout.slot_count
    hs = layout.header_size
    if hs < min_header or hs > MAX_HEADER_SIZE or hs % ALIGN:
        raise ShmHeaderError(
            f"header size {hs} is invalid (a multiple of {ALIGN} in {min_header}..{MAX_HEADER_SIZE})"
        )
    if layout.slot_stride < layout.frame_bytes or layout.slot_stride % ALIGN:
        raise ShmHeaderError(
            f"slot stride {layout.slot_stride} is invalid for {w}x{h} frames "
            f"(a multiple of {ALIGN}, at least {layout.frame_bytes})"
        )
    if block_size is not None and layout.block_size > block_size:
        raise ShmHeaderError(
            f"header describes {layout.slot_count} slots of {w}x{h} ({layout.block_size} bytes) "
            f"but the block holds only {block_size} bytes"
        )


def layout_for(
    width: int, height: int, slot_count: int = 3, pixel_format: int = PIXEL_RGBA8
) -> ShmLayout:
    """The v1 layout a writer uses for `width` x `height` frames; raises ShmHeaderError if absurd."""
    layout = ShmLayout(
        width=int(width),
        height=int(height),
        pixel_format=int(pixel_format),
        slot_count=int(slot_count),
        header_size=HEADER_SIZE,
        slot_stride=_round_up(int(width) * int(height) * 4, ALIGN),
    )
    check_layout(layout, None)
    return layout


def pack_header(
    layout: ShmLayout,
    generation: int,
    writer_pid: int,
    state: int = STATE_INIT,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
) -> bytes:
    """The first `layout.header_size` bytes of a fresh block (slot table zeroed).

    `magic` and `version` are parameters only so tests can build bad headers.
    """
    head = bytearray(layout.header_size)
    HEADER_STATIC.pack_into(
        head, 0, magic, version, layout.header_size, layout.pixel_format, layout.slot_count,
        layout.width, layout.height, layout.slot_stride, state,
    )
    HEADER_DYNAMIC.pack_into(head, DYNAMIC_OFFSET, generation, writer_pid, 0, 0, 0)
    return bytes(head)


def unpack_header(buf: memoryview | bytes | bytearray | np.ndarray, block_size: int | None = None) -> ShmHeader:
    """Parse and validate the header at the start of `buf`, a block of `block_size` bytes.

    `buf` holds at least the fixed header and slot table (or the whole block; `block_size`
    defaults to its length). Raises ShmNotReadyError while a writer is still initialising
    (all-zero magic or state INIT), ShmVersionError for another version, ShmHeaderError
    for anything else invalid.
    """
    with memoryview(buf) as mv:  # released at once: a live export would keep mmap from closing
        have = mv.nbytes
    size = have if block_size is None else block_size
    if min(have, size) < SLOT_TABLE_OFFSET:
        raise ShmHeaderError(f"block is {size} bytes, smaller than the {SLOT_TABLE_OFFSET}-byte header")
    magic, version, hs, fmt, slots, w, h, stride, state = HEADER_STATIC.unpack_from(buf, 0)
    if magic == bytes(8):
        raise ShmNotReadyError("the header is all zero (the writer has not written it)")
    if magic != MAGIC:
        raise ShmHeaderError(f"not a streamvj block: magic is {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ShmVersionError(
            f"block uses protocol version {version}; this side speaks version {VERSION} "
            "(update the older side)"
        )
    if state == STATE_INIT:
        raise ShmNotReadyError("the header is in state INIT (the writer has not marked it LIVE)")
    if state not in (STATE_LIVE, STATE_CLOSED):
        raise ShmHeaderError(f"unknown block state {state}")
    layout = ShmLayout(w, h, fmt, slots, hs, stride)
    check_layout(layout, size)
    gen, pid, heartbeat, counter, latest = HEADER_DYNAMIC.unpack_from(buf, DYNAMIC_OFFSET)
    if latest >= slots:
        raise ShmHeaderError(f"latest slot {latest} is out of range for {slots} slots")
    return ShmHeader(layout, state, gen, pid, heartbeat, counter, latest)
