"""Cold and warm start: seconds from `run_engine.py run` to the first output frame, as JSON.

A VJ who restarts the engine mid-show waits this long. "cold" starts with empty compile
caches (a fresh torch.compile / inductor folder and TensorRT folder, engine/accel/
compile_cache.py and trt_cache.py); "warm" runs the same preset again on the caches the
cold run filled. The clock starts when the process is spawned and stops when the first
frame arrives on the output's shared memory, read by this process: model load, pipeline
build, compile (or cache load), warm-up and the first frame are all inside. Python's own
imports are warm in both (the OS file cache), as after any earlier run on that machine.
`engine_cpu_s` is the engine's CPU time until then: on a busy machine, steadier than the clock.

    python benchmarks/cold_start.py --model tiny --size 64 --acceleration compile --device cpu
    python benchmarks/cold_start.py --model sd-turbo-random --size 512 --acceleration compile   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients"))
sys.path.insert(0, str(ROOT))
import streamvj_shm_client as client  # noqa: E402

from benchmarks.engine_process import EngineProcess, EngineSettings, compile_lines, write_preset  # noqa: E402

WARMED = re.compile(r"pipeline warmed up in ([\d.]+) s")
# Where torch would otherwise put its caches; unset so the run uses the folder given here.
TORCH_CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def cache_env(cache_dir: Path) -> dict[str, str]:
    """The environment of a run whose compile and TensorRT caches live in `cache_dir` alone."""
    env = {k: v for k, v in os.environ.items() if k not in TORCH_CACHE_VARS}
    env.update(STREAMVJ_COMPILE_CACHE=str(cache_dir / "inductor"), STREAMVJ_TRT_CACHE=str(cache_dir / "trt"),
               PYTHONUNBUFFERED="1")
    return env


def cpu_seconds(pid: int) -> float | None:
    """The process's CPU time so far (user + system), from /proc on Linux; None elsewhere.

    On a shared machine the wall clock depends on who else runs; the CPU time much less."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)  # utime, stime


def warm_up_seconds(lines: list[str]) -> float | None:
    for line in lines:
        match = WARMED.search(line)
        if match:
            return float(match.group(1))
    return None


def time_to_first_frame(settings: EngineSettings, cache_dir: Path, shm_name: str, timeout: float) -> dict:
    """Start the engine on `cache_dir`'s caches; seconds until its first frame is in shared memory."""
    folder = Path(tempfile.mkdtemp(prefix="streamvj-coldstart-"))
    preset = write_preset(folder, "coldstart", settings, source=f"pattern:{settings.size}x{settings.size}@60",
                          sinks=[f"shm:{shm_name}"])
    reader = client.ShmReader(shm_name)
    engine = EngineProcess(preset, env=cache_env(cache_dir), inherit_env=False)
    first = cpu = None
    try:
        deadline = engine.started + timeout
        while engine.alive() and time.perf_counter() < deadline:
            if reader.read() is not None:
                first = time.perf_counter() - engine.started
                cpu = cpu_seconds(engine.proc.pid)
                break
            time.sleep(0.005)
    finally:
        reader.close()
        code = engine.stop()
        shutil.rmtree(folder, ignore_errors=True)
    result = {"first_frame_s": round(first, 2) if first is not None else None, "engine_cpu_s": cpu,
              "warm_up_s": warm_up_seconds(engine.lines), "compile_log": compile_lines(engine.lines), "exit": code}
    if code != 0:
        result["log_tail"] = engine.log_tail(8).strip().splitlines()  # why it did not stop cleanly
    if first is None:
        result["error"] = (f"no frame within {timeout:g} s" if engine.proc.returncode in (None, 0, -15)
                           else "the engine exited before its first frame") + ": " + engine.log_tail(5).strip()
    return result


def measure(settings: EngineSettings, runs: list[str], cache_dir: Path | None, timeout: float,
            shm_prefix: str, after_each: Callable[[dict], None] = lambda result: None) -> dict:
    """{"cold": {...}, "warm": {...}, "warm_speedup": x}: each run in `runs` ("cold" empties the caches).

    `after_each` gets the result so far after every run (a cut run still leaves the cold number)."""
    own = cache_dir is None
    cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix="streamvj-cache-"))
    out: dict = {"model": settings.model, "size": settings.size, "acceleration": settings.acceleration,
                 "device": settings.device, "cache_dir": str(cache_dir)}
    try:
        for k, run in enumerate(runs):
            if run == "cold":
                shutil.rmtree(cache_dir, ignore_errors=True)
            cache_dir.mkdir(parents=True, exist_ok=True)
            out[run] = time_to_first_frame(settings, cache_dir, f"{shm_prefix}_{k}", timeout)
            after_each(out)
    finally:
        if own:
            shutil.rmtree(cache_dir, ignore_errors=True)
    cold, warm = out.get("cold", {}).get("first_frame_s"), out.get("warm", {}).get("first_frame_s")
    if cold and warm:
        out["warm_speedup"] = round(cold / warm, 2)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny | sd-turbo-random | a folder | a Hugging Face id")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--t-index", default="32", help="comma-separated t_index_list (default 32: one step)")
    p.add_argument("--cfg", default="none")
    p.add_argument("--acceleration", default="compile", help="none | compile | tensorrt | auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="cold,warm", help="comma-separated: cold (empty caches) and/or warm")
    p.add_argument("--cache-dir", type=Path,
                   help="the caches' folder (default: a temporary one, removed afterwards); cold empties it")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each run's first frame")
    p.add_argument("--shm-prefix", default=f"svjcold_{os.getpid()}", help="output block names start with this")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.runs or any(r not in ("cold", "warm") for r in args.runs):
        p.error("--runs takes cold and/or warm, e.g. cold,warm")
    try:
        args.t_index = tuple(int(t) for t in args.t_index.split(","))
    except ValueError:
        p.error(f"--t-index takes comma-separated integers, got {args.t_index!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = EngineSettings(model=args.model, size=args.size, cfg=args.cfg, acceleration=args.acceleration,
                              device=args.device, t_index=args.t_index)

    def save(result: dict) -> None:
        if args.json_out:
            args.json_out.write_text(json.dumps(result) + "\n")

    result = measure(settings, args.runs, args.cache_dir, args.timeout, args.shm_prefix, after_each=save)
    save(result)
    print(json.dumps(result))
    return 0 if all(result[r].get("first_frame_s") for r in args.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
