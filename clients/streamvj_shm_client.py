"""streamvj shared-memory client: one file, stdlib + numpy only (drop it into TouchDesigner).

The specification is docs/shared-memory.md in the streamvj repository (protocol version 1).
The constants below duplicate it on purpose so this file stands alone.

TouchDesigner (put this file next to the .toe or on TD's Python path):

    # Script TOP (or Execute DAT) sending a TOP to streamvj, each frame:
    import streamvj_shm_client as svj
    w = op('null_out')
    if 'writer' not in me.storage:
        me.storage['writer'] = svj.ShmWriter('streamvj_in', w.width, w.height)
    me.storage['writer'].write(w.numpyArray(), bottom_up=True)   # float32 0..1, bottom-up

    # Script TOP receiving streamvj's output, in onCook(scriptOp):
    if 'reader' not in me.storage:
        me.storage['reader'] = svj.ShmReader('streamvj_out')
    img = me.storage['reader'].read(bottom_up=True)               # uint8, bottom-up for TD
    if img is not None:
        scriptOp.copyNumpyArray(img)

Blocks are never registered with multiprocessing's resource tracker (which would unlink a
block this process merely read, and would spawn sys.executable — TouchDesigner itself).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import time

import numpy as np

MAGIC = b"STREAMVJ"
VERSION = 1
HEADER_SIZE = 256
SLOT_TABLE = 128
RGBA8, BGRA8 = 1, 2
INIT, LIVE, CLOSED = 0, 1, 2
MAX_SIDE = 16384
STALE_NS = 2_000_000_000
RETRY_S = 0.5
_STATIC = struct.Struct("<8sHHHHIIII")  # magic ver hsize fmt slots w h stride state
_GEN, _PID, _BEAT, _COUNT, _LATEST = 4, 5, 6, 7, 8  # u64 indices in the first 128 bytes
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

if os.name == "nt":
    from multiprocessing.shared_memory import SharedMemory
else:
    import _posixshmem


class _Block:
    """A mapping of a named block, untracked (see the module docstring)."""

    def __init__(self, name: str, size: int = 0, writable: bool = False) -> None:
        if os.name == "nt":
            self._shm = SharedMemory(name, create=size > 0, size=size)
            self.buf = self._shm.buf
            return
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR if size else (os.O_RDWR if writable else os.O_RDONLY)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if size:
                os.ftruncate(fd, size)
            real = os.fstat(fd).st_size
            if real == 0:
                raise FileNotFoundError(f"block {name!r} is still being created")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if size or writable else 0)
            self._mmap = mmap.mmap(fd, real, prot=prot)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        if os.name == "nt":
            self._shm.close()
        else:
            self.buf.release()
            self._mmap.close()


def _unlink(name: str) -> None:
    if os.name != "nt":
        with contextlib.suppress(FileNotFoundError):  # already gone is what we want
            _posixshmem.shm_unlink("/" + name)


def _pid_alive(pid: int, heartbeat_ns: int) -> bool:
    """POSIX asks the kernel; Windows (where os.kill would terminate) trusts a fresh heartbeat."""
    if os.name == "nt" or pid <= 0:
        return time.time_ns() - heartbeat_ns < STALE_NS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(buf: memoryview) -> tuple:
    """(width, height, fmt, slots, header_size, stride, state); ValueError when not usable."""
    if len(buf) < SLOT_TABLE:
        raise ValueError("block too small")
    magic, ver, hs, fmt, slots, w, h, stride, state = _STATIC.unpack_from(buf, 0)
    if magic != MAGIC or state == INIT:
        raise ValueError("not a (ready) streamvj block")
    if ver != VERSION:
        raise ValueError(f"protocol version {ver}, this client speaks {VERSION}")
    ok = (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE and fmt in (RGBA8, BGRA8) and 2 <= slots <= 3
          and hs >= SLOT_TABLE + 32 * slots and hs % 64 == 0 and stride >= w * h * 4
          and hs + slots * stride <= len(buf) and state in (LIVE, CLOSED))
    if not ok:
        raise ValueError(f"invalid header ({w}x{h}, format {fmt}, {slots} slots)")
    return w, h, fmt, slots, hs, stride, state


class _Views:
    def __init__(self, buf: memoryview, w: int, h: int, slots: int, hs: int, stride: int) -> None:
        self.hdr = np.ndarray((16,), "<u8", buffer=buf)
        self.state = np.ndarray((1,), "<u4", buffer=buf, offset=28)
        self.slot = np.ndarray((slots, 4), "<u8", buffer=buf, offset=SLOT_TABLE)  # seq idx ts -
        self.px = np.ndarray((slots, h, w, 4), np.uint8, buffer=buf, offset=hs,
                             strides=(stride, w * 4, 4, 1))


class ShmWriter:
    """Publish frames into block `name` (created now; recreated if the frame size changes)."""

    def __init__(self, name: str, width: int, height: int, slots: int = 3) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid block name {name!r} (1-64 of A-Z a-z 0-9 _ . -)")
        if slots not in (2, 3):
            raise ValueError(f"invalid slots {slots} (2 or 3)")
        self.name, self.slots = name, slots
        self.index = 0
        self._block = self._v = None
        self._gen = 0
        self._scratch: np.ndarray | None = None
        self._retry_at = 0.0
        self._create(int(width), int(height))

    def write(self, frame: np.ndarray, bottom_up: bool = False) -> bool:
        """Publish H x W x 4 RGBA: uint8, or float 0..1 (TouchDesigner's numpyArray()).

        bottom_up=True flips rows (TouchDesigner arrays are bottom-up). Returns False when
        the frame was dropped because the block could not be created yet.
        """
        if frame.ndim != 3 or frame.shape[2] != 4 or not (frame.dtype == np.uint8 or frame.dtype.kind == "f"):
            raise ValueError(f"expected H x W x 4 RGBA uint8 or float, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self._v is None or self._v.px.shape[1:3] != (h, w):
            if not self._create(w, h):
                return False
        v = self._v
        src = frame[::-1] if bottom_up else frame
        self.index += 1
        s = (int(v.hdr[_LATEST]) + 1) % self.slots if self.index > 1 else 0
        odd = (int(v.slot[s, 0]) + 1) | 1
        v.slot[s, 0] = odd  # seqlock: odd while the pixels change
        if frame.dtype == np.uint8:
            np.copyto(v.px[s], src)
        else:
            if self._scratch is None or self._scratch.shape != frame.shape:
                self._scratch = np.empty(frame.shape, np.float32)
            sc = self._scratch
            np.multiply(src, 255.0, out=sc, casting="unsafe")
            np.add(sc, 0.5, out=sc)
            np.clip(sc, 0.0, 255.0, out=sc)
            np.copyto(v.px[s], sc, casting="unsafe")
        t = time.time_ns()
        v.slot[s, 1], v.slot[s, 2] = self.index, t
        v.slot[s, 0] = odd + 1
        v.hdr[_LATEST], v.hdr[_COUNT], v.hdr[_BEAT] = s, self.index, t
        return True

    def close(self) -> None:
        """Mark the block CLOSED for readers and remove it (unless another writer replaced it)."""
        if self._v is None:
            return
        self._v.state[0] = CLOSED
        self._v = None
        self._block.close()
        self._block = None
        try:
            probe = _Block(self.name)
        except FileNotFoundError:
            return
        ours = len(probe.buf) >= 40 and struct.unpack_from("<Q", probe.buf, 32)[0] == self._gen
        probe.close()
        if ours:
            _unlink(self.name)

    def _create(self, w: int, h: int) -> bool:
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise ValueError(f"invalid size {w}x{h} (each side 1..{MAX_SIDE})")
        if time.monotonic() < self._retry_at:
            return False
        self.close()
        stride = (w * h * 4 + 63) // 64 * 64
        size = HEADER_SIZE + self.slots * stride
        try:
            block = _Block(self.name, size)
        except FileExistsError:
            self._replace_stale()
            try:
                block = _Block(self.name, size)
            except FileExistsError:  # Windows: old readers still hold it until they see CLOSED
                self._retry_at = time.monotonic() + 0.1
                return False
        gen = int.from_bytes(os.urandom(8), "little") | 1
        head = bytearray(HEADER_SIZE)
        _STATIC.pack_into(head, 0, MAGIC, VERSION, HEADER_SIZE, RGBA8, self.slots, w, h, stride, INIT)
        struct.pack_into("<QQ", head, 32, gen, os.getpid())
        block.buf[:HEADER_SIZE] = head
        self._block, self._v = block, _Views(block.buf, w, h, self.slots, HEADER_SIZE, stride)
        self._v.state[0] = LIVE  # last: readers only attach to LIVE blocks
        self.index, self._gen = 0, gen
        return True

    def _replace_stale(self) -> None:
        try:
            old = _Block(self.name, writable=True)
        except FileNotFoundError:
            return
        try:
            head = bytes(old.buf[:56]).ljust(56, b"\0")
            magic, ver = struct.unpack_from("<8sH", head)
            state, pid, beat = struct.unpack_from("<I", head, 28)[0], *struct.unpack_from("<QQ", head, 40)
            if magic not in (MAGIC, bytes(8)):
                raise RuntimeError(f"block {self.name!r} exists and is not a streamvj block; pick another name")
            live = magic == MAGIC and state == LIVE and pid != os.getpid() and _pid_alive(pid, beat)
            if live:
                raise RuntimeError(f"block {self.name!r} is in use by a live writer (pid {pid})")
            if magic == MAGIC and ver == VERSION:
                struct.pack_into("<I", old.buf, 28, CLOSED)  # its readers let go (Windows frees it then)
        finally:
            old.close()
        _unlink(self.name)


class ShmReader:
    """Read the newest frame of block `name`; reattaches when its writer restarts or resizes."""

    def __init__(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid block name {name!r} (1-64 of A-Z a-z 0-9 _ . -)")
        self.name = name
        self.index = 0  # writer's index of the last frame returned
        self.timestamp_ns = 0  # writer's time.time_ns() for that frame
        self.error = ""  # why nothing is attached, for display
        self._block = self._v = None
        self._gen = 0
        self._fmt = RGBA8
        self._next_try = 0.0
        self._last_new = 0.0
        self._out: dict[tuple, np.ndarray] = {}

    def read(self, bottom_up: bool = False, as_float: bool = False) -> np.ndarray | None:
        """The newest frame since the last call, or None.

        uint8 RGBA top-down by default; bottom_up=True for TouchDesigner's copyNumpyArray,
        as_float=True for float32 0..1. The returned array is reused by the next call.
        """
        now = time.monotonic()
        if self._v is None or int(self._v.state[0]) == CLOSED:
            if self._v is not None:
                self._detach()
            if now < self._next_try or not self._attach(now):
                return None
        v = self._v
        for _ in range(3):
            if int(v.hdr[_COUNT]) <= self.index:
                break
            s = int(v.hdr[_LATEST]) % v.slot.shape[0]
            seq = int(v.slot[s, 0])
            idx, t = int(v.slot[s, 1]), int(v.slot[s, 2])
            if seq & 1 or idx <= self.index:
                continue
            out = self._copy(v.px[s], bottom_up, as_float)
            if int(v.slot[s, 0]) == seq:  # unchanged seqlock: the copy is not torn
                self.index, self.timestamp_ns, self._last_new = idx, t, now
                return out
        if now - self._last_new >= RETRY_S and now >= self._next_try:
            self._next_try = now + RETRY_S
            self._probe(now)
        return None

    def close(self) -> None:
        self._detach()

    def _copy(self, src: np.ndarray, bottom_up: bool, as_float: bool) -> np.ndarray:
        key = (src.shape, as_float)
        out = self._out.get(key)
        if out is None:
            out = self._out[key] = np.empty(src.shape, np.float32 if as_float else np.uint8)
        if bottom_up:
            src = src[::-1]
        if self._fmt == BGRA8:
            src = src[..., [2, 1, 0, 3]]
        if as_float:
            np.multiply(src, np.float32(1 / 255), out=out)
        else:
            np.copyto(out, src)
        return out

    def _open(self) -> tuple | None:
        try:
            block = _Block(self.name)
        except FileNotFoundError:
            self.error = f"no block {self.name!r} yet"
            return None
        try:
            return block, _parse(block.buf)
        except ValueError as e:
            self.error = f"block {self.name!r}: {e}"
            block.close()
            return None

    def _attach(self, now: float, opened: tuple | None = None) -> bool:
        self._next_try = now + RETRY_S
        opened = opened or self._open()
        if opened is None:
            return False
        block, (w, h, fmt, slots, hs, stride, state) = opened
        if state != LIVE:
            block.close()
            return False
        v = _Views(block.buf, w, h, slots, hs, stride)
        gen = int(v.hdr[_GEN])
        if gen != self._gen:
            self.index = 0
        self._block, self._v, self._gen, self._fmt = block, v, gen, fmt
        self._last_new, self.error = now, ""
        return True

    def _probe(self, now: float) -> None:
        opened = self._open()
        if opened is None:
            return
        if struct.unpack_from("<Q", opened[0].buf, 32)[0] != self._gen:
            self._detach()  # a new writer took the name over
            self._attach(now, opened)
        else:
            opened[0].close()

    def _detach(self) -> None:
        if self._block is not None:
            self._v = None
            self._block.close()
            self._block = None
