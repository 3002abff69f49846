"""The real runtime end to end, as JSON: `run` with a pattern source and a null sink, then
shared memory in and out with a writer and a reader process.

1. pattern -> engine -> null: the engine's own rate (`run`'s exit line), the source at its
   highest rate (240 fps), nothing downstream.
2. shm writer process -> engine -> shm -> this process: the writer publishes frames at
   `--fps` (a camera's or TouchDesigner's rate), holding one scene and switching to another
   every `--switch-every` frames. Reported: output fps; glass-to-glass latency p50/p99, from
   the writer's write of a new scene to the engine's publish of the first output that shows
   it (the block headers' time.time_ns stamps: the same clock, no polling delay counted); the
   output's frame-interval jitter (p99 of |interval - median|), next to the writer's own.
   A static scene renders the same frame again (fixed noise), so "shows it" is a change of
   the output, far above rounding.

    python benchmarks/runtime_e2e.py --model sd-turbo-random --size 512 --acceleration compile --fps 120
    python benchmarks/runtime_e2e.py --model tiny --size 64 --device cpu --fps 10 --seconds 3   # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients"))
sys.path.insert(0, str(ROOT))
import streamvj_shm_client as client  # noqa: E402

from benchmarks.engine_process import (  # noqa: E402
    EngineProcess,
    EngineSettings,
    compile_lines,
    parse_summary,
    write_preset,
)

RUNNING = "running: source"  # run_engine.py logs it once the first pipeline is built and warmed up
CHANGED = 4.0  # mean |difference| (0..255) that counts as "the output shows the new scene"

# Paced by a sleep to 1 ms before each deadline, then a spin: a camera-like steady rate.
WRITER = """
import json, sys, time
import numpy as np
sys.path.insert(0, {clients!r})
import streamvj_shm_client as client
name, size, fps, every, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
y, x = np.mgrid[0:size, 0:size]
scenes = []
for k in range(2):
    f = np.empty((size, size, 4), np.uint8)
    f[..., 0] = (x * (3 + 5 * k)) % 256
    f[..., 1] = 40 + 170 * k
    f[..., 2] = (y * (7 - 4 * k)) % 256
    f[..., 3] = 255
    scenes.append(f)
writer = client.ShmWriter(name, size, size)
writer.write(scenes[0])
print("ready", flush=True)
sys.stdin.readline()
switches, stamps, n, t0 = [], [], 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    scene = (n // every) % 2
    due = t0 + n / fps
    while (left := due - time.perf_counter()) > 0:
        if left > 0.001:
            time.sleep(left - 0.001)
    stamp = time.time_ns()
    if n % every == 0:
        switches.append(stamp)
    writer.write(scenes[scene])
    stamps.append(stamp)
    n += 1
print(json.dumps({{"frames": n, "switches_ns": switches, "stamps_ns": stamps}}), flush=True)
sys.stdin.readline()
writer.close()
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def jitter(stamps_ns: list[int]) -> dict:
    """Median frame interval and p99 of |interval - median|, in ms."""
    intervals = [(b - a) / 1e6 for a, b in zip(stamps_ns, stamps_ns[1:])]
    if len(intervals) < 2:
        return {}
    median = statistics.median(intervals)
    return {"interval_median_ms": round(median, 3),
            "jitter_p99_ms": round(percentile([abs(i - median) for i in intervals], 0.99), 3)}


def latencies(switches_ns: list[int], outputs: list[tuple[int, int, float]]) -> tuple[list[float], int]:
    """(ms from each scene switch to the first changed output published after it, switches never seen).

    `outputs`: (index, publish time_ns, mean |difference| from the output before)."""
    found, missed = [], 0
    changes = [stamp for _, stamp, diff in outputs if diff >= CHANGED]
    for k, switch in enumerate(switches_ns[1:], 1):  # the first "switch" is the start
        end = switches_ns[k + 1] if k + 1 < len(switches_ns) else float("inf")
        seen = next((c for c in changes if switch <= c < end), None)
        if seen is None:
            missed += 1
        else:
            found.append((seen - switch) / 1e6)
    return found, missed


def run_null(settings: EngineSettings, seconds: float, timeout: float) -> dict:
    """pattern at 240 fps -> engine -> null sink for `seconds` after it is running."""
    folder = Path(tempfile.mkdtemp(prefix="streamvj-e2e-"))
    preset = write_preset(folder, "e2e_null", settings, f"pattern:{settings.size}x{settings.size}@240", ["null"])
    with EngineProcess(preset) as engine:
        deadline = time.monotonic() + timeout
        while engine.alive() and not any(RUNNING in line for line in engine.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = engine.alive() and any(RUNNING in line for line in engine.lines)
        if running:
            time.sleep(seconds)
        code = engine.stop()
    summary = parse_summary(engine.lines)
    if not running or summary is None:
        return {"error": f"the engine did not run (exit {code}): {engine.log_tail(5).strip()}"}
    return {**summary, "exit": code, "compile_log": compile_lines(engine.lines)}


def run_shm(settings: EngineSettings, fps: float, every: int, seconds: float, timeout: float, tag: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="streamvj-e2e-"))
    shm_in, shm_out = f"{tag}_in", f"{tag}_out"
    preset = write_preset(folder, "e2e_shm", settings, f"shm:{shm_in}", [f"shm:{shm_out}"])
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(clients=str(ROOT / "clients")), shm_in,
                               str(settings.size), str(fps), str(every), str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reader = client.ShmReader(shm_out)
    outputs: list[tuple[int, int, float]] = []
    try:
        if writer.stdout.readline().strip() != "ready":
            return {"error": "the shared-memory writer did not start"}
        with EngineProcess(preset) as engine:
            deadline = time.monotonic() + timeout
            while engine.alive() and time.monotonic() < deadline and reader.read() is None:
                time.sleep(0.01)  # the engine renders the writer's first frame once it is warm
            if not engine.alive() or time.monotonic() >= deadline:
                return {"error": f"no output within {timeout:g} s: {engine.log_tail(5).strip()}"}
            writer.stdin.write("go\n")
            writer.stdin.flush()
            previous: np.ndarray | None = None
            end = time.monotonic() + seconds + 1.0  # the last input's output arrives after the writer stops
            while time.monotonic() < end:
                frame = reader.read()
                if frame is None:
                    time.sleep(0.0002)  # poll like a receiving app would, without taking a core
                    continue
                small = frame[::4, ::4, :3].astype(np.int16)  # a quarter of the rows and columns is enough
                diff = 0.0 if previous is None else float(np.abs(small - previous).mean())
                outputs.append((reader.index, reader.timestamp_ns, diff))
                previous = small
            record = json.loads(writer.stdout.readline())
            code = engine.stop()
    finally:
        reader.close()
        if writer.poll() is None:
            try:
                writer.stdin.write("done\n")
                writer.stdin.flush()
                writer.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                writer.kill()
                writer.wait(10)
        client._unlink(shm_in)  # normally gone already (the writer closed it); not after a killed writer
    stamps = [stamp for _, stamp, _ in outputs]
    lat, missed = latencies(record["switches_ns"], outputs)
    span_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
    result = {"input_fps": fps, "writer_frames": record["frames"], "output_frames": len(outputs),
              "output_fps": round((len(stamps) - 1) / span_s, 1) if span_s else 0.0,
              "switches": len(record["switches_ns"]) - 1, "switches_not_seen": missed, "exit": code,
              "output": jitter(stamps), "writer": jitter(record["stamps_ns"])}
    if lat:
        result.update(latency_p50_ms=round(percentile(lat, 0.5), 2), latency_p99_ms=round(percentile(lat, 0.99), 2),
                      latency_max_ms=round(max(lat), 2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd-turbo-random")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--t-index", default="32", help="comma-separated t_index_list (default 32: one step)")
    p.add_argument("--cfg", default="none")
    p.add_argument("--acceleration", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--fps", type=float, default=120.0, help="the writer's frame rate (one the model sustains)")
    p.add_argument("--switch-every", type=int, default=12, help="writer frames per scene")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds measured in each part")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each engine to start")
    p.add_argument("--tag", default=f"svje2e_{os.getpid()}", help="shared-memory blocks are <tag>_in, <tag>_out")
    p.add_argument("--parts", default="null,shm", help="comma-separated: null and/or shm")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    settings = EngineSettings(model=args.model, size=args.size, cfg=args.cfg, acceleration=args.acceleration,
                              device=args.device, t_index=tuple(int(t) for t in args.t_index.split(",")))
    parts = {part.strip() for part in args.parts.split(",")}
    result: dict = {"model": args.model, "size": args.size, "t_index_list": list(settings.t_index),
                    "acceleration": args.acceleration, "device": args.device}
    if "null" in parts:
        result["pattern_to_null"] = run_null(settings, args.seconds, args.timeout)
    if "shm" in parts:
        result["shm_to_shm"] = run_shm(settings, args.fps, args.switch_every, args.seconds, args.timeout, args.tag)
    text = json.dumps(result)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    failed = [k for k in ("pattern_to_null", "shm_to_shm") if "error" in result.get(k, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
