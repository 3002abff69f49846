"""ShmSink facing other processes that break the rules: a truncated or overwritten output block,
a symbolic link at its name. The writer runs in its own process, so a SIGBUS shows as -7."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from bridges.video.shm import ShmOpenError, ShmSink, ShmSource
from bridges.video.shm_protocol import ShmError
from engine.errors import ConfigError
from tests.bridges.video.test_shm import ROOT, SINK_WRITER, WAIT_S, Proc, poll, wait_for

pytestmark = pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="blocks that can shrink: Linux")


@pytest.mark.parametrize("fault", ["truncate", "zero_header", "grow"])
def test_writer_process_survives_its_block_being_broken_and_readers_follow(new_name, procs, fault) -> None:
    name = new_name()
    writer = Proc(SINK_WRITER, name, 160, 120, 9, 0.004, 3)
    procs.append(writer)
    assert writer.line() == "ready"
    src = ShmSource(name, retry_s=0.05)
    src.open()
    poll(src, lambda f: True)
    gen = src.generation
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_NOFOLLOW)
    try:
        if fault == "truncate":  # a third party truncates the engine's output block
            os.ftruncate(fd, 4096)
        elif fault == "zero_header":
            os.pwrite(fd, bytes(64), 0)
        else:
            os.ftruncate(fd, os.fstat(fd).st_size + (1 << 20))  # growing breaks no access: nothing to say
    finally:
        os.close(fd)
    if fault == "grow":
        frame = poll(src, lambda f: src.last_index > 0)
        assert src.generation == gen and frame[0, 0, 3] == 9
    else:
        wait_for(lambda: src.read_latest() is not None and src.generation != gen, "the writer's new block")
    assert writer.popen.poll() is None, f"the writer died with {writer.popen.returncode} (-7: SIGBUS)"
    src.close()
    writer.kill()
    said = writer.popen.stderr.read()
    words = {"truncate": "shrank to 4096 bytes while in use", "zero_header": "zeroed while in use"}.get(fault)
    if words:
        assert said.count(words) == 1 and "replacing it with a new block" in said, said
    else:
        assert said == ""


def test_truncated_block_is_replaced_in_process_and_logged_once(new_name, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamvj.shm")
    name = new_name()
    sink = ShmSink(name)
    sink.send(np.zeros((64, 64, 4), np.uint8))
    first = sink.generation
    for _ in range(3):  # the same fault again and again: one line (then at most every SINK_REPEAT_S)
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        os.ftruncate(fd, 100)
        os.close(fd)
        sink.send(np.ones((64, 64, 4), np.uint8))
    assert sink.generation not in (0, first)
    assert sum("shrank to 100 bytes" in r.getMessage() for r in caplog.records) == 1
    src = ShmSource(name)
    src.open()
    got = src.read_latest()
    assert got is not None and (got == 1).all()
    src.close()
    sink.close()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_symlink_at_the_sink_name_is_a_config_error(new_name, tmp_path) -> None:
    name = new_name()
    link = f"/dev/shm/{name}"
    os.symlink(tmp_path / "target", link)
    try:
        sink = ShmSink(name)
        with pytest.raises(ShmOpenError, match="is a symbolic link; streamvj never follows links") as info:
            sink.open()
        assert isinstance(info.value, ConfigError)
        with pytest.raises(ShmError, match="symbolic link"):
            sink.send(np.zeros((4, 4, 4), np.uint8))  # appearing later: a clear error, retried by the runtime
        assert not (tmp_path / "target").exists()  # nothing was written through the link
    finally:
        os.unlink(link)


def test_engine_with_a_symlink_at_its_sink_exits_2_with_one_line(new_name, tmp_path) -> None:
    name = new_name()
    link = f"/dev/shm/{name}"
    os.symlink(tmp_path / "target", link)
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "run_engine.py"), "run", "--preset", "tiny", "--width", "64", "--height",
             "64", "--sink", f"shm:{name}", "--no-osc", "--frames", "1", "--timeout", str(WAIT_S)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    finally:
        os.unlink(link)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if "symbolic link" in line]
    assert len(lines) == 1 and lines[0].startswith("streamvj: "), run.stderr[-2000:]
