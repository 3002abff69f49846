"""A reader facing a writer that breaks the rules: no crash, one line per fault, a stall said once.

The crash cases run the reader in its own process, so a SIGBUS shows up as returncode -7
instead of taking pytest down. The silent cases run in-process with a hand-moved clock.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

from bridges.video import shm_block
from bridges.video import shm_protocol as p
from bridges.video.shm import ShmSink, ShmSource
from bridges.video.shm_faults import Once, Stall
from bridges.video.shm_seqlock import ShmView, init_block
from tests.bridges.video.test_shm import WAIT_S, Proc, StepClock, raw_block, wait_for

pytestmark = pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="blocks that can shrink: Linux")

# The engine's side: a ShmSource polling like the runtime's source thread, its log on stdout.
# Prints "marker M" each time the alpha marker of the frames changes; exits 0 after `until`.
ENGINE_READER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
from bridges.video.shm import ShmSource
name, until = sys.argv[1], int(sys.argv[2])
src = ShmSource(name, retry_s=0.05)
src.open()
last, deadline = None, time.monotonic() + 60
while time.monotonic() < deadline:
    f = src.read_latest()
    if f is None:
        time.sleep(0.002)
        continue
    if int(f[0, 0, 3]) != last:
        last = int(f[0, 0, 3])
        print(f"marker {last}", flush=True)
        if last == until:
            break
src.close()
print("done", flush=True)
"""


def _lines_until(proc: Proc, want: str) -> list[str]:
    seen: list[str] = []
    while not any(want in line for line in seen):
        seen.append(proc.line())
    return seen


def _fd_of(name: str) -> int:
    return os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_NOFOLLOW)


def _next_frame_writes(view: ShmView) -> list[tuple[bytes, int]]:
    """What a writer that kept going would publish next: the next slot's seq/index, latest, counter."""
    view.refresh()
    n, slot = view.frame_counter + 1, (view.latest_slot + 1) % view.layout.slot_count
    entry = p.SLOT_TABLE_OFFSET + p.SLOT_ENTRY_SIZE * slot
    return [
        (np.array([view.slot_seq(slot) + 2, n, 1], "<u8").tobytes(), entry),
        (np.array([slot], "<u8").tobytes(), 64),
        (np.array([n], "<u8").tobytes(), 56),
    ]


@pytest.mark.parametrize("fault", ["truncated", "naive_restart_smaller", "naive_restart_larger"])
def test_engine_reader_survives_a_shrunk_input_block_and_recovers(new_name, procs, fault) -> None:
    name = new_name()
    sink = ShmSink(name)
    big = np.zeros((120, 160, 4), np.uint8)
    big[..., 3] = 1
    sink.send(big)
    reader = Proc(ENGINE_READER, name, 2)
    procs.append(reader)
    wait_for(lambda: _send_and_check(sink, big, reader, "marker 1"), "the engine reader's first frame")
    fd = _fd_of(name)
    try:
        if fault == "truncated":  # a peer truncates the block, then a frame is announced
            writes = _next_frame_writes(sink._view)
            os.ftruncate(fd, 4096)
            for data, offset in writes:
                os.pwrite(fd, data, offset)
            words = "shrank to 4096 bytes while in use"
        else:  # a writer restarts, reuses the name, resizes it in place and writes a new header
            side = 8 if fault == "naive_restart_smaller" else 200
            lay = p.layout_for(side, side, 3)
            os.ftruncate(fd, lay.block_size)
            naive = init_block(shm_block.FdIO(os.dup(fd)), lay, generation=12345, writer_pid=os.getpid())
            naive.write_frame(np.full((side, side, 4), 7, np.uint8), 1, 1)
            naive.io.release()
            words = f"shrank to {lay.block_size} bytes" if side == 8 else "rewritten while in use"
        seen = _lines_until(reader, words)
        assert reader.popen.poll() is None, f"the engine side died ({reader.popen.returncode}): {seen}"
    finally:
        os.close(fd)
    big[..., 3] = 2
    wait_for(lambda: _send_and_check(sink, big, reader, "marker 2", seen), "frames from the replaced block")
    assert reader.line() == "done"
    assert reader.popen.wait(timeout=WAIT_S) == 0  # -7 was SIGBUS
    faults = [line for line in seen if words in line]
    assert len(faults) == 1 and faults[0].startswith("WARNING"), seen
    assert sum(line.startswith("WARNING") for line in seen) == 1, seen  # the fault, said once
    sink.close()


def _send_and_check(sink: ShmSink, frame: np.ndarray, proc: Proc, want: str, seen: list[str] | None = None) -> bool:
    sink.send(frame)
    while not proc.lines.empty():
        line = proc.lines.get()
        if seen is not None:
            seen.append(line)
        if want in line:
            return True
    return False


def test_symlink_at_the_source_name_is_one_warning_then_retried(new_name, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    link = f"/dev/shm/{name}"
    os.symlink(tmp_path / "elsewhere", link)
    clock = StepClock()
    src = ShmSource(name, retry_s=0.5, clock=clock)
    try:
        src.open()
        for _ in range(5):
            clock.advance(0.5)
            assert src.read_latest() is None
        hits = [r for r in caplog.records if "is a symbolic link" in r.getMessage()]
        assert len(hits) == 1 and hits[0].levelno == logging.WARNING
    finally:
        os.unlink(link)
    sink = ShmSink(name)
    sink.send(np.full((4, 4, 4), 5, np.uint8))
    clock.advance(0.5)
    got = src.read_latest()
    assert got is not None and (got == 5).all()
    sink.close()
    src.close()


def _silent(new_name, caplog, make_block, grace_s: float = 1.5):
    """Poll a source over a stuck block with a hand-moved clock; return its warnings."""
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    keep = make_block(name)
    clock = StepClock()
    src = ShmSource(name, retry_s=0.5, grace_s=grace_s, clock=clock)
    src.open()
    warnings = []
    try:
        for step in range(12):  # 0 .. 2.75 s in quarter seconds
            assert src.read_latest() is None
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            if step * 0.25 < grace_s - 0.25:
                assert not warnings, f"said too early: {warnings}"
            clock.advance(0.25)
    finally:
        src.close()
        for thing in keep:
            thing.close()
    return warnings


def _zero_block(name: str):
    return [shm_block.Block(name, create_size=4096)]


def _init_block(name: str):
    lay = p.layout_for(8, 8, 3)
    return [raw_block(name, p.pack_header(lay, 3, os.getpid(), p.STATE_INIT), lay.block_size)]


def _empty_block(name: str):
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)

    class Fd:
        def close(self) -> None:
            os.close(fd)

    return [Fd()]


def _published(name: str, mutate) -> list:
    sink = ShmSink(name)
    sink.send(np.zeros((8, 8, 4), np.uint8))
    block = shm_block.Block(name, writable=True)
    mutate(block, sink._view.layout)
    return [block, sink]


def _odd_seqs(block, lay) -> None:
    for slot in range(lay.slot_count):  # a writer that died mid-write in every slot
        block.io.write_from(p.SLOT_TABLE_OFFSET + p.SLOT_ENTRY_SIZE * slot, np.array([7], "<u8"))
    block.io.write_from(56, np.array([5], "<u8"))


def _index_zero(block, lay) -> None:
    block.io.write_from(p.SLOT_TABLE_OFFSET + 8, np.array([0], "<u8"))  # frame_index of slot 0
    block.io.write_from(56, np.array([1], "<u8"))


@pytest.mark.parametrize(
    ("make_block", "words"),
    [
        (_empty_block, "the block is 0 bytes"),
        (_zero_block, "the header is all zero"),
        (_init_block, "the header is in state INIT"),
        (lambda n: _published(n, _odd_seqs), "stays mid-write (its seq 7 is odd)"),
        (lambda n: _published(n, _index_zero), "holds frame_index 0"),
    ],
    ids=["zero_bytes", "zero_header", "stuck_init", "seq_odd", "frame_index_0"],
)
def test_silent_no_output_states_are_said_once_after_the_grace(new_name, caplog, make_block, words) -> None:
    warnings = _silent(new_name, caplog, make_block)
    assert len(warnings) == 1, warnings
    assert words in warnings[0] and "no frames for 1.5 s" in warnings[0]


def test_magic_zeroed_in_an_attached_block_is_said_then_followed(new_name, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    sink = ShmSink(name)
    sink.send(np.zeros((8, 8, 4), np.uint8))
    clock = StepClock()
    src = ShmSource(name, retry_s=0.5, clock=clock)
    src.open()
    assert src.read_latest() is not None
    block = shm_block.Block(name, writable=True)
    block.io.write_from(0, np.zeros(8, np.uint8))  # someone zeroes the magic of the live block
    for _ in range(12):
        assert src.read_latest() is None
        clock.advance(0.25)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "magic changed to" in said[0] and "docs/shared-memory.md" in said[0]
    block.close()
    sink.send(np.ones((8, 8, 4), np.uint8))  # the writer notices and replaces its block
    clock.advance(0.5)
    got = src.read_latest()
    assert got is not None and (got == 1).all()
    assert sum("magic changed" in r.getMessage() for r in caplog.records) == 2  # the sink said it too, once
    sink.close()
    src.close()


def test_stall_reports_once_per_episode_and_the_recovery() -> None:
    stall = Stall("x", grace_s=1.0)
    calls: list[str] = []

    def describe() -> str:
        calls.append("described")
        return "stuck"

    stall.problem(10.0, describe)
    stall.problem(10.9, describe)
    assert calls == []  # within the grace: nothing said, nothing even formatted
    stall.problem(11.0, describe)
    stall.problem(15.0, describe)
    assert calls == ["described"]
    stall.frame()
    stall.problem(20.0, describe)
    stall.clear()  # a healthy poll restarts the grace
    stall.problem(20.8, describe)
    stall.problem(21.5, describe)
    assert calls == ["described"]


def test_once_logs_each_message_once_until_reset(caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    once = Once()
    for _ in range(3):
        once(logging.WARNING, "a")
        once(logging.WARNING, "b")
    assert [r.getMessage() for r in caplog.records] == ["a", "b"]
    once.reset()
    once(logging.WARNING, "a")
    assert len(caplog.records) == 3
