"""Named blocks through their file descriptor: short reads instead of faults, identities, OS errors."""

from __future__ import annotations

import errno
import os
import sys
import tracemalloc

import numpy as np
import pytest

from bridges.video import shm_block
from bridges.video import shm_protocol as p
from bridges.video.shm_block import Block, describe_os_error, names_block, unlink
from bridges.video.shm_seqlock import ShmView, init_block

pytestmark = pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="fd access to blocks: Linux")


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


def test_zero_byte_block_is_not_ready_with_the_reason(new_name) -> None:
    name = new_name()
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    with pytest.raises(p.ShmNotReadyError, match="0 bytes"):
        Block(name)


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
