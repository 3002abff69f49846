"""The engine as a real process for benchmarks: a preset written to a folder, `run_engine.py run`, its log.

benchmarks/cold_start.py and benchmarks/runtime_e2e.py start the engine exactly as a VJ does
(a preset, `run`, a source and sinks), read its output from shared memory, and stop it with
SIGTERM; its stderr is collected on a thread so a full pipe never stalls it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRESET = """name: {name}
description: written by a streamvj benchmark
load:
  model: {model}
  width: {size}
  height: {size}
  cfg_type: {cfg}
  acceleration: {acceleration}
  device: {device}
  dtype: {dtype}
  source: "{source}"
  sinks: [{sinks}]
live:
  prompt: "neon jellyfish drifting through a cathedral"
  t_index_list: {t_index}
  guidance_scale: 1.2
  similarity_enabled: {similarity}
"""
# The exit line of `run` (run_engine.py's _summary).
SUMMARY = re.compile(r"stopped after (\d+) frames \(([\d.]+) fps over ([\d.]+) s; ([\d.]+) fps at the end; (\d+) skipped\)")


@dataclass(frozen=True)
class EngineSettings:
    model: str = "tiny"
    size: int = 64
    cfg: str = "none"
    acceleration: str = "none"
    device: str = "auto"
    dtype: str = "auto"
    t_index: tuple[int, ...] = (32,)
    similarity: bool = False


def write_preset(folder: Path, name: str, settings: EngineSettings, source: str, sinks: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(PRESET.format(
        name=name, model=settings.model, size=settings.size, cfg=settings.cfg, acceleration=settings.acceleration,
        device=settings.device, dtype=settings.dtype, source=source, sinks=", ".join(f'"{s}"' for s in sinks),
        t_index=list(settings.t_index), similarity=str(settings.similarity).lower()))
    return path


def parse_summary(lines: list[str]) -> dict | None:
    """The numbers of `run`'s exit line, or None when it never printed one."""
    for line in reversed(lines):
        match = SUMMARY.search(line)
        if match:
            frames, average, seconds, end_fps, skipped = match.groups()
            return {"frames": int(frames), "fps_average": float(average), "seconds": float(seconds),
                    "fps_at_end": float(end_fps), "skipped": int(skipped)}
    return None


def compile_lines(lines: list[str]) -> list[str]:
    """What torch.compile said while the engine started (engine/accel/compile_cache.py)."""
    return [line.split("streamvj.compile: ", 1)[1].strip() for line in lines if "streamvj.compile: " in line]


class EngineProcess:
    """`run_engine.py run --preset <path> --no-osc [extra]`; stop() sends SIGTERM and waits.

    `env` is added to this process's environment, or with inherit_env=False is the whole of it."""

    def __init__(self, preset: Path, extra: list[str] | None = None, env: dict[str, str] | None = None,
                 inherit_env: bool = True) -> None:
        self.lines: list[str] = []
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_engine.py"), "run", "--preset", str(preset),
             "--presets-dir", str(preset.parent), "--no-osc", *(extra or [])],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**(os.environ if inherit_env else {}), "PYTHONUNBUFFERED": "1", **(env or {})})
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | str = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = "killed"
        self._drain.join(5)
        return code

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, count: int = 15) -> str:
        return "".join(self.lines[-count:])
