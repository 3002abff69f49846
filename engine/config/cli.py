"""The command line: every flag of `run_engine.py`, and how `run`'s flags override a preset.

Choices come from the settings schema (engine/config/schema.py); values are checked once,
by the schema, when they override a preset (`apply_overrides`) or make the bench's plan
(engine/bench.py). `run_engine.py` maps each command to the function that runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

from engine.config.preset_files import format_validation_error
from engine.config.scalars import ACCELERATIONS, CFG_TYPES, DTYPES, FAMILIES, MODES, PREPROCESSORS, QUANTA
from engine.config.schema import Preset
from engine.errors import ConfigError


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,45, got {text!r}") from None


def apply_overrides(preset: Preset, args: argparse.Namespace) -> Preset:
    """CLI flags win over the preset's load section (validated through the same schema)."""
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


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]], presets_dir: Path,
                 description: str | None = None) -> argparse.ArgumentParser:
    """The command line: `commands` maps each command name to the function that runs it."""
    # -v works before or after the command (`run_engine.py -v run` and `run_engine.py run -v`);
    # SUPPRESS keeps a subcommand's unset -v from overwriting the top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = argparse.ArgumentParser(prog="run_engine.py", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", parents=[common], help="play a preset live (the default command)")
    run.add_argument("--preset", default="tiny", help="preset name in the presets folder or a .yaml path (default: tiny)")
    run.add_argument("--presets-dir", default=str(presets_dir),
                     help="folder of presets that /preset/load, next and prev choose from (default: presets/)")
    run.add_argument("--model", help="override the preset's model")
    run.add_argument("--width", type=int, help="override the model width")
    run.add_argument("--height", type=int, help="override the model height")
    run.add_argument("--device", help="auto (CUDA, else Apple's MPS, else the CPU) | cpu | cuda | cuda:N | mps")
    run.add_argument("--acceleration", choices=ACCELERATIONS,
                     help="per-frame backend (docs/acceleration.md); default from the preset")
    run.add_argument("--source", help="frame source, e.g. pattern, shm:streamvj_in, spout:TDOut, ndi:NAME, image:x.png")
    run.add_argument("--sink", action="append", help="frame sink (repeatable), e.g. shm:streamvj_out, spout:streamvj")
    run.add_argument("--target-fps", type=float, help="pace the output at this rate (repeat frames when skipping)")
    run.add_argument("--osc-host", help="OSC listen address (default 127.0.0.1: this machine only)")
    run.add_argument("--osc-port", type=int, help="OSC listen port (default from the preset, 9000)")
    run.add_argument("--osc-feedback", metavar="HOST:PORT",
                     help="send status (state, fps, latency, errors, heartbeat) to this OSC address")
    run.add_argument("--web-port", "--oscquery-port", dest="oscquery_port", type=int,
                     help="serve OSCQuery and the web page on this port (0 = any free port; default: the "
                          "preset's osc.query_port, else off; see docs/web.md)")
    run.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=None,
                     help="announce OSC and OSCQuery over mDNS (default: only when osc.host is not loopback)")
    run.add_argument("--no-osc", action="store_true", help="do not open the OSC port")
    run.add_argument("--switch-on", choices=QUANTA, help="quantise preset switches to the next beat/bar")
    run.add_argument("--transition", type=float, default=0.0,
                     help="seconds to crossfade prompt/seed on a preset switch (0 = cut)")
    run.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = run until Ctrl-C)")
    run.add_argument("--timeout", type=float, default=600.0, help="with --frames: give up after this many seconds")
    run.set_defaults(func=commands["run"])

    presets = sub.add_parser("presets", parents=[common], help="list the presets in presets/")
    presets.add_argument("--presets-dir", default=str(presets_dir))
    presets.set_defaults(func=commands["presets"])
    bridges = sub.add_parser("bridges", parents=[common], help="which frame sources/sinks work on this machine")
    bridges.set_defaults(func=commands["bridges"])
    osc = sub.add_parser("osc", parents=[common], help="print the OSC address table (markdown)")
    osc.set_defaults(func=commands["osc"])

    bench = sub.add_parser("bench", parents=[common], help="measure frame rate and latency of the stream pipeline")
    bench.add_argument("--model", default="auto",
                       help="auto (tiny on a CPU, sd-turbo-random on a GPU) | tiny (trained, shipped) | tiny-random | "
                            "tiny-sdxl | sd-turbo-random | "
                            "a Hugging Face id | a folder | a .safetensors")
    bench.add_argument("--family", choices=FAMILIES, help="override the family read from the model")
    bench.add_argument("--vae", help="VAE id or folder (e.g. madebyollin/taesd)")
    # Unset flags take the preset schema's defaults (engine/config/schema.py), like a preset's missing keys.
    bench.add_argument("--width", type=int, help="model width (default 512)")
    bench.add_argument("--height", type=int, help="model height (default 512)")
    bench.add_argument("--t-index", type=int_list, help="comma-separated, e.g. 32,45 (the default)")
    bench.add_argument("--cfg", choices=CFG_TYPES, help="residual CFG (default self)")
    bench.add_argument("--mode", choices=MODES, help="default img2img")
    bench.add_argument("--frame-buffer-size", type=int, help="frames per UNet call (default 1)")
    bench.add_argument("--frames", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--device", help="auto (the default) | cpu | cuda | cuda:N | mps")
    bench.add_argument("--dtype", choices=DTYPES, help="default auto: float16 on a GPU, float32 on a CPU")
    bench.add_argument("--compile", action="store_true", help="same as --acceleration compile")
    bench.add_argument("--acceleration", choices=ACCELERATIONS,
                       help="per-frame backend, as in presets (docs/acceleration.md); compile adds CUDA graphs on a GPU")
    bench.add_argument("--baseline", choices=["none", "autopipeline"], default="none",
                       help="also run diffusers' AutoPipelineForImage2Image in the same run")
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    bench.add_argument("--temporal", action="store_true",
                       help="flicker and cost of the feature bank and latent feedback on a panning input "
                            "(engine/bench_temporal.py, docs/temporal.md)")
    bench.add_argument("--controlnet", choices=PREPROCESSORS,
                       help="time 0, 1 and 2 ControlNets (maps from the input through this preprocessor) side by "
                            "side, and the preprocessor alone (engine/bench_controlnet.py)")
    bench.add_argument("--depth-model", default="random",
                       help="with --controlnet depth: random (tiny, built in code) or e.g. "
                            "depth-anything/Depth-Anything-V2-Small-hf")
    bench.set_defaults(func=commands["bench"])
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
