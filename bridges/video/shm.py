"""Shared-memory frame bridge: ShmSource (reader) and ShmSink (writer) for the streamvj protocol.

docs/shared-memory.md is the specification; bridges/video/shm_protocol.py holds the layout and
the seqlock. This module owns the processes' side: creating, attaching, unlinking blocks,
noticing dead or restarted writers, and logging (logger "streamvj.shm").

Blocks are never registered with multiprocessing's resource tracker: on POSIX the tracker
unlinks, by name, every block its process created *or merely attached to* when that process
exits — a reader would destroy the writer's block, and a crashed writer's tracker could
unlink the block a restarted writer just created under the same name. A stale block left
by a crashed writer is replaced by the next writer of that name instead.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Callable

import numpy as np

from bridges.video.shm_protocol import (
    MAX_SLOTS,
    MIN_SLOTS,
    PIXEL_FORMATS,
    STATE_CLOSED,
    STATE_LIVE,
    ShmError,
    ShmHeader,
    ShmHeaderError,
    ShmNameInUseError,
    ShmNotReadyError,
    ShmView,
    init_block,
    layout_for,
    unpack_header,
    validate_name,
)
from engine.errors import ConfigError
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.shm")

RETRY_S = 0.5  # reader: attach attempts and name probes at most this often
STALE_S = 2.0  # a heartbeat older than this, with the writer's pid gone, means the writer is dead
WRITER_RETRY_S = 0.1  # writer: retry creating a block whose old instance is still held open

_WINDOWS = os.name == "nt"
if _WINDOWS:
    from multiprocessing.shared_memory import SharedMemory
else:
    # The primitive SharedMemory itself uses; calling it directly is the only way to attach
    # without the resource tracker before Python 3.13 (which added track=False).
    import _posixshmem


class _Block:
    """One mapping of a named block (never registered with the resource tracker)."""

    def __init__(self, name: str, *, create_size: int = 0, writable: bool = False) -> None:
        self.name = name
        if _WINDOWS:
            # No tracker on Windows. The mapping lives while any process holds a handle.
            self._shm = SharedMemory(name, create=create_size > 0, size=create_size)
            self.buf: memoryview = self._shm.buf
            return
        create = create_size > 0
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR if create else (os.O_RDWR if writable else os.O_RDONLY)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                try:
                    os.ftruncate(fd, create_size)
                except OSError:
                    _posixshmem.shm_unlink("/" + name)
                    raise
            size = os.fstat(fd).st_size
            if size == 0:
                raise ShmNotReadyError(f"block {name!r} has no size yet (writer initialising)")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if create or writable else 0)
            self._mmap = mmap.mmap(fd, size, prot=prot)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap. Every numpy view of `buf` must be gone (ShmView.release) first."""
        if _WINDOWS:
            self._shm.close()
            return
        self.buf.release()
        self._mmap.close()


def _unlink(name: str) -> None:
    """Remove the name (POSIX). On Windows a block disappears when its last handle closes."""
    if not _WINDOWS:
        try:
            _posixshmem.shm_unlink("/" + name)
        except FileNotFoundError:
            log.debug("block %r was already unlinked", name)


def _pid_alive(pid: int) -> bool | None:
    """True/False when this process can tell whether `pid` runs, None when it cannot."""
    if pid <= 0:
        return None
    if pid == os.getpid():
        return True
    if _WINDOWS:
        return _win_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return None
    return True


def _win_pid_alive(pid: int) -> bool | None:
    # os.kill(pid, 0) would TerminateProcess on Windows; ask the kernel instead.
    import ctypes
    from ctypes import wintypes

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    k32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    k32.CloseHandle.argtypes = [wintypes.HANDLE]
    handle = k32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        err = ctypes.get_last_error()
        return True if err == 5 else (False if err == 87 else None)  # ACCESS_DENIED / INVALID_PARAMETER
    try:
        code = wintypes.DWORD()
        if not k32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return None
        return code.value == 259  # STILL_ACTIVE
    finally:
        k32.CloseHandle(handle)


def writer_alive(writer_pid: int, heartbeat_ns: int, state: int, *, pid_decides: bool = False) -> bool:
    """Whether a block's writer should be treated as alive.

    Readers (default): a fresh heartbeat wins, which also covers a writer in another pid
    namespace; with a stale heartbeat the pid decides, and an unknowable pid counts as dead.
    A new writer deciding whether to replace a block passes pid_decides=True: a pid known
    to be gone wins over a fresh heartbeat, so a crashed writer can restart at once.
    """
    if state == STATE_CLOSED:
        return False
    fresh = abs(time.time_ns() - heartbeat_ns) < STALE_S * 1e9
    if fresh and not pid_decides:
        return True
    alive = _pid_alive(writer_pid)
    return alive if alive is not None else fresh


class _Once:
    """Log each distinct message once until reset (a reconnecting peer must not flood logs)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def __call__(self, level: int, msg: str) -> None:
        if msg != self._last:
            self._last = msg
            log.log(level, msg)

    def reset(self) -> None:
        self._last = None


class ShmSink:
    """FrameSink writing rgba_u8 frames into a streamvj shared-memory block.

    The block is created on the first `send` (its size follows the frames) and recreated,
    under the same name with a new generation, when the frame size changes. `close()` marks
    it CLOSED for readers and unlinks it.
    """

    def __init__(self, block_name: str, slots: int = 3) -> None:
        self.block_name = validate_name(block_name)
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ConfigError(f"ShmSink slots must be {MIN_SLOTS} or {MAX_SLOTS}, got {slots}")
        self.name = f"shm:{block_name}"
        self.slots = slots
        self._block: _Block | None = None
        self._view: ShmView | None = None
        self._generation = 0
        self._index = 0
        self._retry_at = 0.0
        self._once = _Once()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    @property
    def generation(self) -> int:
        """The current block's generation id (0 before the first frame)."""
        return self._generation

    def open(self) -> None:
        """Fail early if a live writer already owns the name (the block itself comes with the first frame)."""
        try:
            block = _Block(self.block_name)
        except (FileNotFoundError, ShmNotReadyError):
            return
        try:
            self._check_stale(block)
        finally:
            block.close()

    def send(self, rgba_u8: np.ndarray) -> None:
        frame = check_rgba_u8(rgba_u8, "ShmSink.send")
        view = self._view
        if view is None or frame.shape[:2] != (view.layout.height, view.layout.width):
            view = self._recreate(frame.shape[1], frame.shape[0])
            if view is None:
                return
        self._index += 1
        view.write_frame(frame, self._index, time.time_ns())

    def close(self) -> None:
        self._retire()

    def _recreate(self, width: int, height: int) -> ShmView | None:
        now = time.monotonic()
        if now < self._retry_at:
            return None
        layout = layout_for(width, height, self.slots)
        self._retire()
        try:
            block = _Block(self.block_name, create_size=layout.block_size)
        except FileExistsError:
            self._clear_stale()
            try:
                block = _Block(self.block_name, create_size=layout.block_size)
            except FileExistsError:
                # Windows: readers of the old block still hold it; they let go once they see CLOSED.
                self._retry_at = now + WRITER_RETRY_S
                self._once(logging.INFO, f"block {self.block_name!r} still held by readers; retrying")
                return None
        self._generation = int.from_bytes(os.urandom(8), "little") | 1
        self._block = block
        self._view = init_block(block.buf, layout, self._generation, os.getpid())
        self._index = 0
        self._once.reset()
        log.info("shm %r: writing %dx%d RGBA8, %d slots", self.block_name, width, height, self.slots)
        return self._view

    def _check_stale(self, block: _Block) -> ShmHeader | None:
        """Raise ShmNameInUseError unless the existing block is ours to replace; return its header."""
        try:
            header = unpack_header(block.buf)
        except ShmNotReadyError:
            return None  # a writer died while initialising: stale
        except ShmHeaderError as e:
            raise ShmNameInUseError(
                f"shared-memory block {self.block_name!r} exists and is not a streamvj v1 block ({e}); "
                "pick another name"
            ) from e
        if writer_alive(header.writer_pid, header.heartbeat_ns, header.state, pid_decides=True):
            raise ShmNameInUseError(
                f"shared-memory block {self.block_name!r} is in use by a live writer (pid "
                f"{header.writer_pid}); stop it or pick another name"
            )
        return header

    def _clear_stale(self) -> None:
        try:
            block = _Block(self.block_name, writable=True)
        except (FileNotFoundError, ShmNotReadyError):
            _unlink(self.block_name)
            return
        try:
            header = self._check_stale(block)
            if header is not None:
                log.info("shm %r: replacing the block of dead writer pid %d", self.block_name, header.writer_pid)
                view = ShmView(block.buf, header.layout)
                view.state = STATE_CLOSED  # its readers detach (and, on Windows, free it)
                view.release()
        finally:
            block.close()
        _unlink(self.block_name)

    def _retire(self) -> None:
        view, block = self._view, self._block
        self._view = self._block = None
        if view is None or block is None:
            return
        view.state = STATE_CLOSED
        view.release()
        block.close()
        # Unlink only if the name still means our block: a writer that (wrongly) judged us
        # dead may have replaced it, and its block is not ours to remove.
        try:
            probe = _Block(self.block_name)
        except (FileNotFoundError, ShmNotReadyError):
            return
        try:
            ours = _generation_of(probe) == self._generation
        finally:
            probe.close()
        if ours:
            _unlink(self.block_name)


def _generation_of(block: _Block) -> int:
    try:
        return unpack_header(block.buf).generation
    except ShmError:
        return 0


class ShmSource:
    """FrameSource reading the newest frame from a streamvj shared-memory block.

    `read_latest()` copies the newest frame (seqlock-checked, never torn) into one of
    `out_buffers` preallocated arrays used in turn: a returned array stays untouched until
    `out_buffers - 1` newer frames have been returned (default 2: keep using a frame while
    the next one is read). Copy it to keep it longer, or pass `out_buffers=0` for a fresh
    array per frame. The writer never writes these arrays; they are C-contiguous rgba_u8.

    A missing block, a dead writer (CLOSED, or stale heartbeat and pid gone) or a bad
    header is logged once and retried at most every `retry_s`; a restarted writer (new
    generation under the same name) is picked up without recreating the source.
    """

    def __init__(self, block_name: str, *, out_buffers: int = 2, retry_s: float = RETRY_S) -> None:
        self.block_name = validate_name(block_name)
        if out_buffers < 0:
            raise ConfigError(f"ShmSource out_buffers must be >= 0, got {out_buffers}")
        self.name = f"shm:{block_name}"
        self.retry_s = retry_s
        self.last_index = 0  # the writer's frame index of the last frame returned
        self.last_timestamp_ns = 0  # the writer's time.time_ns() when it wrote that frame
        self.generation = 0  # the attached block's generation (0: none yet)
        self._n_out = out_buffers
        # The runtime skips its own copy into a pooled buffer for sources that hand over a
        # fresh array per frame (engine/realtime/runtime.py, `frames_owned`).
        self.frames_owned = out_buffers == 0
        self._outs: list[np.ndarray] = []
        self._k = 0
        self._block: _Block | None = None
        self._view: ShmView | None = None
        self._next_try = 0.0
        self._last_new = 0.0
        self._dead: tuple[int, int] | None = None  # (generation, heartbeat) of a writer seen dead
        self._once = _Once()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    @property
    def connected(self) -> bool:
        return self._view is not None

    def open(self) -> None:
        self._try_attach(time.monotonic())

    def close(self) -> None:
        self._detach()

    def read_latest(self) -> np.ndarray | None:
        return self._read(self._out)

    def read_latest_into(self, acquire: Callable[[tuple[int, int, int]], np.ndarray]) -> np.ndarray | None:
        """Like read_latest, but copies the new frame into `acquire(shape)` (the caller's buffer).

        Saves the runtime a second copy per frame. `acquire` is only called when a new frame
        is there; a torn read leaves that buffer unfilled and returns None.
        """
        return self._read(lambda view: acquire((view.layout.height, view.layout.width, 4)))

    def _read(self, out_for: Callable[[ShmView], np.ndarray]) -> np.ndarray | None:
        now = time.monotonic()
        view = self._view
        if view is None:
            if now < self._next_try:
                return None
            view = self._try_attach(now)
            if view is None:
                return None
        if view.state == STATE_CLOSED:
            log.info("shm %r: block was closed (writer stopped, resized or was replaced)", self.block_name)
            self._detach()
            view = self._try_attach(now)  # a resizing writer has usually made the new one already
            if view is None:
                return None
        if view.frame_counter > self.last_index:
            out = out_for(view)
            try:
                got = view.read_frame(out, self.last_index)
            except ShmHeaderError as e:
                self._once(logging.WARNING, f"shm {self.block_name!r}: corrupt block ({e}); detaching")
                self._detach()
                return None
            if got is not None:
                self.last_index, self.last_timestamp_ns = got
                self._last_new = now
                self._k += 1
                return out
        if now - self._last_new >= self.retry_s and now >= self._next_try:
            self._next_try = now + self.retry_s
            self._probe(view)
        return None

    def _out(self, view: ShmView) -> np.ndarray:
        shape = (view.layout.height, view.layout.width, 4)
        if self._n_out == 0:
            return np.empty(shape, np.uint8)
        if not self._outs or self._outs[0].shape != shape:
            self._outs = [np.empty(shape, np.uint8) for _ in range(self._n_out)]
        return self._outs[self._k % self._n_out]

    def _open_named(self) -> tuple[_Block, ShmHeader] | None:
        """Open the name and parse its header; log (once) and return None when unusable."""
        try:
            block = _Block(self.block_name)
        except FileNotFoundError:
            self._once(logging.INFO, f"shm {self.block_name!r}: no block yet; waiting for a writer")
            return None
        except ShmNotReadyError:
            return None
        except OSError as e:
            self._once(logging.WARNING, f"shm {self.block_name!r}: cannot open block ({e})")
            return None
        try:
            return block, unpack_header(block.buf)
        except ShmNotReadyError:
            block.close()
        except ShmError as e:
            block.close()
            self._once(logging.WARNING, f"shm {self.block_name!r}: unusable block: {e}")
        return None

    def _try_attach(self, now: float) -> ShmView | None:
        self._next_try = now + self.retry_s
        opened = self._open_named()
        if opened is None:
            return None
        block, header = opened
        if header.state == STATE_CLOSED or (header.generation, header.heartbeat_ns) == self._dead:
            block.close()
            return None
        if not writer_alive(header.writer_pid, header.heartbeat_ns, header.state):
            block.close()
            self._dead = (header.generation, header.heartbeat_ns)
            self._once(
                logging.INFO,
                f"shm {self.block_name!r}: block left by dead writer pid {header.writer_pid}; waiting for a new writer",
            )
            return None
        return self._attach(block, header, now)

    def _attach(self, block: _Block, header: ShmHeader, now: float) -> ShmView:
        lay = header.layout
        if header.generation != self.generation:
            self.last_index = 0
        self.generation = header.generation
        self._block, self._view = block, ShmView(block.buf, lay)
        self._last_new = now
        self._dead = None
        self._once.reset()
        log.info(
            "shm %r: attached (%dx%d %s, %d slots, writer pid %d)",
            self.block_name, lay.width, lay.height, PIXEL_FORMATS[lay.pixel_format], lay.slot_count,
            header.writer_pid,
        )
        return self._view

    def _probe(self, view: ShmView) -> None:
        """Idle for a while: has a new writer taken over the name, or has ours died?"""
        opened = self._open_named()
        if opened is not None:
            block, header = opened
            if (
                header.generation != view.generation
                and header.state == STATE_LIVE
                and writer_alive(header.writer_pid, header.heartbeat_ns, header.state)
            ):
                log.info("shm %r: a new writer took over the name", self.block_name)
                self._detach()
                self._attach(block, header, time.monotonic())
                return
            block.close()
        if not writer_alive(view.writer_pid, view.heartbeat_ns, view.state):
            self._dead = (view.generation, view.heartbeat_ns)
            log.warning("shm %r: writer pid %d is gone; waiting for a new writer", self.block_name, view.writer_pid)
            self._detach()

    def _detach(self) -> None:
        view, block = self._view, self._block
        self._view = self._block = None
        if view is not None:
            view.release()
        if block is not None:
            block.close()


__all__ = ["ShmSink", "ShmSource", "writer_alive"]
