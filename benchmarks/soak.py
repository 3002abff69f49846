"""Soak test: the engine process under a hostile live set, checking it never stalls or leaks.

For `--seconds`, while an upstream writer process feeds shared memory (and is killed and
restarted every `--writer-restart` seconds), a control thread sends a few hundred OSC
messages a second (valid and invalid, random values), switches presets every few seconds
(live-only, load-time rebuild, and a broken one), and a reader takes the output. Reported
as JSON: output frames, the longest gap between output frames while a writer was alive,
the engine's RSS and thread count at start and end, error lines, and whether it exited 0.

    python benchmarks/soak.py --seconds 180
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pythonosc.udp_client import SimpleUDPClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients"))
sys.path.insert(0, str(ROOT))
import streamvj_shm_client as client  # noqa: E402

from bridges.video.shm_block import unlink  # noqa: E402

PRESET = """name: {name}
description: soak preset
load:
  model: {model}
  width: {size}
  height: {size}
  source: "shm:{shm_in}"
  sinks: ["shm:{shm_out}"]
live:
  prompt: "{prompt}"
  t_index_list: {steps}
  guidance_scale: {guidance}
"""

WRITER = """
import sys, time, numpy as np
sys.path.insert(0, {clients!r})
import streamvj_shm_client as client
w = client.ShmWriter({name!r}, 160, 120)
y, x = np.mgrid[0:120, 0:160]
frame = np.empty((120, 160, 4), np.uint8)
frame[..., 3] = 255
i = 0
while True:
    frame[..., 0] = (x + i) % 256
    frame[..., 1] = (y * 2 + i) % 256
    frame[..., 2] = (i * 3) % 256
    w.write(frame)
    i += 1
    time.sleep(1 / 60)
"""


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in MB, threads) of a Linux process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) // 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--writer-restart", type=float, default=20.0)
    parser.add_argument("--osc-rate", type=float, default=200.0, help="OSC messages per second")
    args = parser.parse_args()
    rng = random.Random(1)
    tag = f"soak{os.getpid()}"
    shm_in, shm_out = f"{tag}_in", f"{tag}_out"
    folder = Path(tempfile.mkdtemp(prefix="streamvj-soak-"))
    common = dict(shm_in=shm_in, shm_out=shm_out)
    presets = {
        "a": dict(model="tiny", size=64, prompt="neon", steps="[32, 45]", guidance=1.2),
        "b": dict(model="tiny", size=64, prompt="ink", steps="[20, 40]", guidance=2.0),  # live-only
        "c": dict(model="tiny", size=96, prompt="fire", steps="[10, 25, 40]", guidance=1.0),  # rebuild
        "broken": dict(model="./no/such/model", size=64, prompt="x", steps="[32, 45]", guidance=1.0),
    }
    for name, values in presets.items():
        (folder / f"{name}.yaml").write_text(PRESET.format(name=name, **values, **common))

    def start_writer() -> subprocess.Popen:
        code = WRITER.format(clients=str(ROOT / "clients"), name=shm_in)
        return subprocess.Popen([sys.executable, "-c", code])

    writer = start_writer()
    engine = subprocess.Popen(
        [sys.executable, str(ROOT / "run_engine.py"), "run", "--presets-dir", str(folder), "--preset", "a",
         "--osc-port", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log_lines: list[str] = []
    osc_port = threading.Event()
    port_box: list[int] = []

    def drain() -> None:
        for line in engine.stderr:
            log_lines.append(line)
            if "OSC on udp://" in line and not port_box:
                port_box.append(int(line.split("udp://")[1].split(":")[1].split("/")[0]))
                osc_port.set()

    threading.Thread(target=drain, daemon=True).start()
    if not osc_port.wait(120):
        raise SystemExit("engine did not start:\n" + "".join(log_lines))
    osc = SimpleUDPClient("127.0.0.1", port_box[0])
    reader = client.ShmReader(shm_out)
    stop = threading.Event()
    sent = {"osc": 0, "switches": 0}

    def control() -> None:
        next_switch = time.monotonic() + 3
        order = ["b", "c", "broken", "a", "c", "b", "a"]
        while not stop.is_set():
            choice = rng.random()
            if choice < 0.3:
                osc.send_message("/streamvj/guidance_scale", rng.uniform(-5, 25))  # some out of range
            elif choice < 0.5:
                osc.send_message("/streamvj/prompt", rng.choice(["neon", "ink", "fire", "x" * 5000, ""]))
            elif choice < 0.65:
                osc.send_message(f"/streamvj/fx_{rng.choice(['hue', 'saturation', 'feedback', 'blend'])}",
                                 rng.uniform(-1, 2))
            elif choice < 0.75:
                osc.send_message("/streamvj/t_index_list", sorted(rng.sample(range(50), rng.choice([2, 3]))))
            elif choice < 0.85:
                osc.send_message("/streamvj/seed", rng.randrange(0, 2**31))
            else:
                osc.send_message(rng.choice(["/streamvj/nope", "/streamvj/seed", "/x"]), "garbage")
            sent["osc"] += 1
            if time.monotonic() >= next_switch:
                osc.send_message("/streamvj/preset/load", order[sent["switches"] % len(order)])
                sent["switches"] += 1
                next_switch += 4
            time.sleep(1.0 / args.osc_rate)

    threading.Thread(target=control, daemon=True).start()
    t_start = time.monotonic()
    rss0, threads0 = proc_stats(engine.pid)
    frames, last_frame, max_gap = 0, time.monotonic(), 0.0
    writer_since = time.monotonic()
    next_restart = t_start + args.writer_restart
    restarts = 0
    samples: list[tuple[int, int, int]] = []  # (second, RSS MB, threads) every 30 s
    next_sample = t_start + 30
    while time.monotonic() - t_start < args.seconds and engine.poll() is None:
        now = time.monotonic()
        if now >= next_sample:
            samples.append((round(now - t_start), *proc_stats(engine.pid)))
            next_sample += 30
        if now >= next_restart:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer = start_writer()
            writer_since, next_restart = time.monotonic(), now + args.writer_restart
            restarts += 1
        if reader.read() is not None:
            frames += 1
            if now - writer_since > 3.0:  # gaps right after a writer restart are expected
                max_gap = max(max_gap, now - last_frame)
            last_frame = now
        else:
            time.sleep(0.002)
    alive = engine.poll() is None
    rss1, threads1 = proc_stats(engine.pid) if alive else (0, 0)
    stop.set()
    reader.close()
    engine.send_signal(signal.SIGTERM)
    try:
        code = engine.wait(60)
    except subprocess.TimeoutExpired:
        engine.kill()
        code = "killed"
    writer.kill()
    unlink(shm_in)  # the killed writer could not remove its block; the engine removes its own output block
    result = {
        "seconds": args.seconds, "output_frames": frames, "fps": round(frames / args.seconds, 1),
        "max_gap_s_with_writer_up": round(max_gap, 3), "writer_restarts": restarts, "osc_sent": sent["osc"],
        "preset_switches": sent["switches"], "rss_mb_start": rss0, "rss_mb_end": rss1,
        "threads_start": threads0, "threads_end": threads1, "samples_s_rss_threads": samples, "alive_until_end": alive, "exit_code": code,
        "tracebacks": sum("Traceback" in line for line in log_lines),
        "error_lines": sum(" ERROR " in line for line in log_lines),
        "on_air_log": [line.split("streamvj.show: ")[1].strip() for line in log_lines if "on air" in line][-3:],
    }
    print(json.dumps(result, indent=1))
    return 0 if alive and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
