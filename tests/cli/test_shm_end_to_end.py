"""Real processes end to end: writer process -> shared memory -> engine (tiny model) -> shared memory -> reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.paths import REPO as ROOT

sys.path.insert(0, str(ROOT / "clients"))
import streamvj_shm_client as client  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals in the harness")

WRITER = """
import sys, time, numpy as np
sys.path.insert(0, {clients!r})
import streamvj_shm_client as client
writer = client.ShmWriter({name!r}, 96, 64)
value = int(sys.argv[1])
frame = np.empty((64, 96, 4), np.uint8)
print("ready", flush=True)
while True:
    frame[...] = value
    writer.write(frame)
    time.sleep(1 / 60)
"""


def start_writer(name: str, value: int) -> subprocess.Popen:
    code = WRITER.format(clients=str(ROOT / "clients"), name=name)
    proc = subprocess.Popen([sys.executable, "-c", code, str(value)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    except BaseException:
        proc.kill()  # never leave a writer running after a failed start
        proc.wait(10)
        raise
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        proc.wait(10)


def collect(reader: client.ShmReader, count: int, timeout: float = 60.0) -> list[tuple[int, int, np.ndarray]]:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        frame = reader.read()
        if frame is None:
            time.sleep(0.005)
            continue
        got.append((reader.index, reader.timestamp_ns, frame.copy()))
    assert len(got) == count, f"only {len(got)} of {count} frames within {timeout} s"
    return got


@pytest.fixture
def names():
    """(input, output) block names; both are unlinked afterwards, also when the test fails.

    The test SIGKILLs writers on purpose, and a killed writer cannot remove its block.
    """
    tag = f"{os.getpid()}_{time.monotonic_ns() % 100000}"
    made = (f"e2e_in_{tag}", f"e2e_out_{tag}")  # prefixes known to tests/conftest.py's leak check
    yield made
    for name in made:
        client._unlink(name)


def test_frames_flow_through_the_engine_and_survive_peers_restarting(names):
    name_in, name_out = names
    writer = start_writer(name_in, 40)
    engine = reader = other = None
    try:
        engine = subprocess.Popen(
            [sys.executable, str(ROOT / "run_engine.py"), "run", "--source", f"shm:{name_in}", "--sink",
             f"shm:{name_out}", "--width", "64", "--height", "64", "--no-osc"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        reader = client.ShmReader(name_out)
        frames = collect(reader, 10)
        assert all(f.shape == (64, 64, 4) and f.dtype == np.uint8 for _, _, f in frames)
        indices = [i for i, _, _ in frames]
        stamps = [t for _, t, _ in frames]
        assert indices == sorted(set(indices)) and stamps == sorted(stamps)
        dark = frames[-1][2]

        # The writer dies mid-stream and a new one (another picture) takes the name over.
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        writer = start_writer(name_in, 220)
        deadline, changed = time.monotonic() + 60, False
        while time.monotonic() < deadline and not changed:
            frame = reader.read()
            if frame is not None and np.abs(frame.astype(int) - dark.astype(int)).mean() > 1.0:
                changed = True
            time.sleep(0.005)
        assert changed, "output never followed the restarted writer's frames"

        # A reader process dying does not disturb the engine.
        other = subprocess.Popen([sys.executable, "-c", (
            f"import sys, time; sys.path.insert(0, {str(ROOT / 'clients')!r}); import streamvj_shm_client as c; "
            f"r = c.ShmReader({name_out!r}); print('ready', flush=True); [r.read() or time.sleep(0.01) "
            f"for _ in iter(int, 1)]")], stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline().strip() == "ready"
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        collect(reader, 5)
        assert engine.poll() is None, "engine exited"
    finally:
        if reader is not None:
            reader.close()
        stop(other)
        err = ""
        if engine is not None:
            engine.send_signal(signal.SIGTERM)  # the engine removes its output block on the way out
            try:
                _, err = engine.communicate(timeout=60)
            finally:
                stop(engine)
        stop(writer)
    assert engine.returncode == 0, err
    assert "Traceback" not in err
