"""Fault injection on the control side: an OSC flood and broken presets against a running engine.

A real `run_engine.py run` (tiny model, 64x64, test pattern in, shared memory out, OSC on
loopback) plays while this test sends thousands of malformed, mistyped and oversized OSC
datagrams and switches to every kind of broken preset (bad YAML, an unknown key, an alias
bomb, a missing model) by name and with next/prev. The engine must stay up, keep frames
flowing, say why each preset was refused, and stop cleanly. Bounded: well under a minute.

    .venv/bin/python -m pytest -q tests/faults
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from bridges.video.shm import ShmSource
from tests.faults.test_faults import Engine, wait_for
from tests.paths import PRESETS

BROKEN = {
    "bad_yaml": "name: bad_yaml\nload: {model: tiny\n",
    "bad_key": "name: bad_key\nload: {model: tiny, widht: 64}\n",
    "bomb": "name: bomb\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "missing_model": "name: missing_model\nload: {model: ./no/such/folder, width: 64, height: 64}\n",
}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _osc(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 600))
    if kind == 1:
        return b"/streamvj/guidance_scale\x00\x00\x00\x00,f\x00\x00" + rng.randbytes(rng.randrange(0, 3))
    if kind == 2:
        return _osc("/streamvj/guidance_scale", "not a number")
    if kind == 3:
        return _osc("/streamvj/prompt", "x" * 60_000)
    if kind == 4:
        return _osc("/streamvj/t_index_list", 99, -4, 7)
    return b"#bundle\x00" + struct.pack(">Q", 1) + struct.pack(">i", 10_000) + rng.randbytes(40)


class _Resend:
    """Sends `dgram` now and again every `every_s` seconds while called; always returns False."""

    def __init__(self, udp: socket.socket, dgram: bytes, to: tuple[str, int], every_s: float = 1.0) -> None:
        self._udp, self._dgram, self._to, self._every_s = udp, dgram, to, every_s
        self._next = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._udp.sendto(self._dgram, self._to)
            self._next = now + self._every_s
        return False


@pytest.fixture
def presets_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    shutil.copy(PRESETS / "tiny.yaml", folder / "tiny.yaml")
    for name, text in BROKEN.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def test_engine_survives_an_osc_flood_and_broken_presets(names, presets_dir: Path) -> None:
    _, name_out = names
    port = _free_udp_port()
    engine = Engine(None, name_out, ["--source", "pattern:64x64@60", "--presets-dir", str(presets_dir),
                                     "--osc-port", str(port)])
    out = ShmSource(name_out)
    seen = [0]

    def frames_flow(n: int = 3):
        target = seen[0] + n

        def check() -> bool:
            if out.read_latest() is not None:
                seen[0] += 1
            return seen[0] >= target
        return check

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        out.open()
        wait_for(frames_flow(), "the first frames", engine)
        rng = random.Random(7)
        for i in range(3000):
            udp.sendto(_garbage(rng), ("127.0.0.1", port))
            if i % 500 == 0:
                udp.sendto(_osc("/streamvj/guidance_scale", 1.5), ("127.0.0.1", port))
                wait_for(frames_flow(1), "frames during the flood", engine)
        for _ in range(len(BROKEN) + 2):
            udp.sendto(_osc("/streamvj/preset/next", 1), ("127.0.0.1", port))
            udp.sendto(_osc("/streamvj/preset/prev", 1), ("127.0.0.1", port))
        for name in BROKEN:
            # The flood overfills the kernel's receive buffer (tens of MB of 60 kB prompts), so
            # datagrams sent right after it can be dropped before the engine sees them: UDP is
            # lossy, and controllers resend. Resend the load until the refusal is logged.
            resend = _Resend(udp, _osc("/streamvj/preset/load", name), ("127.0.0.1", port))
            wait_for(lambda name=name, resend=resend: resend() or any(
                repr(name) in line and "preset" in line for line in engine.lines),
                     f"a line saying why {name} was refused", engine)
        wait_for(frames_flow(5), "frames after the broken presets", engine)
        assert engine.popen.poll() is None
        assert not any("Traceback" in line for line in engine.lines), "\n".join(engine.lines[-40:])
    finally:
        udp.close()
        out.close()
        code = engine.stop()
    assert code == 0, "\n".join(engine.lines[-30:])
    assert max(len(line) for line in engine.lines) < 2000  # values are cut short in log lines
