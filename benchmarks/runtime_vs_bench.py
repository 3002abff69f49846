#!/usr/bin/env python3
"""The live runtime's frame rate against the bench's, side by side in one run (CPU or GPU).

`run_engine.py bench` times the pipeline alone; `run_engine.py run --sink null` is the whole
engine (source thread, render loop, sink thread, stats). Both use the same model, size and
steps; runs alternate so a noisy machine slows both alike. Prints a table and, with --json,
one JSON object with the medians and runtime/bench ratio.

  .venv/bin/python benchmarks/runtime_vs_bench.py --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "run_engine.py")]
STOPPED = re.compile(r"stopped after (\d+) frames \(.*?; ([\d.]+) fps at the end")


def run_fps(args: argparse.Namespace) -> float:
    cmd = [*CLI, "run", "--preset", args.preset, "--sink", "null", "--no-osc", "--device", args.device,
           "--width", str(args.size), "--height", str(args.size), "--acceleration", "none",
           # A live source's rate (a camera, TouchDesigner at 30 fps): it paces the run only when
           # the model is faster than it (then "paced" says so). Rendering it is part of the engine's cost.
           "--source", f"pattern:{args.size}x{args.size}@{args.source_fps:g}",
           "--frames", str(args.run_frames)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    match = STOPPED.search(out.stderr)
    if out.returncode != 0 or match is None:
        raise SystemExit(f"run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return float(match.group(2))


def bench_fps(args: argparse.Namespace) -> dict:
    cmd = [*CLI, "bench", "--model", "tiny", "--width", str(args.size), "--height", str(args.size),
           "--t-index", args.t_index, "--cfg", "self", "--frames", str(args.bench_frames), "--device", args.device,
           "--acceleration", "none", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"bench failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help="preset run plays (model tiny, steps as --t-index)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--t-index", default="32,45")
    p.add_argument("--device", default="cpu")
    p.add_argument("--source-fps", type=float, default=30.0, help="the test pattern's rate (default 30)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run-frames", type=int, default=150)
    p.add_argument("--bench-frames", type=int, default=60)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    runs, benches, info = [], [], {}
    for _ in range(args.rounds):
        b = bench_fps(args)
        benches.append(b["fps"])
        info = {k: b[k] for k in ("device_name", "torch", "threads", "width", "height", "t_index_list") if k in b}
        runs.append(run_fps(args))
    result = {**info, "rounds": args.rounds, "bench_fps": benches, "run_fps": runs,
              "bench_fps_median": statistics.median(benches), "run_fps_median": statistics.median(runs)}
    result["ratio"] = round(result["run_fps_median"] / result["bench_fps_median"], 3)
    result["source_fps"] = args.source_fps
    result["paced"] = result["bench_fps_median"] > args.source_fps  # then the ratio measures the source
    table = (f"bench {result['bench_fps_median']:.1f} fps  run {result['run_fps_median']:.1f} fps  "
             f"ratio {result['ratio']:.2f}  (rounds {args.rounds}: bench {benches}, run {runs})")
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
