"""ShmSink / ShmSource with real processes and real shared memory.

Writers and readers in other processes are plain `python -c` subprocesses (their own
interpreter and resource tracker, like TouchDesigner would be). Every wait is for a
condition, with a generous deadline (WAIT_S), never a measurement or a fixed sleep.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from bridges.video import shm_block, shm_sink
from bridges.video import shm_protocol as p
from bridges.video.shm import ShmSink, ShmSource
from engine.errors import ConfigError, FrameError
from tests.paths import REPO as ROOT
from tests.waiting import wait_for

# Frame k of a writer: R,G,B = (x + 3y + k) % 256, A = marker; marker -1: every byte = k % 251.
SINK_WRITER = """
import sys, time
import numpy as np
from bridges.video.shm import ShmSink
name, w, h, marker, period, slots = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5]), int(sys.argv[6])
yy, xx = np.mgrid[0:h, 0:w]
base = ((xx + 3 * yy) % 256).astype(np.uint16)
frame = np.empty((h, w, 4), np.uint8)
sink = ShmSink(name, slots=slots)
sink.open()
k, deadline = 0, time.monotonic() + 30
while time.monotonic() < deadline:
    k += 1
    if marker < 0:
        frame.fill(k % 251)
    else:
        frame[..., :3] = ((base + k) % 256)[..., None]
        frame[..., 3] = marker
    sink.send(frame)
    if k == 1:
        print("ready", flush=True)  # the block exists now
    if period:
        time.sleep(period)
sink.close()
"""

WAIT_S = 30.0  # deadline for any condition; generous, so a loaded 2-core machine still passes

# Reads `want` frames whose R channel is uniformly index % 256, prints them as JSON (with
# the pid of its resource tracker, if one started), then exits (mode "exit") or waits to
# be killed (mode "hang").
SOURCE_READER = """
import json, sys, threading, time
from multiprocessing import resource_tracker
from bridges.video.shm import ShmSource
name, want, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
src = ShmSource(name, retry_s=0.05)
src.open()
seen, ok, shape = [], True, None
deadline = time.monotonic() + 30
while len(seen) < want and time.monotonic() < deadline:
    f = src.read_latest()
    if f is None:
        time.sleep(0.001)
        continue
    seen.append(src.last_index)
    ok = ok and bool((f[..., 0] == src.last_index % 256).all())
    shape = list(f.shape)
tracker = resource_tracker._resource_tracker._pid
print(json.dumps({"indices": seen, "ok": ok, "shape": shape, "tracker": tracker}), flush=True)
if mode == "hang":
    threading.Event().wait()  # a reader that never lets go: blocked until the test kills it
src.close()
"""


class Proc:
    """A python subprocess whose stdout lines arrive on a queue."""

    def __init__(self, code: str, *args: object, isolated: bool = False) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        flags = ["-I"] if isolated else []  # -I: neither PYTHONPATH nor the cwd is importable
        self.popen = subprocess.Popen(
            [sys.executable, *flags, "-c", code, *map(str, args)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line.strip())

    def line(self, timeout: float = WAIT_S) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"no output from subprocess; stderr:\n{self.popen.stderr.read()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # SIGKILL on POSIX: no cleanup runs
        self.popen.wait(timeout=WAIT_S)

def pid_gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for_tracker_exit(result: dict) -> None:
    """A reader's resource tracker (if it had one) unlinks its blocks as it exits: wait for that."""
    wait_for(lambda: pid_gone(result.get("tracker")), "the reader's resource tracker to exit")


def raw_block(name: str, head: bytes, size: int = 1 << 16) -> shm_block.Block:
    """A block written by hand (no ShmSink): for headers no honest writer makes."""
    block = shm_block.Block(name, create_size=size)
    block.io.write_from(0, np.frombuffer(head, np.uint8))
    return block


def read_u32(block: shm_block.Block, offset: int) -> int:
    word = np.zeros(1, "<u4")
    block.io.read_into(offset, word)
    return int(word[0])


def expected(h: int, w: int, k: int, marker: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = ((xx + 3 * yy + k) % 256)[..., None]
    out[..., 3] = marker
    return out


def poll(src: ShmSource, until: Callable[[np.ndarray], bool], timeout: float = WAIT_S) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = src.read_latest()
        if frame is not None and until(frame):
            return frame
        time.sleep(0.002)
    raise AssertionError(f"no matching frame from {src.name} within {timeout} s")


def start_writer(procs: list[Proc], name: str, w: int, h: int, marker: int, period: float = 0.004,
                 slots: int = 3) -> Proc:
    proc = Proc(SINK_WRITER, name, w, h, marker, period, slots)
    procs.append(proc)
    assert proc.line() == "ready"
    return proc


def test_is_available_and_protocol_conformance() -> None:
    from engine.realtime.frames import FrameSink, FrameSource

    assert ShmSource.is_available() == (True, "") and ShmSink.is_available() == (True, "")
    assert isinstance(ShmSource("a"), FrameSource) and isinstance(ShmSink("a"), FrameSink)


def test_writer_process_to_source(new_name, procs) -> None:
    name = new_name()
    start_writer(procs, name, 96, 64, marker=5)
    src = ShmSource(name)
    src.open()
    indices, stamps = [], []
    deadline = time.monotonic() + WAIT_S
    while len(indices) < 20 and time.monotonic() < deadline:
        frame = src.read_latest()
        if frame is None:
            time.sleep(0.001)
            continue
        assert frame.shape == (64, 96, 4) and frame.dtype == np.uint8 and frame.flags.c_contiguous
        np.testing.assert_array_equal(frame, expected(64, 96, src.last_index, 5))
        indices.append(src.last_index)
        stamps.append(src.last_timestamp_ns)
    src.close()
    assert len(indices) == 20
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
    assert abs(time.time_ns() - stamps[-1]) < 60e9  # writer's wall clock, same machine


def _send_until(sink: ShmSink, proc: Proc, h: int, w: int) -> tuple[str, int]:
    """Send frames whose R channel is index % 256 until the reader process prints."""
    frame = np.zeros((h, w, 4), np.uint8)
    k, deadline = 0, time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        k += 1
        frame[..., 0] = k % 256
        sink.send(frame)
        try:
            return proc.lines.get(timeout=0.003), k
        except queue.Empty:
            continue
    raise AssertionError("reader process printed nothing")


def test_sink_to_reader_process(new_name, procs) -> None:
    name = new_name()
    sink = ShmSink(name)
    sink.open()
    reader = Proc(SOURCE_READER, name, 10, "exit")
    procs.append(reader)
    out, _ = _send_until(sink, reader, 40, 50)
    result = json.loads(out)
    assert result["ok"] and result["shape"] == [40, 50, 4]
    assert len(result["indices"]) == 10 and result["indices"] == sorted(set(result["indices"]))
    sink.close()


def test_killed_or_exiting_readers_leave_the_writer_alone(new_name, procs) -> None:
    name = new_name()
    sink = ShmSink(name)
    killed = Proc(SOURCE_READER, name, 3, "hang")
    exiting = Proc(SOURCE_READER, name, 3, "exit")
    procs += [killed, exiting]
    _send_until(sink, killed, 16, 16)
    killed.kill()
    out, _ = _send_until(sink, exiting, 16, 16)
    exiting.popen.wait(timeout=WAIT_S)
    wait_for_tracker_exit(json.loads(out))  # a tracker would have unlinked the block by now
    src = ShmSource(name)
    src.open()
    assert src.connected, "a reader's exit destroyed the writer's block"
    frame = np.zeros((16, 16, 4), np.uint8)
    for k in range(sink._index + 1, sink._index + 4):
        frame[..., 0] = k % 256
        sink.send(frame)
        got = src.read_latest()
        assert got is not None and src.last_index == k and (got[..., 0] == k % 256).all()
    sink.close()
    src.close()


@pytest.mark.parametrize("old_name_removed", [False, True])
def test_writer_killed_and_restarted_is_picked_up(new_name, procs, caplog, old_name_removed) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    first = start_writer(procs, name, 64, 48, marker=1)
    src = ShmSource(name)
    src.open()
    frame = poll(src, lambda f: f[0, 0, 3] == 1)
    np.testing.assert_array_equal(frame, expected(48, 64, src.last_index, 1))
    gen = src.generation
    first.kill()
    if old_name_removed:
        # As a tracked writer's resource tracker would: the new writer then finds no old
        # block to mark CLOSED, and the idle reader's name probe has to notice the takeover.
        shm_block.unlink(name)
    second = start_writer(procs, name, 80, 40, marker=2)  # replaces the dead writer's block at once
    frame = poll(src, lambda f: f.shape == (40, 80, 4) and f[0, 0, 3] == 2)
    np.testing.assert_array_equal(frame, expected(40, 80, src.last_index, 2))
    assert src.generation != gen
    assert f"writer pid {second.popen.pid})" in caplog.text
    assert ("new writer took over" if old_name_removed else "block was closed") in caplog.text
    src.close()


class StepClock:
    """A monotonic clock that tests move forward by hand (retry and grace periods without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_dead_writer_is_detected_then_a_new_one_attached(new_name, procs, caplog, monkeypatch) -> None:
    monkeypatch.setattr(shm_block, "STALE_S", 0.2)
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    first = start_writer(procs, name, 32, 32, marker=1)
    clock = StepClock()
    src = ShmSource(name, retry_s=0.1, clock=clock)
    src.open()
    poll(src, lambda f: True)
    first.kill()
    first.popen.wait(timeout=WAIT_S)

    def gone() -> bool:
        clock.advance(0.1)  # each poll is a retry period later: the idle probe runs every time
        src.read_latest()
        return not src.connected

    wait_for(gone, "the source to notice its writer died")  # the heartbeat must age STALE_S in real time
    assert f"writer pid {first.popen.pid} is gone" in caplog.text
    attaches = caplog.text.count("attached")
    for _ in range(5):  # the dead block is still there: skipped quietly at every retry, not re-attached
        clock.advance(0.2)
        assert src.read_latest() is None and not src.connected
    assert caplog.text.count("attached") == attaches
    start_writer(procs, name, 32, 32, marker=3)

    def new_frame() -> bool:
        clock.advance(0.1)
        frame = src.read_latest()
        return frame is not None and frame[0, 0, 3] == 3

    wait_for(new_frame, "a frame from the new writer")
    src.close()


@pytest.mark.parametrize("slots", [2, 3])
def test_reader_racing_writer_never_sees_a_torn_frame(new_name, procs, slots: int) -> None:
    name = new_name()
    start_writer(procs, name, 512, 512, marker=-1, period=0.0, slots=slots)
    src = ShmSource(name)
    src.open()
    frames, enough, deadline = 0, time.monotonic() + 3, time.monotonic() + WAIT_S
    while frames < 300 and time.monotonic() < deadline and not (frames >= 20 and time.monotonic() > enough):
        f = src.read_latest()
        if f is None:
            continue
        frames += 1
        assert f.min() == f.max() == src.last_index % 251, f"torn frame at index {src.last_index}"
    src.close()
    assert frames >= 20


def test_size_change_recreates_the_block(new_name, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    sink, src = ShmSink(name), ShmSource(name)
    sink.send(np.full((48, 64, 4), 1, np.uint8))
    src.open()
    assert src.read_latest().shape == (48, 64, 4)
    gen = sink.generation
    sink.send(np.full((30, 20, 4), 2, np.uint8))
    assert sink.generation != gen
    got = src.read_latest()  # sees CLOSED on the old block and reattaches in the same call
    assert got is not None and got.shape == (30, 20, 4) and (got == 2).all()
    assert "block was closed" in caplog.text
    sink.close()
    assert src.read_latest() is None and not src.connected
    src.close()


def test_returned_arrays_rotate_and_are_never_written_by_the_writer(new_name) -> None:
    name = new_name()
    sink, src = ShmSink(name), ShmSource(name, out_buffers=2)
    sink.send(np.full((8, 8, 4), 1, np.uint8))
    src.open()
    a = src.read_latest()
    sink.send(np.full((8, 8, 4), 2, np.uint8))
    b = src.read_latest()
    sink.send(np.full((8, 8, 4), 3, np.uint8))  # the writer reuses slots, never our arrays
    assert (a == 1).all() and (b == 2).all() and a is not b
    assert not src.frames_owned
    fresh = ShmSource(name, out_buffers=0)
    fresh.open()
    first = fresh.read_latest()
    sink.send(np.full((8, 8, 4), 4, np.uint8))
    assert fresh.frames_owned and fresh.read_latest() is not first and (first == 3).all()
    for s in (sink, src, fresh):
        s.close()


@pytest.mark.parametrize(
    ("magic", "version", "width", "words"),
    [
        (b"NOTOURS!", 1, 16, "not a streamvj block"),
        (p.MAGIC, 2, 16, "protocol version 2"),
        (p.MAGIC, 1, 20000, "out of range"),
        (p.MAGIC, 1, 4000, "slot stride"),
    ],
)
def test_bad_blocks_are_logged_once_and_never_raise(new_name, caplog, magic, version, width, words) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    lay = p.ShmLayout(width, 16, p.PIXEL_RGBA8, 3, 256, 16 * 16 * 4)
    block = raw_block(name, p.pack_header(lay, 1, os.getpid(), p.STATE_LIVE, magic=magic, version=version))
    src = ShmSource(name, retry_s=0.0)
    src.open()
    for _ in range(5):
        assert src.read_latest() is None
    hits = [r for r in caplog.records if words in r.getMessage()]
    assert len(hits) == 1 and hits[0].levelno == logging.WARNING
    if magic != p.MAGIC:
        with pytest.raises(p.ShmNameInUseError, match="not a streamvj"):
            ShmSink(name).open()
    src.close()
    block.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_block_of_a_dead_writer_is_skipped_then_replaced(new_name, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    lay = p.layout_for(8, 8, 3)
    pid = _dead_pid()
    block = raw_block(name, p.pack_header(lay, 5, pid, p.STATE_LIVE), lay.block_size)
    src = ShmSource(name, retry_s=0.0)
    src.open()
    assert src.read_latest() is None and not src.connected
    assert f"dead writer pid {pid}" in caplog.text
    sink = ShmSink(name)
    sink.open()  # a dead writer's block does not count as in use
    sink.send(np.full((8, 8, 4), 9, np.uint8))
    assert f"replacing the block of dead writer pid {pid}" in caplog.text
    got = src.read_latest()
    assert got is not None and (got == 9).all()
    assert read_u32(block, 28) == p.STATE_CLOSED  # old readers were told
    block.close()
    sink.close()
    src.close()


def test_live_name_cannot_be_taken_twice(new_name) -> None:
    name = new_name()
    first = ShmSink(name)
    first.send(np.zeros((4, 4, 4), np.uint8))
    second = ShmSink(name)
    with pytest.raises(p.ShmNameInUseError, match="live writer"):
        second.open()
    with pytest.raises(p.ShmNameInUseError):
        second.send(np.zeros((4, 4, 4), np.uint8))
    first.close()
    second.send(np.zeros((4, 4, 4), np.uint8))  # free again
    second.close()


def test_vanished_block_is_waited_for_quietly(new_name, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    src = ShmSource(name, retry_s=0.0)
    src.open()
    for _ in range(5):
        assert src.read_latest() is None
    assert sum("no block yet" in r.getMessage() for r in caplog.records) == 1
    sink = ShmSink(name)
    sink.send(np.zeros((4, 4, 4), np.uint8))
    assert src.read_latest() is not None
    shm_block.unlink(name)  # someone removes the name under a live writer: keep reading the block
    sink.send(np.ones((4, 4, 4), np.uint8))
    got = src.read_latest()
    assert got is not None and (got == 1).all()
    sink.close()  # unlinks nothing (the name is gone) and does not raise
    src.close()


def test_invalid_arguments_raise_specific_errors(new_name) -> None:
    for bad in ("", "a/b", "has space", ".x"):
        with pytest.raises(p.ShmNameError):
            ShmSource(bad)
        with pytest.raises(p.ShmNameError):
            ShmSink(bad)
    with pytest.raises(ConfigError, match="slots"):
        ShmSink("ok", slots=4)
    sink = ShmSink(new_name())
    with pytest.raises(FrameError, match="uint8"):
        sink.send(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(FrameError, match="HxWx4"):
        sink.send(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(p.ShmHeaderError, match="out of range"):
        sink.send(np.zeros((1, 16385, 4), np.uint8))
    sink.close()


def test_block_still_held_by_old_readers_is_retried(new_name, caplog, monkeypatch) -> None:
    """Windows semantics, simulated: an old block cannot be removed while readers hold it."""
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    lay = p.layout_for(8, 8, 3)
    stale = raw_block(name, p.pack_header(lay, 5, _dead_pid(), p.STATE_LIVE), lay.block_size)
    monkeypatch.setattr(shm_sink, "unlink", lambda n: None)
    monkeypatch.setattr(shm_sink, "WRITER_RETRY_S", 0.0)
    sink = ShmSink(name)
    sink.send(np.zeros((8, 8, 4), np.uint8))  # dropped, not raised
    assert sink.generation == 0 and "still held by readers" in caplog.text
    stale.close()
    monkeypatch.undo()
    shm_block.unlink(name)  # the last handle went away
    sink.send(np.zeros((8, 8, 4), np.uint8))
    assert sink.generation != 0
    sink.close()


def test_read_latest_into_fills_the_callers_buffer(new_name) -> None:
    name = new_name()
    sink, src = ShmSink(name), ShmSource(name)
    sink.open()
    src.open()
    try:
        frame = np.full((6, 10, 4), 77, np.uint8)
        sink.send(frame)
        shapes: list[tuple[int, int, int]] = []
        mine = np.zeros((6, 10, 4), np.uint8)

        def acquire(shape):
            shapes.append(shape)
            return mine

        deadline = time.monotonic() + WAIT_S
        got = None
        while got is None and time.monotonic() < deadline:
            got = src.read_latest_into(acquire)
        assert got is mine and shapes == [(6, 10, 4)] and (mine == 77).all()
        assert src.read_latest_into(acquire) is None and shapes == [(6, 10, 4)]  # nothing new: not asked
    finally:
        src.close()
        sink.close()
