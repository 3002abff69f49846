"""Named shared-memory blocks as the OS sees them: open, create, unlink, and whether a writer lives.

On Linux (and other POSIX systems except macOS) a block is kept as an open file descriptor
and read and written with preadv/pwritev (`FdIO`), never memory-mapped. A mapping of a
file that another process truncates turns the next access to a vanished page into SIGBUS,
which kills the whole engine with no log line; through the descriptor the same access is a
short read (or a write that grows the file back), which shm_seqlock.py turns into a
ShmTruncatedError. On macOS a POSIX shm object cannot be read or written through its
descriptor and cannot be resized once sized, so a mapping is both necessary and safe
there; on Windows a mapped section cannot shrink either. Both use `BufferIO`.

Blocks are never registered with multiprocessing's resource tracker: on POSIX the tracker
unlinks, by name, every block its process created *or merely attached to* when that process
exits — a reader would destroy the writer's block, and a crashed writer's tracker could
unlink the block a restarted writer just created under the same name.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sys
import time

import numpy as np

from bridges.video.shm_protocol import STATE_CLOSED, ShmNotReadyError
from bridges.video.shm_seqlock import BlockIO, BufferIO

log = logging.getLogger("streamvj.shm")

STALE_S = 2.0  # a heartbeat older than this, with the writer's pid gone, means the writer is dead

_WINDOWS = os.name == "nt"
_MAPPED = _WINDOWS or sys.platform == "darwin"  # blocks that cannot shrink: mapped (see above)
if _WINDOWS:
    from multiprocessing.shared_memory import SharedMemory
else:
    # The primitive SharedMemory itself uses; calling it directly is the only way to attach
    # without the resource tracker before Python 3.13 (which added track=False).
    import _posixshmem


class FdIO:
    """BlockIO through a file descriptor: an access past the end comes back short, never faults."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_into(self, offset: int, dst: np.ndarray) -> int:
        want = dst.nbytes
        got = os.preadv(self.fd, [dst], offset)
        while 0 < got < want:  # a regular file reads short only at its end; loop for the rare rest
            more = os.preadv(self.fd, [dst.reshape(-1).view(np.uint8)[got:]], offset + got)
            if more <= 0:
                break
            got += more
        return got

    def write_from(self, offset: int, src: np.ndarray) -> int:
        want = src.nbytes
        done = os.pwritev(self.fd, [src], offset)
        while 0 < done < want:
            more = os.pwritev(self.fd, [src.reshape(-1).view(np.uint8)[done:]], offset + done)
            if more <= 0:
                break
            done += more
        return done

    def release(self) -> None:
        os.close(self.fd)


def _shm_path(name: str) -> str:
    return f"/dev/shm/{name}" if sys.platform.startswith("linux") else f"shared-memory name {name!r}"


def describe_os_error(name: str, exc: OSError) -> str:
    """One line saying what is wrong with the name `name` and what to do."""
    where = _shm_path(name)
    if exc.errno == errno.ELOOP:
        return f"{where} is a symbolic link; streamvj never follows links for shared memory: remove it or pick another name"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where} belongs to another user or is not readable and writable by this one: remove it or pick another name"
    if exc.errno == errno.EISDIR:
        return f"{where} is a directory, not a shared-memory block: remove it or pick another name"
    if exc.errno == errno.ENOSPC:
        return f"no space left for {where} (shared memory is full): free some or use smaller frames"
    return f"cannot use {where}: {exc.strerror or exc}"


class Block:
    """One open named block: `io` reads and writes it, `ident` says which file it is (POSIX)."""

    def __init__(self, name: str, *, create_size: int = 0, writable: bool = False) -> None:
        self.name = name
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino): the same name may be a new block later
        self.io: BlockIO
        if _WINDOWS:
            # No tracker on Windows. The mapping lives while any process holds a handle.
            self._shm = SharedMemory(name, create=create_size > 0, size=create_size)
            self.io = BufferIO(self._shm.buf)
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
            st = os.fstat(fd)
            if st.st_size == 0:
                raise ShmNotReadyError("the block is 0 bytes (its writer created the name but never sized it)")
            self.ident = (st.st_dev, st.st_ino)
            if not _MAPPED:
                self.io = FdIO(fd)
                return
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if create or writable else 0)
            self._mmap = mmap.mmap(fd, st.st_size, prot=prot)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the mapping keeps the block
        self.io = BufferIO(memoryview(self._mmap))

    def close(self) -> None:
        self.io.release()
        if _WINDOWS:
            self._shm.close()
        elif _MAPPED:
            self._mmap.close()


def unlink(name: str) -> None:
    """Remove the name (POSIX). On Windows a block disappears when its last handle closes."""
    if not _WINDOWS:
        try:
            _posixshmem.shm_unlink("/" + name)
        except FileNotFoundError:
            log.debug("block %r was already unlinked", name)


def names_block(name: str, ident: tuple[int, int] | None) -> bool:
    """Whether `name` still refers to the block `ident` (False when gone or another block)."""
    if ident is None or _WINDOWS:
        return False
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino) == ident


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
