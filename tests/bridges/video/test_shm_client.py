"""The single-file client (clients/streamvj_shm_client.py) against the bridge, both ways.

Client processes run with `python -I`, so only the stdlib, numpy and the client file are
importable there — as inside TouchDesigner.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import queue
import time
from collections.abc import Callable

import numpy as np
import pytest

from bridges.video import shm_block
from bridges.video.shm import ShmSink, ShmSource
from tests.bridges.video.test_shm import (
    ROOT,
    WAIT_S,
    Proc,
    expected,
    poll,
    start_writer,
    wait_for,
    wait_for_tracker_exit,
)

CLIENT_PATH = ROOT / "clients" / "streamvj_shm_client.py"
_spec = importlib.util.spec_from_file_location("streamvj_shm_client", CLIENT_PATH)
client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client)

CLIENT_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import streamvj_shm_client as c
name, w, h, marker = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
yy, xx = np.mgrid[0:h, 0:w]
base = ((xx + 3 * yy) % 256).astype(np.uint16)
frame = np.empty((h, w, 4), np.uint8)
wr = c.ShmWriter(name, w, h)
print("ready", flush=True)  # the block exists now
k, deadline = 0, time.monotonic() + 30
while time.monotonic() < deadline:
    k += 1
    frame[..., :3] = ((base + k) % 256)[..., None]
    frame[..., 3] = marker
    wr.write(frame)
    time.sleep(0.004)
wr.close()
"""

# Reads `want` frames (R channel uniformly index % 256; mode "uniform": every byte index % 251).
CLIENT_READER = """
import json, sys, time
from multiprocessing import resource_tracker
sys.path.insert(0, sys.argv[1])
import numpy as np
import streamvj_shm_client as c
name, want, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = c.ShmReader(name)
seen, ok, shape = [], True, None
deadline = time.monotonic() + 30
while len(seen) < want and time.monotonic() < deadline:
    f = r.read()
    if f is None:
        time.sleep(0.001)
        continue
    seen.append(r.index)
    if mode == "uniform":
        ok = ok and int(f.min()) == int(f.max()) == r.index % 251
    else:
        ok = ok and bool((f[..., 0] == r.index % 256).all())
    shape = list(f.shape)
r.close()
tracker = resource_tracker._resource_tracker._pid
print(json.dumps({"indices": seen, "ok": ok, "shape": shape, "tracker": tracker}), flush=True)
"""


def _client_proc(procs: list[Proc], code: str, *args: object) -> Proc:
    proc = Proc(code, CLIENT_PATH.parent, *args, isolated=True)
    procs.append(proc)
    return proc


def test_client_is_stdlib_and_numpy_only() -> None:
    allowed = {"__future__", "contextlib", "mmap", "os", "re", "struct", "time", "numpy",
               "multiprocessing.shared_memory", "_posixshmem"}
    tree = ast.parse(CLIENT_PATH.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= allowed, imported - allowed
    assert "docs/shared-memory.md" in (client.__doc__ or "")
    assert (client.MAGIC, client.VERSION, client.HEADER_SIZE) == (b"STREAMVJ", 1, 256)


def test_client_writer_process_to_source(new_name, procs) -> None:
    name = new_name()
    writer = _client_proc(procs, CLIENT_WRITER, name, 72, 40, 7)
    assert writer.line() == "ready"
    src = ShmSource(name)
    src.open()
    last = 0
    for _ in range(5):
        frame = poll(src, lambda f: True)
        np.testing.assert_array_equal(frame, expected(40, 72, src.last_index, 7))
        assert src.last_index > last
        last = src.last_index
    src.close()


def test_killed_client_writer_restarts_and_source_follows(new_name, procs) -> None:
    name = new_name()
    first = _client_proc(procs, CLIENT_WRITER, name, 32, 24, 1)
    assert first.line() == "ready"
    src = ShmSource(name)
    src.open()
    poll(src, lambda f: f[0, 0, 3] == 1)
    first.kill()
    second = _client_proc(procs, CLIENT_WRITER, name, 24, 32, 2)
    assert second.line() == "ready"  # the dead writer's block did not block the name
    frame = poll(src, lambda f: f.shape == (32, 24, 4) and f[0, 0, 3] == 2)
    np.testing.assert_array_equal(frame, expected(32, 24, src.last_index, 2))
    src.close()


def _send_until(sink: ShmSink, proc: Proc, frame_fn: Callable[[int], np.ndarray]) -> dict:
    k, deadline = 0, time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        k += 1
        sink.send(frame_fn(k))
        try:
            return json.loads(proc.lines.get(timeout=0.003))
        except queue.Empty:
            continue
    raise AssertionError("client reader printed nothing")


def test_sink_to_client_reader_process_and_block_survives_its_exit(new_name, procs) -> None:
    name = new_name()
    sink = ShmSink(name)
    reader = _client_proc(procs, CLIENT_READER, name, 10, "pattern")
    frame = np.zeros((36, 52, 4), np.uint8)

    def make(k: int) -> np.ndarray:
        frame[..., 0] = k % 256
        return frame

    result = _send_until(sink, reader, make)
    assert result["ok"] and result["shape"] == [36, 52, 4] and len(result["indices"]) == 10
    assert result["indices"] == sorted(set(result["indices"]))
    reader.popen.wait(timeout=WAIT_S)
    wait_for_tracker_exit(result)  # a tracker would have unlinked the block by now
    src = ShmSource(name)
    src.open()
    assert src.connected, "the client reader's exit destroyed the block"
    sink.send(make(sink._index + 1))
    assert src.read_latest() is not None
    sink.close()
    src.close()


def test_client_reader_never_sees_a_torn_frame(new_name, procs) -> None:
    name = new_name()
    start_writer(procs, name, 512, 512, marker=-1, period=0.0, slots=2)
    reader = client.ShmReader(name)
    frames, enough, deadline = 0, time.monotonic() + 3, time.monotonic() + WAIT_S
    while frames < 200 and time.monotonic() < deadline and not (frames >= 20 and time.monotonic() > enough):
        f = reader.read()
        if f is None:
            continue
        frames += 1
        assert f.min() == f.max() == reader.index % 251, f"torn frame at index {reader.index}"
    reader.close()
    assert frames >= 20


def test_td_float_bottom_up_frames_reach_the_source(new_name) -> None:
    name = new_name()
    rng = np.random.default_rng(0)
    td = rng.random((20, 30, 4), dtype=np.float32)  # what top.numpyArray() gives
    td[0, 0] = [1.2, -0.1, 0.5, 1.0]  # out-of-range values clip
    writer = client.ShmWriter(name, 30, 20)
    assert writer.write(td, bottom_up=True)
    src = ShmSource(name)
    src.open()
    got = src.read_latest()
    want = np.clip(td[::-1] * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got[-1, 0].tolist() == [255, 0, 128, 255]
    reader = client.ShmReader(name)
    back = reader.read(bottom_up=True, as_float=True)  # what scriptOp.copyNumpyArray takes
    assert back.dtype == np.float32 and np.abs(back - np.clip(td, 0, 1)).max() <= 0.5 / 255 + 1e-6
    writer.close()
    reader.close()
    src.close()


def test_sink_to_client_reader_in_process_with_resize(new_name) -> None:
    name = new_name()
    sink = ShmSink(name)
    reader = client.ShmReader(name)
    assert reader.read() is None and "no block" in reader.error
    img = np.arange(8 * 6 * 4, dtype=np.uint8).reshape(8, 6, 4)
    sink.send(img)
    reader._next_try = 0.0
    np.testing.assert_array_equal(reader.read(), img)
    assert reader.read() is None  # nothing new
    sink.send(img[:4].copy())  # resize: new block; the reader sees CLOSED and reattaches
    reader._next_try = 0.0
    np.testing.assert_array_equal(reader.read(bottom_up=True), img[:4][::-1])
    sink.close()
    reader.close()


def test_client_reader_probes_for_a_new_writer(new_name, monkeypatch) -> None:
    monkeypatch.setattr(client, "RETRY_S", 0.05)
    name = new_name()
    first = client.ShmWriter(name, 4, 4)
    first.write(np.full((4, 4, 4), 1, np.uint8))
    reader = client.ShmReader(name)
    assert reader.read()[0, 0, 0] == 1
    shm_block.unlink(name)  # the old block disappears without being marked CLOSED
    second = client.ShmWriter(name, 4, 4)
    second.write(np.full((4, 4, 4), 2, np.uint8))
    got: list[np.ndarray] = []

    def probed() -> bool:
        frame = reader.read()  # the client's own RETRY_S paces its probes (real time)
        if frame is not None:
            got.append(frame.copy())
        return bool(got)

    wait_for(probed, "the client reader to follow the new writer")
    assert got[0][0, 0, 0] == 2
    first.close()  # its block was replaced: the name (second's block) must survive
    assert reader.read() is None and not reader.error
    probe = client.ShmReader(name)
    assert probe.read()[0, 0, 0] == 2
    for c in (second, reader, probe):
        c.close()


def test_client_rejects_bad_input(new_name, procs) -> None:
    for bad in ("", "a/b", ".x", "with space"):
        with pytest.raises(ValueError, match="invalid block name"):
            client.ShmWriter(bad, 4, 4)
        with pytest.raises(ValueError, match="invalid block name"):
            client.ShmReader(bad)
    with pytest.raises(ValueError, match="invalid size"):
        client.ShmWriter(new_name(), 0, 4)
    name = new_name()
    writer = client.ShmWriter(name, 4, 4)
    with pytest.raises(ValueError, match="invalid size"):
        writer.write(np.zeros((1, 16385, 4), np.uint8))
    with pytest.raises(ValueError, match="H x W x 4"):
        writer.write(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="H x W x 4"):
        writer.write(np.zeros((4, 4, 4), np.int32))
    writer.close()
    foreign = shm_block.Block(new_name(), create_size=4096)
    foreign.io.write_from(0, np.frombuffer(b"NOTOURS!", np.uint8))
    reader = client.ShmReader(foreign.name)
    assert reader.read() is None and "not a (ready) streamvj block" in reader.error
    with pytest.raises(RuntimeError, match="not a streamvj block"):
        client.ShmWriter(foreign.name, 4, 4)
    foreign.close()
    live = new_name()
    start_writer(procs, live, 8, 8, marker=1)
    with pytest.raises(RuntimeError, match="live writer"):
        client.ShmWriter(live, 8, 8)
    src = ShmSource(live)
    src.open()
    assert poll(src, lambda f: True).shape == (8, 8, 4)  # the bridge's writer was left alone
    src.close()


def test_uniform_sink_process_to_client_reader_process(new_name, procs) -> None:
    name = new_name()
    start_writer(procs, name, 256, 256, marker=-1, period=0.0, slots=3)
    reader = _client_proc(procs, CLIENT_READER, name, 30, "uniform")
    result = json.loads(reader.line())
    assert result["ok"] and len(result["indices"]) == 30

