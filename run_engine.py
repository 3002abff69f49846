#!/usr/bin/env python3
"""streamvj command line: `run` (the default) plays a preset live; `bench` measures speed.

This is the one place that reads a preset and wires bridges to the engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PRESETS_DIR = ROOT / "presets"
log = logging.getLogger("streamvj")


def quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.bench import bench_plan, run_bench
    from engine.errors import StreamVJError

    quiet_libraries()
    load = {"model": args.model, "family": args.family, "vae": args.vae, "width": args.width, "height": args.height,
            "frame_buffer_size": args.frame_buffer_size, "cfg_type": args.cfg, "mode": args.mode,
            "acceleration": "compile" if args.compile else args.acceleration, "device": args.device,
            "dtype": args.dtype}
    try:
        plan = bench_plan(load, args.t_index, frames=args.frames, warmup=args.warmup)
        if args.temporal:
            from engine.bench_temporal import run_temporal_bench

            table, result = run_temporal_bench(plan)
        elif args.controlnet:
            from engine.bench_controlnet import run_controlnet_bench

            table, result = run_controlnet_bench(plan, args.controlnet, args.depth_model)
        else:
            table, result = run_bench(plan, baseline=args.baseline == "autopipeline")
    except StreamVJError as exc:
        print(f"streamvj: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


def _preset_path(value: str, presets_dir: Path) -> Path:
    from engine.config.preset_files import preset_file

    return preset_file(value, presets_dir)


def _interrupt(signum, _frame):
    from engine.realtime.os_signals import signal_label

    raise KeyboardInterrupt(signal_label(signum))


def _prepare_process() -> None:
    """Before anything loads: every stop signal of this platform (SIGTERM; Ctrl-Break on Windows)
    stops a run that is still loading (minutes for real weights) as cleanly as Ctrl-C does, and
    on Windows the engine's short waits get a 1 ms timer (engine/realtime/timer_resolution.py)."""
    import signal

    from engine.realtime.os_signals import stop_signals
    from engine.realtime.timer_resolution import raise_timer_resolution

    for signum in stop_signals():
        if signum != signal.SIGINT:  # Ctrl-C raises KeyboardInterrupt by itself
            signal.signal(signum, _interrupt)
    line = raise_timer_resolution()
    if line:
        log.info(line)


@dataclass
class _Run:
    """What `run` started, in the order it is stopped in reverse (`closers`)."""

    args: argparse.Namespace
    closers: list = field(default_factory=list)
    feedback: object = None
    runtime: object = None
    terminal: object = None  # the live status line, ended before anything else stops (it stays on screen)
    started: float = 0.0  # time.monotonic() when frames started to flow


def _summary(stats: dict, seconds: float) -> str:
    """The exit line: the whole run's average (never 0 because input stopped before exit), and
    the last seconds' rate (what benchmarks/runtime_vs_bench.py reads: steady state, no start-up)."""
    frames = stats["frames_rendered"]
    average = frames / seconds if seconds > 0 else 0.0
    return (f"{frames} frames ({average:.1f} fps over {seconds:.1f} s; {stats.get('fps', 0.0):.1f} fps at the end; "
            f"{stats.get('skipped', 0)} skipped)")


def _load_run_preset(args: argparse.Namespace):
    from bridges.video.registry import preflight
    from engine.config.cli import apply_overrides
    from engine.config.preset_files import load_preset

    path = _preset_path(args.preset, Path(args.presets_dir))
    preset = apply_overrides(load_preset(path), args)
    # Every transport spec and its platform library, before the model loads (seconds to minutes).
    # The source too for txt2img: a later img2img preset switch uses it.
    preflight(preset.load.source, preset.load.sinks)
    log.info("preset %s: model %s, %dx%d, steps %s, cfg %s", path.stem, preset.load.model, preset.load.width,
             preset.load.height, list(preset.live.t_index_list), preset.load.cfg_type)
    return preset, path.stem


def _start_feedback(run: _Run, preset, name: str) -> None:
    """Feedback first: peers see "loading" while weights load (minutes on a first run)."""
    from bridges.control.osc_feedback import OscFeedback

    run.feedback = OscFeedback.from_settings(preset.osc)
    if run.feedback is not None:
        run.feedback.start()
        run.closers.append(run.feedback.stop)
        run.feedback.publish({"state": "loading", "preset": name})


def _build_pipeline(run: _Run, preset):
    from engine.core.build import build_pipeline_apart
    from engine.realtime.gpu_stats import GpuStats

    pipeline = build_pipeline_apart(preset)
    gpu = GpuStats.for_device(pipeline.device)
    if gpu is not None:
        run.closers.append(gpu.close)
    log.info("pipeline ready on %s (%s); latency %d frame(s)", pipeline.device, str(pipeline.dtype)[6:],
             pipeline.stream.n - 1)
    return pipeline, gpu


def _frame_bridges(preset):
    from bridges.video.registry import make_sink, make_source

    spec = preset.load.source
    if spec == "pattern":
        spec = f"pattern:{preset.load.width}x{preset.load.height}"
    source = make_source(spec)  # the runtime owns it whatever is on air: a switch to img2img needs it
    sinks = [make_sink(s) for s in preset.load.sinks]
    return spec, source, sinks


def _terminal(run: _Run):
    """The live status line on a terminal; log records then start on a cleared line."""
    if not sys.stderr.isatty():
        return None
    from bridges.control.status import TerminalLine

    run.terminal = TerminalLine(sys.stderr).install(logging.getLogger().handlers)
    return run.terminal


def _start_show(run: _Run, preset, name: str, pipeline, gpu, source, sinks):
    from bridges.control.status import StatusReporter
    from bridges.video.registry import make_source
    from engine.live.params import ParamStore
    from engine.live.player import LivePlayer
    from engine.live.preset_watch import PresetWatch
    from engine.live.quantise import Quantiser, now
    from engine.live.show import Show
    from engine.live.tempo import Tempo
    from engine.realtime.control_source import ControlFeed
    from engine.realtime.runtime import Runtime

    args = run.args
    tempo = Tempo()
    store = ParamStore(preset.live, tempo=tempo, choices=preset.load.live_choices)
    controls = ControlFeed(make_source)  # ControlNets' own sources (Kinect depth from TouchDesigner...)
    run.closers.append(controls.stop)
    player = LivePlayer(pipeline, store, controls=controls)
    status = StatusReporter(run.feedback, gpu, _terminal(run))
    run.runtime = Runtime(player, source, sinks, target_fps=preset.load.target_fps, on_stats=status)
    on_the_beat = Quantiser(tempo, args.switch_on) if args.switch_on else now
    show = status.show = Show(args.presets_dir, preset, name, store, player, run.runtime,
                              transition_s=args.transition, on_the_beat=on_the_beat)
    watch = PresetWatch(args.presets_dir, lambda: show.preset_name, show.switch).start()
    run.closers.append(watch.stop)
    return show, store, tempo


def _start_osc(run: _Run, preset, show, store, tempo) -> tuple[str, int]:
    from bridges.control.osc import OscServer

    server = OscServer.from_settings(preset.osc, store, show, tempo=tempo).start()
    run.closers.append(server.stop)
    log.info("OSC on udp://%s:%d%s (see docs/osc.md)", *server.address, preset.osc.prefix)
    return server.address


def _preview_taps(run: _Run, preset, source, sinks):
    """With the web page on: a preview fed by the output's own sink thread and the source's thread."""
    if run.args.no_osc or preset.osc.query_port is None:
        return None, source, sinks
    from bridges.video.preview import Preview, PreviewSink, PreviewSource

    preview = Preview().start()
    run.closers.append(preview.stop)
    return preview, (PreviewSource(source, preview) if source is not None else None), [*sinks, PreviewSink(preview)]


def _start_web(run: _Run, preset, show, store, tempo, gpu, preview, osc_address: tuple[str, int]) -> None:
    """OSCQuery and the web page on one port (osc.query_port, --web-port), and mDNS discovery (docs/web.md)."""
    import os

    from bridges.control.discovery import Advertiser, address_for_people, server_name, wanted
    from bridges.control.oscquery import OscQuery
    from bridges.control.recent_errors import RecentErrors
    from bridges.control.status import status_payload
    from bridges.control.web_page import PageControl, page_status
    from bridges.control.web_security import Token, is_loopback
    from bridges.control.web_server import WebServer
    from engine.errors import ConfigError

    host, web = preset.osc.host, None
    if preset.osc.query_port is not None:
        errors = RecentErrors().install()
        run.closers.append(errors.uninstall)

        def status() -> dict:
            stats = run.runtime.stats()
            gpu_now = gpu.read() if gpu is not None else None
            return page_status(status_payload(stats, show.status(), show.player.pipeline.backend, gpu_now), stats)

        query = OscQuery(store, osc_port=osc_address[1], osc_host=osc_address[0], prefix=preset.osc.prefix,
                         presets_dir=run.args.presets_dir)
        page = PageControl(store, show, prefix=preset.osc.prefix, presets_dir=run.args.presets_dir, tempo=tempo,
                           status=status, errors=errors)
        token = Token(os.environ.get("STREAMVJ_WEB_TOKEN") or None, required=not is_loopback(host))
        web = WebServer(query, page=page, preview=preview, host=host, port=preset.osc.query_port, token=token,
                        names=[server_name()]).start()
        run.closers.append(web.stop)
        log.info("OSCQuery on http://%s:%d/", *web.address)
        log.info("web page on %s", web.page_url(address_for_people(host)))
    if wanted(host, run.args.mdns):
        try:  # discovery is a convenience: without it the engine plays on, and says why
            advertiser = Advertiser("streamvj", host, osc_port=osc_address[1],
                                    query_port=web.address[1] if web is not None else None).start()
        except ConfigError as exc:
            log.warning("%s; not announced over mDNS (connect by address)", exc)
        else:
            run.closers.append(advertiser.stop)


def _start_midi(run: _Run, preset, show, store, tempo) -> None:
    from bridges.control.midi import MidiInput

    midi = MidiInput.from_settings(preset.midi, store, tempo=tempo)
    if midi is not None:
        midi.start()
        run.closers.append(midi.stop)
        show.midi_learn = midi.mapper.learn
        show.on_midi_mappings = midi.mapper.set_mappings


def _play(run: _Run) -> bool:
    """Render until a signal, or with --frames until that many frames (smoke runs, scripts)."""
    import threading
    import time

    runtime, args = run.runtime, run.args
    if not args.frames:
        return runtime.run_until_signal()
    wait = threading.Event()
    deadline = time.monotonic() + args.timeout
    while runtime.running and runtime.frames_rendered < args.frames and time.monotonic() < deadline:
        wait.wait(0.05)
    return runtime.frames_rendered >= args.frames


def _stop(run: _Run) -> None:
    if run.terminal is not None:
        run.terminal.close()
    if run.runtime is not None:
        run.runtime.stop()
    for close in reversed(run.closers):
        close()


def cmd_run(args: argparse.Namespace) -> int:
    from engine.errors import StreamVJError

    _prepare_process()
    run = _Run(args)
    ok = True
    try:
        quiet_libraries()  # imports torch and diffusers (seconds): a stop signal may land in it
        preset, name = _load_run_preset(args)
        _start_feedback(run, preset, name)
        pipeline, gpu = _build_pipeline(run, preset)
        spec, source, sinks = _frame_bridges(preset)
        preview, source, sinks = _preview_taps(run, preset, source, sinks)
        show, store, tempo = _start_show(run, preset, name, pipeline, gpu, source, sinks)
        if not args.no_osc:
            osc_address = _start_osc(run, preset, show, store, tempo)
            _start_web(run, preset, show, store, tempo, gpu, preview, osc_address)
        if preset.midi.port:
            _start_midi(run, preset, show, store, tempo)
        run.runtime.start()
        run.started = time.monotonic()
        log.info("running: source %s -> sinks %s (Ctrl-C to stop)", spec if source else "none (txt2img)",
                 ", ".join(preset.load.sinks) or "none")
        ok = _play(run)
    except StreamVJError as exc:
        print(f"streamvj: {exc}", file=sys.stderr)
        if run.feedback is not None:
            run.feedback.publish({"state": "error", "error": str(exc)})
        ok = None
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        _stop(run)
    if ok is None:
        return 2
    if run.runtime is not None:
        log.info("stopped after %s", _summary(run.runtime.stats(), time.monotonic() - run.started))
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

    print(osc_markdown(), end="")  # ends in one newline: `run_engine.py osc > docs/osc.md` is the file
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine.config import cli

    commands = {"run": cmd_run, "presets": cmd_presets, "bridges": cmd_bridges, "osc": cmd_osc, "bench": cmd_bench}
    return cli.build_parser(commands, PRESETS_DIR, __doc__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    from engine.config.cli import with_default_command

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
