"""Fault injection against a running engine: what a misbehaving peer does on stage, one after another.

A real `run_engine.py run` (tiny model, 64x64, shared memory in and out) plays while this
test breaks its blocks the ways docs/shared-memory.md forbids (shrink, zero, rewrite the
input block; shrink and zero the engine's own output block; grow one; kill the writer and
start another under the same name). After each fault: the engine is still running, said
what happened at most once, and frames flow again end to end. Bounded: well under a minute
on a 2-core CPU. Every block and process is cleaned up, also when an assertion fails.

    .venv/bin/python -m pytest -q tests/faults
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from bridges.video.shm import ShmSource
from bridges.video.shm_block import Block, unlink
from bridges.video.shm_protocol import STATE_INIT, layout_for, pack_header
from tests.paths import REPO as ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="shrinking blocks and /dev/shm: Linux")

WAIT_S = 60.0  # deadline for any recovery; generous, so a loaded machine still passes

# The input peer: streamvj's own ShmSink (it replaces a block someone broke), uniform frames.
WRITER = """
import sys, time
import numpy as np
from bridges.video.shm import ShmSink
name, value = sys.argv[1], int(sys.argv[2])
sink = ShmSink(name)
frame = np.full((64, 96, 4), value, np.uint8)
print("ready", flush=True)
while True:
    sink.send(frame)
    time.sleep(1 / 60)
"""


class Engine:
    """run_engine.py in a subprocess; its log lines collected as they come."""

    def __init__(self, name_in: str | None, name_out: str, extra: list[str] | None = None) -> None:
        # Without `extra`: shm in, no OSC. tests/faults/test_control_faults.py passes its own source and OSC port.
        extra = ["--source", f"shm:{name_in}", "--no-osc"] if extra is None else extra
        self.popen = subprocess.Popen(
            [sys.executable, str(ROOT / "run_engine.py"), "run", "--preset", "tiny", "--width", "64", "--height",
             "64", "--sink", f"shm:{name_out}", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stderr:
            self.lines.append(line.rstrip())

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=WAIT_S)


class Writer:
    def __init__(self, name: str, value: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(value)], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        got: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: got.put(self.popen.stdout.readline()), daemon=True).start()
        assert got.get(timeout=WAIT_S).strip() == "ready"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=WAIT_S)


def wait_for(condition: Callable[[], bool], what: str, engine: Engine) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert engine.popen.poll() is None, f"the engine exited ({engine.popen.returncode}) while {what}:\n" + \
            "\n".join(engine.lines[-30:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; engine log:\n" + "\n".join(engine.lines[-30:]))
        time.sleep(0.01)


def _shm_fd(name: str) -> int:
    return os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_NOFOLLOW)


def _shrink(name: str) -> None:
    fd = _shm_fd(name)
    os.ftruncate(fd, 4096)
    os.close(fd)


def _grow(name: str) -> None:
    fd = _shm_fd(name)
    os.ftruncate(fd, os.fstat(fd).st_size + (1 << 20))
    os.close(fd)


def _zero_header(name: str) -> None:
    fd = _shm_fd(name)
    os.pwrite(fd, bytes(256), 0)
    os.close(fd)


def test_engine_survives_peers_breaking_its_blocks(names) -> None:
    name_in, name_out = names
    writers = [Writer(name_in, 40)]
    engine = Engine(name_in, name_out)
    out = ShmSource(name_out, retry_s=0.05)  # reads through the fd: safe while the test breaks the block
    frames = [0]

    def more_output(n: int = 3) -> Callable[[], bool]:
        target = frames[0] + n

        def check() -> bool:
            if out.read_latest() is not None:
                frames[0] += 1
            return frames[0] >= target

        return check

    def fault(what: str, inject: Callable[[], None], said: str | None) -> None:
        before = len(engine.lines)
        inject()
        wait_for(more_output(), f"output after: {what}", engine)
        new = engine.lines[before:]
        warnings = [line for line in new if " WARNING " in line or " ERROR " in line]
        if said is not None:
            assert sum(said in line for line in warnings) == 1, f"{what}: expected one '{said}' line in {new}"
        assert len(warnings) == len(set(warnings)), f"{what}: a line repeated: {warnings}"
        assert not any("Traceback" in line for line in new), new

    try:
        wait_for(more_output(), "the first output frames", engine)
        fault("input block shrunk", lambda: _shrink(name_in), "shrank to 4096 bytes while in use")
        fault("input block grown", lambda: _grow(name_in), None)
        fault("input header zeroed", lambda: _zero_header(name_in), "while in use")
        fault("output block shrunk", lambda: _shrink(name_out), "shrank to 4096 bytes while in use")
        fault("output header zeroed", lambda: _zero_header(name_out), "zeroed while in use")

        def kill_and_restart() -> None:
            writers[-1].kill()  # SIGKILL: its block stays behind, LIVE and stale
            writers.append(Writer(name_in, 220))  # replaces the dead writer's block under the same name

        fault("writer killed and restarted", kill_and_restart, None)

        def killed_then_back_later() -> None:
            before = len(engine.lines)
            writers[-1].kill()
            wait_for(lambda: any("is gone" in line for line in engine.lines[before:]), "the dead writer noticed", engine)
            writers.append(Writer(name_in, 90))

        fault("writer killed, back later", killed_then_back_later, "is gone; waiting for a new writer")

        def stuck_in_init() -> None:
            before = len(engine.lines)
            writers[-1].kill()
            unlink(name_in)
            lay = layout_for(64, 64)
            stuck = Block(name_in, create_size=lay.block_size)  # a writer that never finishes its header
            stuck.io.write_from(0, np.frombuffer(pack_header(lay, 9, os.getpid(), STATE_INIT), np.uint8))
            wait_for(lambda: any("state INIT" in line for line in engine.lines[before:]), "the stall reported", engine)
            stuck.close()
            unlink(name_in)
            writers.append(Writer(name_in, 160))

        fault("a block stuck in INIT, then a good writer", stuck_in_init, "no frames for")
        assert engine.popen.poll() is None
    finally:
        out.close()
        for writer in writers:
            writer.kill()
        code = engine.stop()
    assert code == 0, "\n".join(engine.lines[-30:])
    assert not any("Traceback" in line for line in engine.lines), "\n".join(engine.lines)
    assert not os.path.exists(f"/dev/shm/{name_out}"), "the engine left its output block behind"
