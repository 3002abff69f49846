#!/usr/bin/env python3
"""streamvj command line: `run` (the default) plays a preset live; `bench` measures speed.

This is the one place that reads a preset and wires bridges to the engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PRESETS_DIR = ROOT / "presets"
log = logging.getLogger("streamvj")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,45, got {text!r}") from None


def quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.accel.backend import resolve_acceleration, resolve_device, resolve_dtype
    from engine.bench import BenchOptions, bench_autopipeline, bench_stream, format_table
    from engine.errors import StreamVJError
    from engine.models.load import load_model

    quiet_libraries()
    import torch

    try:
        device = resolve_device(args.device)
    except StreamVJError as exc:
        print(f"streamvj: {exc}", file=sys.stderr)
        return 2
    dtype = resolve_dtype(args.dtype, device)
    if args.model == "auto":
        # On a GPU the real sd-turbo architecture (random weights: the speed is the same, no download).
        args.model = "sd-turbo-random" if device.type == "cuda" else "tiny"
    opts = BenchOptions(width=args.width, height=args.height, t_index_list=tuple(args.t_index), cfg_type=args.cfg,
                        frame_buffer_size=args.frame_buffer_size, frames=args.frames, warmup=args.warmup,
                        acceleration=resolve_acceleration("compile" if args.compile else args.acceleration, device),
                        mode=args.mode)
    try:
        parts = load_model(args.model, family=args.family, vae=args.vae, device=device, dtype=dtype)
        stream = bench_stream(parts, opts, device, dtype)
        rows = [(f"streamvj ({opts.acceleration})", stream)]
        result = {"model": args.model, "family": parts.family.value, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "width": args.width, "height": args.height, "t_index_list": args.t_index, "cfg": args.cfg,
                  "mode": args.mode, "frame_buffer_size": args.frame_buffer_size, "frames": args.frames,
                  **stream}
        if args.baseline == "autopipeline":
            if args.mode != "img2img":
                raise StreamVJError("--baseline autopipeline compares img2img; drop it for txt2img")
            base = bench_autopipeline(parts, opts, device, dtype, "a psychedelic neon landscape, highly detailed")
            rows.append(("diffusers AutoPipelineI2I", base))
            result["baseline"] = {"name": "AutoPipelineForImage2Image", **base}
            result["speedup_vs_baseline"] = round(base["ms_median"] / stream["ms_median"], 2)
    except StreamVJError as exc:
        print(f"streamvj: {exc}", file=sys.stderr)
        return 2
    table = format_table(rows)
    if "speedup_vs_baseline" in result:
        table += f"\nspeed-up vs AutoPipelineForImage2Image: {result['speedup_vs_baseline']}x"
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


def _preset_path(value: str, presets_dir: Path) -> Path:
    from engine.config.preset_files import resolve_preset

    path = Path(value)
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else resolve_preset(presets_dir, value)


def _apply_overrides(preset, args: argparse.Namespace):
    """CLI flags win over the preset's load section (validated through the same schema)."""
    from pydantic import ValidationError

    from engine.config.preset_files import format_validation_error
    from engine.config.schema import Preset
    from engine.errors import ConfigError

    data = preset.model_dump()
    for flag, key in (("model", "model"), ("width", "width"), ("height", "height"), ("device", "device"),
                      ("source", "source"), ("target_fps", "target_fps"), ("acceleration", "acceleration")):
        value = getattr(args, flag)
        if value is not None:
            data["load"][key] = value
    if args.sink:
        data["load"]["sinks"] = args.sink
    if args.osc_host is not None:
        data["osc"]["host"] = args.osc_host
    if args.osc_port is not None:
        data["osc"]["port"] = args.osc_port
    if args.oscquery_port is not None:
        data["osc"]["query_port"] = args.oscquery_port
    if args.osc_feedback:
        host, _, port = args.osc_feedback.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--osc-feedback must be HOST:PORT, e.g. 127.0.0.1:9002, got {args.osc_feedback!r}")
        data["osc"]["feedback"] = {"host": host, "port": int(port)}
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "command line")) from None


class StatusLine:
    """One status line, redrawn in place on a terminal, logged every 10 s otherwise."""

    def __init__(self, feedback=None, gpu=None):
        self.show, self.feedback, self.gpu = None, feedback, gpu
        self.tty = sys.stderr.isatty()
        self._last_log = 0.0

    def __call__(self, stats: dict) -> None:
        import time

        if self.show is None:
            return
        state = self.show.state if self.show.state == "building" else stats["state"]
        state = "ready" if state == "stopped" else state  # feedback speaks the peers' state names
        line = (f"{state:<8} {self.show.preset_name:<12} {stats.get('fps', 0.0):6.1f} fps  "
                f"latency {stats.get('latency_ms', 0.0):6.1f} ms  skip {100 * stats.get('skip_ratio', 0.0):4.0f}%  "
                f"in {stats.get('frames_received', 0)}  out {stats.get('frames_rendered', 0)}")
        error = self.show.last_error or stats.get("error", "")
        backend = self.show.player.pipeline.backend
        line += f"  {backend}"
        gpu = {k: v for k, v in self.gpu.read().items() if v is not None} if self.gpu is not None else {}
        if "vram_mb" in gpu:
            line += f"  {gpu['vram_mb']:.0f} MB"
        if "gpu_power_w" in gpu:
            line += f"  {gpu['gpu_power_w']:.0f} W"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=sys.stderr, flush=True)
        elif time.monotonic() - self._last_log >= 10.0:
            self._last_log = time.monotonic()
            log.info(line)
        if self.feedback is not None:
            self.feedback.publish({"state": state, "fps": float(stats.get("fps", 0.0)),
                                   "latency_ms": float(stats.get("latency_ms", 0.0)),
                                   "skip_ratio": float(stats.get("skip_ratio", 0.0)),
                                   "preset": self.show.preset_name, "error": error, "backend": backend,
                                   **{k: float(gpu[k]) for k in ("vram_mb", "gpu_power_w") if k in gpu}})


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time

    from bridges.control.osc import OscServer
    from bridges.control.osc_feedback import OscFeedback
    from bridges.video.registry import make_sink, make_source
    from engine.config.preset_files import load_preset
    from engine.core.build import build_pipeline
    from engine.errors import StreamVJError
    from engine.live.params import ParamStore
    from engine.live.player import LivePlayer
    from engine.live.show import Show
    from engine.live.tempo import Tempo
    from engine.realtime.gpu_stats import GpuStats
    from engine.realtime.runtime import Runtime

    # SIGTERM while loading (minutes for real weights) stops as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    quiet_libraries()
    closers: list = []
    runtime = None
    feedback = None
    ok = True
    try:
        presets_dir = Path(args.presets_dir)
        path = _preset_path(args.preset, presets_dir)
        preset = _apply_overrides(load_preset(path), args)
        log.info("preset %s: model %s, %dx%d, steps %s, cfg %s", path.stem, preset.load.model, preset.load.width,
                 preset.load.height, list(preset.live.t_index_list), preset.load.cfg_type)
        # Feedback first: peers see "loading" while weights load (minutes on a first run).
        feedback = OscFeedback.from_settings(preset.osc)
        if feedback is not None:
            feedback.start()
            closers.append(feedback.stop)
            feedback.publish({"state": "loading", "preset": path.stem})
        pipeline = build_pipeline(preset)
        gpu = GpuStats.for_device(pipeline.device)
        if gpu is not None:
            closers.append(gpu.close)
        log.info("pipeline ready on %s (%s); latency %d frame(s)", pipeline.device, str(pipeline.dtype)[6:],
                 pipeline.stream.n - 1)
        tempo = Tempo()
        store = ParamStore(preset.live, tempo=tempo)
        player = LivePlayer(pipeline, store)
        spec = preset.load.source
        if spec == "pattern":
            spec = f"pattern:{preset.load.width}x{preset.load.height}"
        source = None if preset.load.mode == "txt2img" else make_source(spec)
        sinks = [make_sink(s) for s in preset.load.sinks]
        status = StatusLine(feedback, gpu)
        runtime = Runtime(player, source, sinks, target_fps=preset.load.target_fps, on_stats=status)
        show = status.show = Show(presets_dir, preset, path.stem, store, player, runtime, tempo=tempo,
                                  quantum=args.switch_on, transition_s=args.transition)
        show.watch()
        closers.append(show.stop_watching)
        if not args.no_osc:
            server = OscServer.from_settings(preset.osc, store, show, presets_dir=presets_dir, tempo=tempo).start()
            closers.append(server.stop)
            log.info("OSC on udp://%s:%d%s (see docs/osc.md)", *server.address, preset.osc.prefix)
            if preset.osc.query_port is not None:
                from bridges.control.oscquery import OscQueryServer

                query = OscQueryServer(store, osc_port=server.address[1], osc_host=server.address[0],
                                       prefix=preset.osc.prefix, host=preset.osc.host,
                                       port=preset.osc.query_port, presets_dir=presets_dir).start()
                closers.append(query.stop)
                log.info("OSCQuery on http://%s:%d/", *query.address)
        if preset.midi.port:
            from bridges.control.midi import MidiInput

            midi = MidiInput.from_settings(preset.midi, store, tempo=tempo)
            if midi is not None:
                midi.start()
                closers.append(midi.stop)
                show.midi_learn = midi.mapper.learn
                show.on_midi_mappings = midi.mapper.set_mappings
        runtime.start()
        log.info("running: source %s -> sinks %s (Ctrl-C to stop)", spec if source else "none (txt2img)",
                 ", ".join(preset.load.sinks) or "none")
        if args.frames:
            # Smoke runs and scripts: stop after N rendered frames (or on a signal).
            wait = threading.Event()
            deadline = time.monotonic() + args.timeout
            while runtime.running and runtime.frames_rendered < args.frames and time.monotonic() < deadline:
                wait.wait(0.05)
            ok = runtime.frames_rendered >= args.frames
        else:
            ok = runtime.run_until_signal()
    except StreamVJError as exc:
        print(f"streamvj: {exc}", file=sys.stderr)
        if feedback is not None:
            feedback.publish({"state": "error", "error": str(exc)})
        ok = None
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        if runtime is not None:
            runtime.stop()
        for close in reversed(closers):
            close()
    if ok is None:
        return 2
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if runtime is not None:
        stats = runtime.stats()
        log.info("stopped after %d frames (%.1f fps, %d skipped)", stats["frames_rendered"], stats.get("fps", 0.0),
                 stats.get("skipped", 0))
    return 0 if ok else 1


def cmd_presets(args: argparse.Namespace) -> int:
    from engine.config.preset_files import list_presets, load_preset, resolve_preset
    from engine.errors import StreamVJError

    presets_dir = Path(args.presets_dir)
    for name in list_presets(presets_dir):
        try:
            preset = load_preset(resolve_preset(presets_dir, name))
        except StreamVJError as exc:
            problems = str(exc).splitlines()
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            print(f"{name:<14} INVALID: {problems[0]}{more}")
            continue
        summary = " ".join((preset.description or "").split())
        print(f"{name:<14} {preset.load.model:<34} {preset.load.width}x{preset.load.height} "
              f"steps {preset.steps}  {summary[:90]}")
    return 0


def cmd_bridges(args: argparse.Namespace) -> int:
    from bridges.video.registry import bridge_status

    for role, kind, ok, message in bridge_status():
        print(f"{role:<7} {kind:<8} {'ok' if ok else 'missing':<8} {'' if ok else message}")
    return 0


def cmd_osc(args: argparse.Namespace) -> int:
    from bridges.control.osc_docs import osc_markdown

    print(osc_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from typing import get_args

    from engine.config.schema import ACCELERATIONS, CFG_TYPES, DTYPES, FAMILIES, MODES
    from engine.live.tempo import Quantum

    # -v works before or after the command (`run_engine.py -v run` and `run_engine.py run -v`);
    # SUPPRESS keeps a subcommand's unset -v from overwriting the top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = argparse.ArgumentParser(prog="run_engine.py", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", parents=[common], help="play a preset live (the default command)")
    run.add_argument("--preset", default="tiny", help="preset name in the presets folder or a .yaml path (default: tiny)")
    run.add_argument("--presets-dir", default=str(PRESETS_DIR),
                     help="folder of presets that /preset/load, next and prev choose from (default: presets/)")
    run.add_argument("--model", help="override the preset's model")
    run.add_argument("--width", type=int, help="override the model width")
    run.add_argument("--height", type=int, help="override the model height")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--acceleration", choices=ACCELERATIONS,
                     help="per-frame backend (docs/acceleration.md); default from the preset")
    run.add_argument("--source", help="frame source, e.g. pattern, shm:streamvj_in, spout:TDOut, ndi:NAME, image:x.png")
    run.add_argument("--sink", action="append", help="frame sink (repeatable), e.g. shm:streamvj_out, spout:streamvj")
    run.add_argument("--target-fps", type=float, help="pace the output at this rate (repeat frames when skipping)")
    run.add_argument("--osc-host", help="OSC listen address (default 127.0.0.1: this machine only)")
    run.add_argument("--osc-port", type=int, help="OSC listen port (default from the preset, 9000)")
    run.add_argument("--osc-feedback", metavar="HOST:PORT",
                     help="send status (state, fps, latency, errors, heartbeat) to this OSC address")
    run.add_argument("--oscquery-port", type=int, help="serve OSCQuery (HTTP) on this port (0 = any free port)")
    run.add_argument("--no-osc", action="store_true", help="do not open the OSC port")
    run.add_argument("--switch-on", choices=get_args(Quantum), help="quantise preset switches to the next beat/bar")
    run.add_argument("--transition", type=float, default=0.0,
                     help="seconds to crossfade prompt/seed on a preset switch (0 = cut)")
    run.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = run until Ctrl-C)")
    run.add_argument("--timeout", type=float, default=600.0, help="with --frames: give up after this many seconds")
    run.set_defaults(func=cmd_run)

    presets = sub.add_parser("presets", parents=[common], help="list the presets in presets/")
    presets.add_argument("--presets-dir", default=str(PRESETS_DIR))
    presets.set_defaults(func=cmd_presets)
    bridges = sub.add_parser("bridges", parents=[common], help="which frame sources/sinks work on this machine")
    bridges.set_defaults(func=cmd_bridges)
    osc = sub.add_parser("osc", parents=[common], help="print the OSC address table (markdown)")
    osc.set_defaults(func=cmd_osc)

    bench = sub.add_parser("bench", parents=[common], help="measure frame rate and latency of the stream pipeline")
    bench.add_argument("--model", default="auto",
                       help="auto (tiny on a CPU, sd-turbo-random on a GPU) | tiny | tiny-sdxl | sd-turbo-random | "
                            "a Hugging Face id | a folder | a .safetensors")
    bench.add_argument("--family", choices=FAMILIES, help="override the family read from the model")
    bench.add_argument("--vae", help="VAE id or folder (e.g. madebyollin/taesd)")
    bench.add_argument("--width", type=int, default=512)
    bench.add_argument("--height", type=int, default=512)
    bench.add_argument("--t-index", type=_int_list, default=[32, 45], help="comma-separated, e.g. 32,45")
    bench.add_argument("--cfg", choices=CFG_TYPES, default="self")
    bench.add_argument("--mode", choices=MODES, default="img2img")
    bench.add_argument("--frame-buffer-size", type=int, default=1)
    bench.add_argument("--frames", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    bench.add_argument("--dtype", choices=DTYPES, default="auto")
    bench.add_argument("--compile", action="store_true", help="same as --acceleration compile")
    bench.add_argument("--acceleration", choices=ACCELERATIONS, default="auto",
                       help="per-frame backend, as in presets (docs/acceleration.md); compile adds CUDA graphs on a GPU")
    bench.add_argument("--baseline", choices=["none", "autopipeline"], default="none",
                       help="also run diffusers' AutoPipelineForImage2Image in the same run")
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    bench.set_defaults(func=cmd_bench)
    return parser


def with_default_command(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`run` is the default command: `run_engine.py --preset tiny` means `run_engine.py run --preset tiny`.

    Only top-level help stays top-level; any other first argument that is not a command
    (an option of `run`, or nothing at all) is run's."""
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = [a for a in argv if a not in ("-v", "--verbose")]
    if options[:1] in (["-h"], ["--help"]) or any(a in commands for a in options[:1]):
        return argv
    return ["run", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(with_default_command(argv, parser))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except BrokenPipeError:  # `run_engine.py presets | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
