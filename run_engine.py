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
log = logging.getLogger("streamvj")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,45, got {text!r}") from None


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("streamvj: --device cuda was asked for, but this torch build sees no CUDA GPU "
                         "(install a CUDA build of torch, or use --device cpu)")
    return device


def pick_dtype(name: str, device):
    import torch

    if name == "auto":
        # CPU kernels for half precision are 10-100x slower than fp32; GPUs want fp16.
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.bench import BenchOptions, bench_autopipeline, bench_stream, format_table
    from engine.errors import StreamVJError
    from engine.models import load_model

    quiet_libraries()
    import torch

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    opts = BenchOptions(width=args.width, height=args.height, t_index_list=tuple(args.t_index), cfg_type=args.cfg,
                        frame_buffer_size=args.frame_buffer_size, frames=args.frames, warmup=args.warmup,
                        acceleration="compile" if args.compile else "none", mode=args.mode)
    try:
        parts = load_model(args.model, family=args.family, vae=args.vae, device=device, dtype=dtype)
        stream = bench_stream(parts, opts, device, dtype)
        rows = [("streamvj" + (" (compiled)" if args.compile else ""), stream)]
        result = {"model": args.model, "family": parts.family.value, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "width": args.width, "height": args.height, "t_index_list": args.t_index, "cfg": args.cfg,
                  "mode": args.mode, "frame_buffer_size": args.frame_buffer_size, "frames": args.frames,
                  "compiled": args.compile, **stream}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_engine.py", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    bench = sub.add_parser("bench", help="measure frame rate and latency of the stream pipeline")
    bench.add_argument("--model", default="tiny", help="tiny | tiny-sdxl | a Hugging Face id | a folder | a .safetensors")
    bench.add_argument("--family", choices=["sd15", "sd21", "sdxl"], help="override the family read from the model")
    bench.add_argument("--vae", help="VAE id or folder (e.g. madebyollin/taesd)")
    bench.add_argument("--width", type=int, default=512)
    bench.add_argument("--height", type=int, default=512)
    bench.add_argument("--t-index", type=_int_list, default=[32, 45], help="comma-separated, e.g. 32,45")
    bench.add_argument("--cfg", choices=["none", "full", "self", "initialize"], default="self")
    bench.add_argument("--mode", choices=["img2img", "txt2img"], default="img2img")
    bench.add_argument("--frame-buffer-size", type=int, default=1)
    bench.add_argument("--frames", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    bench.add_argument("--dtype", choices=["auto", "float16", "float32", "bfloat16"], default="auto")
    bench.add_argument("--compile", action="store_true", help="run the per-frame step under torch.compile")
    bench.add_argument("--baseline", choices=["none", "autopipeline"], default="none",
                       help="also run diffusers' AutoPipelineForImage2Image in the same run")
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 1
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
