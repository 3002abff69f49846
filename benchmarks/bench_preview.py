"""What the web page's live preview costs the render loop, side by side in one run.

The real runtime renders the tiny model (a StreamPipeline) from the test pattern into a
NullSink. The pattern runs at 60 fps, faster than the model on a CPU, so the render loop
never waits for input: its output rate is its speed, and anything the preview takes from
it shows as fewer frames per second. Three set-ups, taken in turn, round after round, in a
rotating order (a shared machine's drift hits them alike):

- off: no preview;
- idle: the preview's taps on the source and the output, nobody watching (what every engine
  started with --web-port pays);
- watching: a page watching: output and input pictures at the preview's rate, scaled,
  JPEG-encoded and sent through the web server to a WebSocket client in this process.

Per set-up (medians over rounds; changes against `off` paired within each round): output
fps, the render loop's time per frame (1 / fps), the model stage's median and p90, latency
median; for `watching` the pictures per second and encode time; and the CPU time the
preview's own threads used per second (its sink thread, encoder, the web server and the
page's reader), which a noisy shared machine cannot blur: the fps comparison shows the
effect, the CPU time its size. The load average at the end is recorded: on a busy machine
the fps changes are mostly other processes.

    python benchmarks/bench_preview.py                  # 256x256, 3 rounds of 5 s
    python benchmarks/bench_preview.py --size 512 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridges.control.oscquery import OscQuery  # noqa: E402
from bridges.control.web_page import PageControl  # noqa: E402
from bridges.control.web_server import WebServer  # noqa: E402
from bridges.video.files import NullSink  # noqa: E402
from bridges.video.pattern import PatternSource  # noqa: E402
from bridges.video.preview import FPS, Preview, PreviewSink, PreviewSource  # noqa: E402
from engine.config.schema import Preset  # noqa: E402
from engine.core.build import build_pipeline  # noqa: E402
from engine.live.params import ParamStore  # noqa: E402
from engine.realtime.runtime import Runtime  # noqa: E402

SETUPS = ("off", "idle", "watching")
PATTERN_FPS = 60.0
WARM_S = 1.0


class _NoCommands:
    def on_command(self, command: Any, args: Any) -> None:
        raise AssertionError("the benchmark sends no commands")


class Viewer:
    """A page's WebSocket, reading preview pictures on its own thread (what a browser does)."""

    def __init__(self, server: WebServer) -> None:
        self.url = "ws://{}:{}/control".format(*server.address)
        self.pictures = 0
        self._ws: Any = None
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-viewer", daemon=True)
        self._thread.start()
        if not self._open.wait(10):
            raise RuntimeError(f"could not open {self.url}")

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(self.url, max_size=None) as ws:
            self._ws = ws
            ws.send(json.dumps({"preview": True}))
            self._open.set()
            try:
                for message in ws:
                    if isinstance(message, bytes):
                        self.pictures += 1
            except ConnectionClosed:
                return

    def close(self) -> None:
        self._ws.close()
        self._thread.join()


# The threads that do the preview's work: its sink group (sink-1; sink-0 is the NullSink), its
# encoder, the web server's loop and the page's reader. Their CPU time is the preview's cost in
# CPU that the render loop (and torch's own worker threads) could otherwise have used.
PREVIEW_THREADS = ("streamvj-sink-1", "streamvj-preview", "streamvj-web", "bench-viewer")


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds each named Python thread has used (Unix; empty elsewhere)."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            clock = time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
            out[thread.name] = out.get(thread.name, 0.0) + time.clock_gettime(clock)
        except (AttributeError, OSError, TypeError):  # not Unix, or the thread just ended
            continue
    return out


def run_once(pipeline: Any, size: int, seconds: float, preview: Preview | None) -> dict[str, float]:
    source: Any = PatternSource(size, size, fps=PATTERN_FPS)
    sinks: list[Any] = [NullSink()]
    if preview is not None:
        source = PreviewSource(source, preview)
        sinks.append(PreviewSink(preview))
    runtime = Runtime(pipeline, source, sinks)
    runtime.start()
    try:
        time.sleep(WARM_S)
        runtime.timings.reset()
        made0 = preview.stats()["output"]["made"] if preview is not None else 0
        cpu0, proc0 = thread_cpu_s(), time.process_time()
        n0, t0 = runtime.frames_rendered, time.perf_counter()
        time.sleep(seconds)
        n1, t1 = runtime.frames_rendered, time.perf_counter()
        cpu1, proc1 = thread_cpu_s(), time.process_time()
        stats = runtime.stats()
    finally:
        runtime.stop()
    model = stats["stages"].get("model", {})
    out = {"fps": (n1 - n0) / (t1 - t0), "frame_ms": 1000 * (t1 - t0) / max(1, n1 - n0),
           "model_median_ms": model.get("median_ms", 0.0), "model_p90_ms": model.get("p90_ms", 0.0),
           "latency_median_ms": stats.get("latency_ms", 0.0),
           "process_cpu_ms_per_s": 1000 * (proc1 - proc0) / (t1 - t0),
           "render_thread_cpu_ms_per_s": 1000 * _used(cpu0, cpu1, ("streamvj-render",)) / (t1 - t0),
           "preview_threads_cpu_ms_per_s": 1000 * _used(cpu0, cpu1, PREVIEW_THREADS) / (t1 - t0)}
    for name in PREVIEW_THREADS:
        out[f"cpu_ms_per_s[{name}]"] = 1000 * _used(cpu0, cpu1, (name,)) / (t1 - t0)
    if preview is not None:
        p = preview.stats()
        out["pictures_per_s"] = (p["output"]["made"] - made0) / (t1 - t0)
        out["encode_ms"] = p["output"]["encode_ms"]
    return out


def _used(before: dict[str, float], after: dict[str, float], names: tuple[str, ...]) -> float:
    return sum(after.get(n, 0.0) - before.get(n, 0.0) for n in names if n in after)


def bench(size: int = 256, seconds: float = 5.0, rounds: int = 3) -> dict[str, Any]:
    preset = Preset.model_validate({
        "name": "bench", "load": {"model": "tiny", "width": size, "height": size, "acceleration": "none",
                                  "device": "cpu", "source": "pattern", "sinks": ["null"]},
        "live": {"prompt": "neon jellyfish drifting through a cathedral"}})
    pipeline = build_pipeline(preset)
    store = ParamStore(preset.live)
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in SETUPS}
    for r in range(rounds):
        for setup in SETUPS[r % 3:] + SETUPS[:r % 3]:  # rotated: no set-up always runs first
            if setup == "off":
                samples[setup].append(run_once(pipeline, size, seconds, None))
                continue
            preview = Preview().start()
            server = viewer = None
            try:
                if setup == "watching":
                    server = WebServer(OscQuery(store, osc_port=9000),
                                       page=PageControl(store, _NoCommands()), preview=preview).start()
                    viewer = Viewer(server)
                samples[setup].append(run_once(pipeline, size, seconds, preview))
            finally:
                if viewer is not None:
                    viewer.close()
                if server is not None:
                    server.stop()
                preview.stop()
    result: dict[str, Any] = {"size": size, "seconds": seconds, "rounds": rounds, "preview_fps": FPS,
                              "pattern_fps": PATTERN_FPS}
    for setup, runs in samples.items():
        result[setup] = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    for setup in ("idle", "watching"):
        # Paired by round (the runs of one round are seconds apart): drift cancels, noise does not add up.
        pairs = list(zip(samples[setup], samples["off"]))
        result[setup]["fps_change_pct"] = round(statistics.median(
            100 * (a["fps"] / b["fps"] - 1) for a, b in pairs), 2)
        result[setup]["frame_ms_added"] = round(statistics.median(a["frame_ms"] - b["frame_ms"] for a, b in pairs), 3)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"preview cost, tiny model {result['size']}x{result['size']} on the CPU, "
             f"{result['rounds']} rounds x {result['seconds']:g} s (medians), load average {result['load_average']}",
             f"{'setup':<10}{'fps':>8}{'ms/frame':>10}{'model p50':>11}{'model p90':>11}{'latency':>9}"
             f"{'vs off':>9}{'pictures/s':>12}{'encode ms':>11}{'preview CPU ms/s':>18}"]
    for setup in SETUPS:
        r = result[setup]
        change = f"{r['fps_change_pct']:+.1f}%" if "fps_change_pct" in r else ""
        pics = f"{r['pictures_per_s']:.1f}" if "pictures_per_s" in r else ""
        enc = f"{r['encode_ms']:.2f}" if r.get("encode_ms") else ""
        lines.append(f"{setup:<10}{r['fps']:>8.2f}{r['frame_ms']:>10.2f}{r['model_median_ms']:>11.2f}"
                     f"{r['model_p90_ms']:>11.2f}{r['latency_median_ms']:>9.1f}{change:>9}{pics:>12}{enc:>11}"
                     f"{r['preview_threads_cpu_ms_per_s']:>18.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="model width and height (multiple of 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per set-up and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout (table on stderr)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = bench(args.size, args.seconds, args.rounds)
    if args.json:
        print(table(result), file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
