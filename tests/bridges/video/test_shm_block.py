"""Named blocks as each OS keeps them: through a descriptor on Linux (short reads instead of faults,
identities, OS errors), mapped on macOS, and Windows' named mappings (modelled here: they live while
any process holds a handle)."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sys
import time
import tracemalloc

import numpy as np
import pytest

from bridges.video import shm_block, shm_sink
from bridges.video import shm_protocol as p
from bridges.video.shm import ShmSink, ShmSource
from bridges.video.shm_block import Block, describe_os_error, names_block, unlink
from bridges.video.shm_seqlock import BufferIO, ShmView, init_block

fd_blocks = pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="fd access to blocks: Linux")


@fd_blocks
def test_fd_reads_past_a_truncation_come_back_short_not_as_sigbus(new_name) -> None:
    name = new_name()
    block = Block(name, create_size=1 << 16)
    try:
        assert isinstance(block.io, shm_block.FdIO) and block.io.size() == 1 << 16
        data = np.arange(1 << 16, dtype=np.uint8)
        assert block.io.write_from(0, data) == data.nbytes
        os.ftruncate(block.io.fd, 4096)  # what a misbehaving peer does
        out = np.zeros(1 << 16, np.uint8)
        assert block.io.read_into(0, out) == 4096 and (out[:4096] == data[:4096]).all()
        assert block.io.read_into(8192, out[:16]) == 0
    finally:
        block.close()


@fd_blocks
def test_zero_byte_block_is_not_ready_with_the_reason(new_name) -> None:
    name = new_name()
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    with pytest.raises(p.ShmNotReadyError, match="0 bytes"):
        Block(name)


@fd_blocks
def test_identity_tells_a_replaced_block_from_ours(new_name) -> None:
    name = new_name()
    first = Block(name, create_size=4096)
    assert names_block(name, first.ident)
    unlink(name)
    assert not names_block(name, first.ident)
    second = Block(name, create_size=4096)
    assert not names_block(name, first.ident) and names_block(name, second.ident)
    first.close()
    second.close()


@fd_blocks
@pytest.mark.parametrize(
    ("err", "words"),
    [
        (errno.ELOOP, "is a symbolic link"),
        (errno.EACCES, "belongs to another user"),
        (errno.EISDIR, "is a directory"),
        (errno.ENOSPC, "no space left"),
        (errno.EIO, "cannot use /dev/shm/x: Input/output error"),
    ],
)
def test_os_errors_are_described_in_one_line(err: int, words: str) -> None:
    message = describe_os_error("x", OSError(err, os.strerror(err)))
    assert words in message and "\n" not in message


@fd_blocks
def test_symlinked_name_is_refused_by_the_os_not_followed(new_name, tmp_path) -> None:
    name = new_name()
    target = tmp_path / "target"
    target.write_bytes(bytes(4096))
    os.symlink(target, f"/dev/shm/{name}")
    try:
        with pytest.raises(OSError) as info:
            Block(name)
        assert info.value.errno == errno.ELOOP
    finally:
        os.unlink(f"/dev/shm/{name}")


@fd_blocks
def test_frame_write_and_read_allocate_nothing_per_frame(new_name) -> None:
    name = new_name()
    layout = p.layout_for(256, 256)
    block = Block(name, create_size=layout.block_size)
    writer = init_block(block.io, layout, 5, os.getpid())
    reader = ShmView(block.io, layout)
    frame = np.full((256, 256, 4), 9, np.uint8)
    out = np.empty_like(frame)

    def frames(first: int, count: int) -> None:
        for k in range(first, first + count):
            writer.write_frame(frame, k, k)
            assert reader.read_frame(out, k - 1) == (k, k)

    try:
        frames(1, 5)  # warm-up: first-call caches
        tracemalloc.start()
        frames(6, 200)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        block.close()
    assert peak < 16 * 1024, f"{peak} bytes allocated over 200 frames of {frame.nbytes} bytes"


# ---- Windows' named mappings, modelled here -------------------------------------------------------------


class WinMappings:
    """Windows named file mappings as multiprocessing.shared_memory sees them, one file per name:
    every handle maps the memory with its own mmap object; a name that exists cannot be created
    again (ERROR_ALREADY_EXISTS); the name vanishes when its last handle closes (there is no
    unlink); an opener sees the size rounded up to whole pages (VirtualQuerySize); a backslash
    in a name is a namespace path ("Local\\\\x") that does not exist."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.handles: dict[str, int] = {}

    def __call__(self, name: str, create: bool = False, size: int = 0) -> FakeWinSharedMemory:
        return FakeWinSharedMemory(self, name, create, size)


class FakeWinSharedMemory:
    def __init__(self, world: WinMappings, name: str, create: bool, size: int) -> None:
        if "\\" in name:
            raise FileNotFoundError(errno.ENOENT, "The system cannot find the path specified", name)
        path = world.folder / name
        if create:
            if name in world.handles:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
            pages = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            path.write_bytes(bytes(pages))
            length = size
        elif name not in world.handles:
            raise FileNotFoundError(errno.ENOENT, "The system cannot find the file specified", name)
        else:
            length = path.stat().st_size
        with open(path, "r+b") as f:
            self._mmap = mmap.mmap(f.fileno(), length)
        self._buf: memoryview | None = memoryview(self._mmap)
        self.world, self.name = world, name
        world.handles[name] = world.handles.get(name, 0) + 1

    @property
    def buf(self) -> memoryview:
        assert self._buf is not None
        return self._buf

    def close(self) -> None:
        # What CPython's SharedMemory.close does: a view still exported makes mmap.close raise.
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        self._mmap.close()
        self.world.handles[self.name] -= 1
        if self.world.handles[self.name] == 0:
            del self.world.handles[self.name]
            (self.world.folder / self.name).unlink()


@pytest.fixture
def windows(monkeypatch, tmp_path) -> WinMappings:
    """shm_block on Windows: named mappings modelled by WinMappings; only this process's pid lives."""
    mappings = WinMappings(tmp_path)
    monkeypatch.setattr(shm_block, "_WINDOWS", True)
    monkeypatch.setattr(shm_block, "SharedMemory", mappings, raising=False)
    monkeypatch.setattr(shm_block, "_win_pid_alive", lambda pid: pid == os.getpid())
    monkeypatch.setattr(shm_sink, "WRITER_RETRY_S", 0.0)  # the test steps the retries itself
    return mappings


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 4), value, np.uint8)


def test_windows_block_lives_while_any_handle_is_open(windows) -> None:
    layout = p.layout_for(8, 8)
    writer = Block("svj_win", create_size=layout.block_size)
    reader = Block("svj_win")
    assert reader.io.size() >= layout.block_size and reader.io.size() % mmap.PAGESIZE == 0
    view = init_block(writer.io, layout, 3, os.getpid())
    view.write_frame(frame(8, 8, 7), 1, 1)
    writer.close()  # the writer's handle goes; the reader's keeps the mapping
    assert "svj_win" in windows.handles
    out = np.empty((8, 8, 4), np.uint8)
    assert ShmView(reader.io, layout).read_frame(out, 0) == (1, 1) and (out == 7).all()
    unlink("svj_win")  # nothing to do on Windows, and no error
    reader.close()
    assert windows.handles == {}
    with pytest.raises(FileNotFoundError):
        Block("svj_win")
    assert not names_block("svj_win", None)


def test_windows_names_never_reach_the_os_with_a_namespace_separator() -> None:
    for bad in ("Local\\streamvj", "Global\\streamvj", "a/b", "C:streamvj"):
        with pytest.raises(p.ShmNameError):
            p.validate_name(bad, platform="win32")


def test_windows_resize_waits_for_readers_to_let_go(windows, logged, caplog) -> None:
    """A new block under the same name cannot be created while a reader holds the old one: the
    sink marks the old CLOSED, the reader lets go, and the sink's retry creates the new one."""
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    clock = Clock()
    sink, src = ShmSink("svj_resize"), ShmSource("svj_resize", clock=clock)
    sink.open()
    src.open()
    try:
        sink.send(frame(8, 8, 1))
        clock.t += 1
        assert (src.read_latest() == 1).all()
        sink.send(frame(16, 16, 2))  # the reader still holds the 8x8 block
        assert logged("still held by readers; retrying") and not logged("dead writer")  # its own old block
        clock.t += 1
        assert src.read_latest() is None and not src.connected  # saw CLOSED, let go: the name is free
        assert windows.handles == {}
        sink.send(frame(16, 16, 3))
        clock.t += 1
        got = src.read_latest()
        assert got is not None and got.shape == (16, 16, 4) and (got == 3).all()
        assert src.generation == sink.generation != 0
    finally:
        src.close()
        sink.close()
    assert windows.handles == {}


def test_windows_new_writer_replaces_a_dead_writers_block_held_by_a_reader(windows, logged, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    dead_pid = 4_000_000_000  # no such process (only ours lives in this model)
    layout = p.layout_for(8, 8)
    crashed = Block("svj_dead", create_size=layout.block_size)
    init_block(crashed.io, layout, 5, dead_pid).write_frame(frame(8, 8, 9), 1, time.time_ns())
    clock = Clock()
    src = ShmSource("svj_dead", clock=clock)
    src.open()
    assert (src.read_latest() == 9).all()  # a fresh heartbeat: a reader trusts it
    crashed.close()  # the writer died: Windows closed its handle, the reader's keeps the block
    sink = ShmSink("svj_dead")
    try:
        sink.open()  # the pid is gone: not "in use by a live writer"
        sink.send(frame(8, 8, 4))
        assert logged("replacing the block of dead writer pid 4000000000")
        clock.t += 1
        assert src.read_latest() is None  # CLOSED by the new writer: let go
        sink.send(frame(8, 8, 5))
        clock.t += 1
        assert (src.read_latest() == 5).all() and src.generation == sink.generation
    finally:
        src.close()
        sink.close()
    assert windows.handles == {}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shared memory")
def test_mapped_posix_blocks_as_on_macos(new_name, monkeypatch) -> None:
    """macOS maps its blocks (its shm objects cannot be read through a descriptor): the same path,
    forced on here, round-trips frames and closes without a view left exported."""
    monkeypatch.setattr(shm_block, "_MAPPED", True)
    name = new_name()
    clock = Clock()
    sink, src = ShmSink(name), ShmSource(name, clock=clock)
    sink.open()
    src.open()
    try:
        sink.send(frame(8, 8, 6))
        clock.t += 1
        assert (src.read_latest() == 6).all()
        assert isinstance(src._block.io, BufferIO)  # noqa: SLF001 - which path ran is the point
    finally:
        src.close()
        sink.close()
    with pytest.raises(FileNotFoundError):
        Block(name)
