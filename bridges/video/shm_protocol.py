"""The streamvj shared-memory frame protocol, version 1: header layout, validation, seqlock.

docs/shared-memory.md is the specification; this module is its one implementation inside
streamvj (clients/streamvj_shm_client.py duplicates the constants on purpose, to stand
alone). Everything here works on a buffer (memoryview, bytearray, mmap): no processes,
no naming of blocks beyond validating a name.

All fields are little-endian. The dynamic fields (state, counters, seqlocks) are read and
written through aligned numpy views, so each is a single aligned load/store.
"""

from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass

import numpy as np

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
_STATIC = struct.Struct("<8sHHHHIIII")
# generation, writer_pid, heartbeat_ns, frame_counter, latest_slot
_DYNAMIC = struct.Struct("<QQQQQ")
_DYNAMIC_OFFSET = 32
# Indices into the u64 view of the first 128 bytes.
_GEN, _PID, _HEARTBEAT, _COUNTER, _LATEST = 4, 5, 6, 7, 8
# Columns of the slot table (u64 each).
_SEQ, _INDEX, _TS = 0, 1, 2

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MACOS_MAX_NAME = 30  # PSHMNAMLEN is 31 including the leading "/"


class ShmError(StreamVJError):
    """A shared-memory block or name is not usable."""


class ShmHeaderError(ShmError):
    """A block's header is not a valid streamvj v1 header (wrong magic, absurd sizes…)."""


class ShmVersionError(ShmHeaderError):
    """A block speaks another protocol version."""


class ShmNotReadyError(ShmError):
    """The block exists but its writer has not finished writing the header yet."""


class ShmNameError(ShmError, ConfigError):
    """A block name breaks the naming rules."""


class ShmNameInUseError(ShmError):
    """Another live writer (or another program) owns a block of that name."""


def validate_name(name: str, platform: str = sys.platform) -> str:
    """Return `name` if it is a valid block name on `platform`, else raise ShmNameError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ShmNameError(
            f"shared-memory name {name!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter, digit or underscore"
        )
    if platform == "darwin" and len(name) > MACOS_MAX_NAME:
        raise ShmNameError(
            f"shared-memory name {name!r} is {len(name)} characters; macOS allows at most "
            f"{MACOS_MAX_NAME} (its POSIX shm names are limited to 31 bytes including the '/')"
        )
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


def _check_layout(layout: ShmLayout, block_size: int | None) -> None:
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
    _check_layout(layout, None)
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
    _STATIC.pack_into(
        head, 0, magic, version, layout.header_size, layout.pixel_format, layout.slot_count,
        layout.width, layout.height, layout.slot_stride, state,
    )
    _DYNAMIC.pack_into(head, _DYNAMIC_OFFSET, generation, writer_pid, 0, 0, 0)
    return bytes(head)


def unpack_header(buf: memoryview | bytes | bytearray | np.ndarray) -> ShmHeader:
    """Parse and validate the header at the start of a block of `len(buf)` bytes.

    Raises ShmNotReadyError while a writer is still initialising (all-zero magic or state
    INIT), ShmVersionError for another version, ShmHeaderError for anything else invalid.
    """
    with memoryview(buf) as mv:  # released at once: a live export would keep mmap from closing
        size = mv.nbytes
    if size < SLOT_TABLE_OFFSET:
        raise ShmHeaderError(f"block is {size} bytes, smaller than the {SLOT_TABLE_OFFSET}-byte header")
    magic, version, hs, fmt, slots, w, h, stride, state = _STATIC.unpack_from(buf, 0)
    if magic == bytes(8):
        raise ShmNotReadyError("block header not written yet (writer initialising)")
    if magic != MAGIC:
        raise ShmHeaderError(f"not a streamvj block: magic is {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ShmVersionError(
            f"block uses protocol version {version}; this side speaks version {VERSION} "
            "(update the older side)"
        )
    if state == STATE_INIT:
        raise ShmNotReadyError("block header not finished yet (state INIT)")
    if state not in (STATE_LIVE, STATE_CLOSED):
        raise ShmHeaderError(f"unknown block state {state}")
    layout = ShmLayout(w, h, fmt, slots, hs, stride)
    _check_layout(layout, size)
    gen, pid, heartbeat, counter, latest = _DYNAMIC.unpack_from(buf, _DYNAMIC_OFFSET)
    if latest >= slots:
        raise ShmHeaderError(f"latest slot {latest} is out of range for {slots} slots")
    return ShmHeader(layout, state, gen, pid, heartbeat, counter, latest)


class ShmView:
    """Aligned numpy views of one mapped block, and the seqlock frame write/read on them.

    Holding a ShmView keeps exports of `buf` alive: call `release()` before closing the
    mapping (mmap refuses to close while numpy views exist).
    """

    def __init__(self, buf: memoryview, layout: ShmLayout) -> None:
        _check_layout(layout, len(buf))
        self.layout = layout
        n, w, h = layout.slot_count, layout.width, layout.height
        self._hdr = np.ndarray((SLOT_TABLE_OFFSET // 8,), dtype="<u8", buffer=buf)
        self._state = np.ndarray((1,), dtype="<u4", buffer=buf, offset=28)
        self._slots = np.ndarray((n, SLOT_ENTRY_SIZE // 8), dtype="<u8", buffer=buf, offset=SLOT_TABLE_OFFSET)
        self.pixels = np.ndarray(
            (n, h, w, 4), dtype=np.uint8, buffer=buf, offset=layout.header_size,
            strides=(layout.slot_stride, w * 4, 4, 1),
        )
        self._bgra = layout.pixel_format == PIXEL_BGRA8

    def release(self) -> None:
        for attr in ("_hdr", "_state", "_slots", "pixels"):
            self.__dict__.pop(attr, None)

    # Dynamic header fields (each read is one aligned load).
    @property
    def state(self) -> int:
        return int(self._state[0])

    @state.setter
    def state(self, value: int) -> None:
        self._state[0] = value

    @property
    def generation(self) -> int:
        return int(self._hdr[_GEN])

    @property
    def writer_pid(self) -> int:
        return int(self._hdr[_PID])

    @property
    def heartbeat_ns(self) -> int:
        return int(self._hdr[_HEARTBEAT])

    @property
    def frame_counter(self) -> int:
        return int(self._hdr[_COUNTER])

    def slot_seq(self, slot: int) -> int:
        return int(self._slots[slot, _SEQ])

    def touch(self, t_ns: int) -> None:
        """Writer: refresh the heartbeat without publishing a frame."""
        self._hdr[_HEARTBEAT] = t_ns

    def write_frame(self, rgba_u8: np.ndarray, index: int, t_ns: int) -> int:
        """Writer: publish frame `index` (1, 2, 3…) into the slot after the latest; returns the slot.

        Seqlock: the slot's counter is odd while its pixels are being written, so a reader
        copying it concurrently sees the counter change and discards its copy.
        """
        slot = (int(self._hdr[_LATEST]) + 1) % self.layout.slot_count if index > 1 else 0
        odd = (int(self._slots[slot, _SEQ]) + 1) | 1
        self._slots[slot, _SEQ] = odd  # odd: being written
        self._copy_in(self.pixels[slot], rgba_u8)
        self._slots[slot, _INDEX] = index
        self._slots[slot, _TS] = t_ns
        self._slots[slot, _SEQ] = odd + 1  # even: stable
        self._hdr[_LATEST] = slot
        self._hdr[_COUNTER] = index
        self._hdr[_HEARTBEAT] = t_ns
        return slot

    def read_frame(self, out: np.ndarray, after: int, tries: int = 3) -> tuple[int, int] | None:
        """Reader: copy the newest frame into `out` (H x W x 4 uint8, RGBA) if its index > `after`.

        Returns (frame_index, timestamp_ns), or None when nothing newer is published or the
        writer kept overwriting the slot during `tries` attempts (the caller just tries again
        on its next poll: a torn copy is never returned).
        """
        n = self.layout.slot_count
        for _ in range(tries):
            if int(self._hdr[_COUNTER]) <= after:
                return None
            slot = int(self._hdr[_LATEST])
            if slot >= n:
                raise ShmHeaderError(f"latest slot {slot} is out of range for {n} slots")
            seq = int(self._slots[slot, _SEQ])
            if seq & 1:
                continue
            index = int(self._slots[slot, _INDEX])
            t_ns = int(self._slots[slot, _TS])
            if index <= after:
                return None
            self._copy_out(out, self.pixels[slot])
            if int(self._slots[slot, _SEQ]) == seq:
                return index, t_ns
        return None

    def _copy_in(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def _copy_out(self, dst: np.ndarray, src: np.ndarray) -> None:
        if self._bgra:
            dst[..., 0] = src[..., 2]
            dst[..., 1] = src[..., 1]
            dst[..., 2] = src[..., 0]
            dst[..., 3] = src[..., 3]
        else:
            np.copyto(dst, src)


def init_block(buf: memoryview, layout: ShmLayout, generation: int, writer_pid: int) -> ShmView:
    """Writer: write a fresh header into a zero-filled block, then mark it LIVE (last)."""
    head = pack_header(layout, generation, writer_pid, STATE_INIT)
    buf[: len(head)] = head
    view = ShmView(buf, layout)
    view.state = STATE_LIVE
    return view
