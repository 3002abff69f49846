"""OSC from outside reaches the picture: real UDP -> engine process -> shared memory -> reader."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
from pythonosc.udp_client import SimpleUDPClient

from tests.paths import REPO as ROOT

sys.path.insert(0, str(ROOT / "clients"))
import streamvj_shm_client as client  # noqa: E402


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(seen)}")


def is_grey(frame: np.ndarray) -> bool:
    rgb = frame[..., :3].astype(np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 1 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 1)


def test_osc_message_changes_the_output_and_oscquery_reports_it():
    """Also: with -v every accepted OSC message leaves a debug line, and a refused preset name
    reaches OSC feedback as /status/error (not only the log)."""
    name_out = f"osc_e2e_{os.getpid()}"
    feedback, received = feedback_receiver()
    engine = subprocess.Popen(
        [sys.executable, str(ROOT / "run_engine.py"), "-v", "run", "--sink", f"shm:{name_out}", "--width", "64",
         "--height", "64", "--osc-port", "0", "--oscquery-port", "0",
         "--osc-feedback", f"127.0.0.1:{feedback.server_address[1]}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader = client.ShmReader(name_out)
    try:
        osc = wait_for_line(engine, r"OSC on udp://([\d.]+):(\d+)")
        query = wait_for_line(engine, r"OSCQuery on http://([\d.]+):(\d+)/")
        wait_for_line(engine, r"running: source")
        deadline = time.monotonic() + 60
        frame = None
        while frame is None and time.monotonic() < deadline:
            frame = reader.read()
            time.sleep(0.01)
        assert frame is not None and not is_grey(frame)

        sender = SimpleUDPClient(osc.group(1), int(osc.group(2)))
        sender.send_message("/streamvj/fx_saturation", 0.0)
        wait_for_line(engine, r"streamvj\.osc: OSC /streamvj/fx_saturation \(0\.0,\)")
        grey = False
        while not grey and time.monotonic() < deadline:
            frame = reader.read()
            grey = frame is not None and is_grey(frame)
            time.sleep(0.005)
        assert grey, "the OSC change never reached the picture"

        url = f"http://{query.group(1)}:{query.group(2)}/streamvj/fx_saturation"
        with urllib.request.urlopen(url, timeout=10) as response:
            node = json.load(response)
        assert node["VALUE"] == [0.0]

        sender.send_message("/streamvj/preset/load", "nosuch")
        while time.monotonic() < deadline and not any(
                "no nosuch.yaml" in v[0] for v in received.get("/streamvj/status/error", [])):
            time.sleep(0.02)
        errors = [v[0] for v in received.get("/streamvj/status/error", [])]
        assert any("preset 'nosuch' not loaded" in e and "no nosuch.yaml" in e for e in errors), errors
    finally:
        reader.close()
        engine.send_signal(signal.SIGTERM)
        try:
            engine.communicate(timeout=60)
        finally:
            if engine.poll() is None:
                engine.kill()
            feedback.shutdown()
    assert engine.returncode == 0


def feedback_receiver():
    import threading

    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import BlockingOSCUDPServer

    received: dict[str, list] = {}
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.setdefault(address, []).append(args))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    return server, received


def test_a_failed_start_is_reported_over_feedback():
    server, received = feedback_receiver()
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "run_engine.py"), "run", "--model", "./no/such/model", "--no-osc",
             "--osc-feedback", f"127.0.0.1:{server.server_address[1]}"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ("error",) not in received.get("/streamvj/status/state", []):
            time.sleep(0.02)
    finally:
        server.shutdown()
    assert result.returncode == 2
    assert received["/streamvj/status/state"][:1] == [("loading",)] and ("error",) in received["/streamvj/status/state"]
    assert "does not exist" in received["/streamvj/status/error"][-1][0]


def test_status_feedback_reaches_the_configured_address():
    server, received = feedback_receiver()
    engine = subprocess.Popen(
        [sys.executable, str(ROOT / "run_engine.py"), "run", "--sink", "null", "--width", "64", "--height", "64",
         "--no-osc", "--osc-feedback", f"127.0.0.1:{server.server_address[1]}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (received.get("/streamvj/status/state") and any(
                v and v[0] > 0 for v in received.get("/streamvj/status/fps", []))
                and received.get("/streamvj/status/backend")):
            time.sleep(0.05)
        assert ("running",) in received.get("/streamvj/status/state", [])
        assert any(v[0] > 0 for v in received["/streamvj/status/fps"])
        assert received.get("/streamvj/status/preset", [])[-1] == ("tiny",)
        assert received.get("/streamvj/status/backend", [])[-1] == ("eager",)  # the tiny preset on a CPU
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.communicate(timeout=60)
        finally:
            if engine.poll() is None:
                engine.kill()
            server.shutdown()
    assert engine.returncode == 0
