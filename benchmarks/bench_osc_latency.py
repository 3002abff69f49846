"""OSC message -> visible frame latency, through the real OSC server, runtime and tiny model.

A python-osc client sends /streamvj/fx_saturation 0 (then 1, alternating); the time is
measured until the first frame that shows it reaches a sink (grey frames: R == G == B).
What it includes: UDP on loopback, validation into the ParamStore, waiting for the frame
in flight to finish, the next frame's render, and handoff to the sink.

    python benchmarks/bench_osc_latency.py [--size 128] [--trials 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from bridges.control.osc import OscServer  # noqa: E402
from bridges.video.pattern import PatternSource  # noqa: E402
from engine.config.schema import LiveParams, LoadSettings  # noqa: E402
from engine.core.pipeline import StreamPipeline  # noqa: E402
from engine.live.params import ParamStore  # noqa: E402
from engine.live.player import LivePlayer  # noqa: E402
from engine.models.load import load_model  # noqa: E402
from engine.realtime.runtime import Runtime  # noqa: E402


class GreyWatcher:
    """A sink that timestamps the first frame whose greyness matches what is awaited."""

    name = "grey-watcher"

    def __init__(self) -> None:
        self.want_grey: bool | None = None
        self.seen = threading.Event()
        self.t_seen = 0.0

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, rgba_u8: np.ndarray) -> None:
        if self.want_grey is None or self.seen.is_set():
            return
        rgb = rgba_u8[::4, ::4, :3].astype(np.int16)
        grey = bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 1 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 1)
        if grey == self.want_grey:
            self.t_seen = time.perf_counter()
            self.seen.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    live = LiveParams(t_index_list=[32, 45])
    pipe = StreamPipeline(load_model("tiny"), LoadSettings(model="tiny", width=args.size, height=args.size), live)
    store = ParamStore(live)
    player = LivePlayer(pipe, store)
    watcher = GreyWatcher()

    class Commands:
        def on_command(self, name, call_args):  # pause/preset commands are not part of this measurement
            pass

    server = OscServer(store, Commands(), port=0).start()
    runtime = Runtime(player, PatternSource(args.size, args.size, fps=60.0), [watcher]).start()
    client = SimpleUDPClient(*server.address)
    ms = []
    try:
        while runtime.frames_rendered < 5:
            time.sleep(0.01)
        for i in range(args.trials):
            grey = i % 2 == 0
            watcher.seen.clear()
            watcher.want_grey = grey
            t0 = time.perf_counter()
            client.send_message("/streamvj/fx_saturation", 0.0 if grey else 1.0)
            if not watcher.seen.wait(30):
                raise SystemExit(f"trial {i}: the change never showed")
            ms.append((watcher.t_seen - t0) * 1000.0)
            time.sleep(0.05)
        model_ms = runtime.stats()["stages"]["model"]["median_ms"]
    finally:
        runtime.stop()
        server.stop()
    ordered = sorted(ms)
    result = {"size": args.size, "trials": args.trials, "osc_to_frame_ms_median": round(statistics.median(ms), 2),
              "osc_to_frame_ms_p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
              "osc_to_frame_ms_max": round(ordered[-1], 2), "model_ms_median": round(model_ms, 2)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<26}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
