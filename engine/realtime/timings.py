"""Per-frame stage timings, end-to-end latency and rates over rolling windows.

Every window is a fixed-size ring array allocated once, so a four-hour set records into
the same memory it started with. Recording is O(1) under one lock (several threads
record: the source, the render loop, the sinks); percentiles are computed only when a
snapshot is asked for (about once a second, for the status line and OSC feedback).

Stages, in frame order (host seconds, each on the thread that does the work):

- receive: the source read and the copy into the engine (source thread);
- params: this frame's live-parameter snapshot applied to the pipeline (LivePlayer);
- preprocess: the pipeline's input stage: similarity filter, upload (or device fit);
- model: the rest of the processor call: the frame step (encode, stream batch, decode,
  FX). On CUDA the GPU runs it asynchronously, so this is the launch and any wait for a
  buffer; the wait for the result's bytes is in postprocess;
- postprocess: the output to the host and into the output ring, handed to the sinks;
- send: one sink's send (sink threads).

`params` and `preprocess` are reported by the processor (FrameResult.stage_times, any name
gets its own ring on first sight); the runtime counts the rest of the call as `model`.
Latency is from a frame's arrival (Frame.t_arrival) to its output being handed to sinks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

STAGES = ("receive", "params", "preprocess", "model", "postprocess", "send")
RATES = ("in", "out", "sent")  # frames received, handed to sinks, sent by the primary sink group
FPS_HORIZON_S = 2.0


class Ring:
    """The last `size` float samples in a preallocated array."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ring size must be >= 1, got {size}")
        self.values = np.zeros(size, dtype=np.float64)
        self.count = 0  # samples ever added
        self._i = 0

    def add(self, value: float) -> None:
        self.values[self._i] = value
        self._i = (self._i + 1) % len(self.values)
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, len(self.values))

    def samples(self) -> np.ndarray:
        """The stored samples, oldest first (a copy)."""
        n = len(self)
        if n < len(self.values):
            return self.values[:n].copy()
        return np.roll(self.values, -self._i)

    def clear(self) -> None:
        self.count = 0
        self._i = 0


def _ms_stats(ring: Ring) -> dict[str, float]:
    values = ring.samples()
    if not len(values):
        return {"median_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "n": 0}
    p50, p90, p99 = np.percentile(values, (50, 90, 99)) * 1000.0
    return {"median_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "n": len(values)}


def rate(stamps: np.ndarray, now: float, horizon_s: float = FPS_HORIZON_S) -> float:
    """Events per second from ascending timestamps, over the last `horizon_s`.

    A gap since the newest event that is longer than the usual interval counts, so the
    rate falls while output is stalled instead of freezing at its last value.
    """
    recent = stamps[stamps >= now - horizon_s]
    k = len(recent)
    if k < 2:
        return 0.0
    span = float(recent[-1] - recent[0])
    if span <= 0:
        return 0.0
    interval = span / (k - 1)
    if now - recent[-1] > interval:
        return k / (now - recent[0])
    return (k - 1) / span


class Timings:
    """Rolling timings for one runtime; thread-safe; `clock` is injectable for tests."""

    def __init__(self, window: int = 240, clock: Callable[[], float] = time.perf_counter,
                 fps_horizon_s: float = FPS_HORIZON_S) -> None:
        self.window = window
        self.clock = clock
        self.fps_horizon_s = fps_horizon_s
        self._lock = threading.Lock()
        self._stages: dict[str, Ring] = {name: Ring(window) for name in STAGES}
        self._rates: dict[str, Ring] = {name: Ring(window) for name in RATES}
        self._latency = Ring(window)
        self._skips = Ring(window)  # 1.0 per skipped frame, 0.0 per rendered one
        self._counts: dict[str, int] = {}

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            ring = self._stages.get(stage)
            if ring is None:  # a processor-reported sub-stage: allocated once, on first sight
                ring = self._stages[stage] = Ring(self.window)
            ring.add(seconds)

    def tick(self, rate_name: str, t: float | None = None) -> None:
        """Stamp one event of a rate ("in", "out", "sent")."""
        t = self.clock() if t is None else t
        with self._lock:
            self._rates[rate_name].add(t)

    def frame_out(self, t_arrival: float, t_handoff: float, skipped: bool = False) -> None:
        """A processed frame was handed to the sinks at `t_handoff`."""
        with self._lock:
            self._latency.add(t_handoff - t_arrival)
            self._skips.add(1.0 if skipped else 0.0)
            self._rates["out"].add(t_handoff)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def reset(self) -> None:
        with self._lock:
            for ring in (*self._stages.values(), *self._rates.values(), self._latency, self._skips):
                ring.clear()
            self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """fps (out), fps_in, fps_sent, latency median/p90/p99 ms, rolling skip ratio,
        per-stage median/p90/p99 ms, and event counts."""
        now = self.clock()
        with self._lock:
            stamps = {name: ring.samples() for name, ring in self._rates.items()}
            latency = _ms_stats(self._latency)
            stages = {name: _ms_stats(ring) for name, ring in self._stages.items()}
            skips = self._skips.samples()
            counts = dict(self._counts)
        return {
            "fps": rate(stamps["out"], now, self.fps_horizon_s),
            "fps_in": rate(stamps["in"], now, self.fps_horizon_s),
            "fps_sent": rate(stamps["sent"], now, self.fps_horizon_s),
            "latency_ms": latency["median_ms"],
            "latency_p90_ms": latency["p90_ms"],
            "latency_p99_ms": latency["p99_ms"],
            "skip_ratio": float(skips.mean()) if len(skips) else 0.0,
            "stages": stages,
            "counts": counts,
        }

