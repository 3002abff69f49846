"""streamvj vs the reference StreamDiffusion (PyPI streamdiffusion==0.1.1), same weights, same run.

Both sides load ONE diffusers folder from disk: the sd-turbo architecture with random weights
(engine/models/random_weights.py) and a TAESD-sized AutoencoderTiny, written once by this
script (`--tiny`: the tiny test model, for the CPU dry run). Same size, same denoising
steps (t_index_list), same cfg type, same prompt. Each frame is timed host to host: an RGBA
uint8 frame in host memory in, an RGB(A) uint8 frame in host memory out.

- streamvj: StreamPipeline eager, and on CUDA compile + CUDA graphs (also pipelined, as the
  runtime renders: benchmarks/bench_gpu.py's timing code).
- reference: its PyTorch path (StreamDiffusion.__call__, diffusers' SDPA attention; no
  TensorRT, no xformers). Its input goes in as a [0, 1] tensor already on the device and
  its output is turned into uint8 on the device before the copy back: the cheapest way to
  feed it, so the ratio is not flattered by its PIL helpers.

The reference's __call__ times itself with CUDA events and ends in torch.cuda.synchronize();
on a CPU (the dry run) those calls get no-op stand-ins, nothing else changes.
StreamDiffusion 0.1.1 pins diffusers==0.24.0 in its metadata; its pipeline module imports
only torch, numpy, PIL and diffusers, so it is installed with --no-deps and runs on the
diffusers streamvj uses (scripts/install.py --dev, scripts/gpu_wheels.sh).

    python benchmarks/reference_streamdiffusion.py                          # CUDA, fp16, 512x512, 1 step
    python benchmarks/reference_streamdiffusion.py --device cpu --tiny --frames 3 --warmup 1 --no-compile
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import (  # noqa: E402
    T_INDEX,
    make_pipeline,
    start_run,
    time_frames,
    time_pipelined,
    use_graph,
)
from engine.bench import BENCH_PROMPT, moving_frames, summarise  # noqa: E402
from engine.config.scalars import CFG_TYPES  # noqa: E402
from engine.models.load import load_model, save_folder  # noqa: E402

log = logging.getLogger("streamvj.reference")
REFERENCE = "streamdiffusion"
REFERENCE_VERSION = "0.1.1"
INSTALL_HINT = f"pip install --no-deps {REFERENCE}=={REFERENCE_VERSION} (scripts/install.py --dev does)"


def write_weights(folder: Path, tiny: str | None, dtype: torch.dtype, device: torch.device) -> Path:
    """The model (sd-turbo-random, or the tiny model named) as a diffusers folder (kept: a second run reuses it)."""
    if (folder / "model_index.json").is_file():
        return folder
    # Built on the GPU when there is one: seconds, against a minute of CPU initialisation.
    parts = load_model(tiny or "sd-turbo-random", device=device, dtype=dtype)
    save_folder(parts, folder)
    return folder


# ---- the reference ------------------------------------------------------------------------------------


class _NoEvent:
    """torch.cuda.Event's stand-in on a CPU (the reference records two per frame for its own EMA)."""

    def __init__(self, **kwargs: object) -> None:
        pass

    def record(self, *args: object) -> None:
        pass

    def elapsed_time(self, other: _NoEvent) -> float:
        return 0.0


def _cpu_stand_ins() -> None:
    torch.cuda.Event = _NoEvent  # type: ignore[misc, assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]


def load_reference(folder: Path, size: int, steps: int, cfg: str, device: torch.device, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline
    from streamdiffusion import StreamDiffusion

    if device.type != "cuda":
        _cpu_stand_ins()
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    stream = StreamDiffusion(pipe, t_index_list=T_INDEX[steps], torch_dtype=dtype, width=size, height=size,
                             cfg_type=cfg)
    stream.prepare(BENCH_PROMPT, num_inference_steps=50, guidance_scale=1.2)
    return stream


def reference_frame(stream, frame: np.ndarray, device: torch.device) -> np.ndarray:
    """RGBA uint8 on the host -> the reference -> RGB uint8 on the host."""
    x = torch.from_numpy(frame).to(device, non_blocking=False)[..., :3].permute(2, 0, 1).unsqueeze(0)
    out = stream(x.to(stream.dtype) / 255.0)  # [0, 1]: its image processor normalises to [-1, 1]
    rgb = (out / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0)
    return rgb.cpu().numpy()


def time_reference(stream, frames: list[np.ndarray], device: torch.device, warmup: int, count: int) -> dict:
    ms = []
    for i in range(warmup + count):
        start = time.perf_counter()
        reference_frame(stream, frames[i % len(frames)], device)  # .cpu() waits for the frame
        if i >= warmup:
            ms.append((time.perf_counter() - start) * 1000.0)
    return summarise(ms)


# ---- streamvj -----------------------------------------------------------------------------------------


def time_streamvj(folder: Path, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    parts = load_model(str(folder), device=device, dtype=dtype)
    frames = moving_frames(8, args.size, args.size)
    cuda = device.type == "cuda"
    rows = []
    variants = [("eager", "none")] + ([] if args.no_compile else [("compile", "compile")])
    for name, backend in variants:
        pipe = make_pipeline(parts, args.size, args.steps, args.cfg, backend, device, dtype)
        if cuda and backend != "none":
            use_graph(pipe)
            name += " + cuda graph"
        row = {"variant": f"streamvj {name}", "backend": pipe.backend,
               **time_frames(pipe, frames, args.warmup, args.frames)}
        if cuda:
            row.update(time_pipelined(pipe, frames, args.warmup, args.frames))
        rows.append(row)
        log.info("%-32s %8.1f fps", row["variant"], row["fps"])
        del pipe
    del parts
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", nargs="?", const="tiny", metavar="NAME",
                   help="a tiny test model (default tiny): a CPU check, not a benchmark")
    p.add_argument("--folder", type=Path, help="the weights' diffusers folder (written when missing; "
                                               "default: a temporary folder)")
    p.add_argument("--size", type=int, help="square image size (default 512; 64 with --tiny)")
    p.add_argument("--steps", type=int, default=1, choices=sorted(T_INDEX))
    p.add_argument("--cfg", choices=CFG_TYPES, default="none", help="turbo models run without CFG (default none)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="streamvj eager only")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    device = start_run("reference_streamdiffusion", args.device)
    if device is None:
        return 2
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    result: dict = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
                    "model": f"{args.tiny} (tiny test model)" if args.tiny else (
                        "sd-turbo architecture, TAESD-sized AutoencoderTiny (random weights)"),
                    "width": args.size, "height": args.size, "steps": args.steps, "cfg": args.cfg,
                    "t_index_list": T_INDEX[args.steps], "frames": args.frames, "warmup": args.warmup}
    with tempfile.TemporaryDirectory(prefix="streamvj-weights-") as scratch:
        folder = write_weights(args.folder or Path(scratch) / "model", args.tiny, dtype, device)
        result["weights"] = str(folder)
        result["streamvj"] = time_streamvj(folder, args, device, dtype)
        if importlib.util.find_spec(REFERENCE) is None:
            result["skipped"] = f"the reference is not installed: {INSTALL_HINT}"
        else:
            from importlib.metadata import version

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its deprecated diffusers calls; random weights' NaN casts
                stream = load_reference(folder, args.size, args.steps, args.cfg, device, dtype)
                frames = moving_frames(8, args.size, args.size)
                row = {"variant": f"reference StreamDiffusion {version(REFERENCE)} (PyTorch, SDPA)",
                       **time_reference(stream, frames, device, args.warmup, args.frames)}
            result["reference"] = row
            log.info("%-32s %8.1f fps", row["variant"], row["fps"])
            best = max(result["streamvj"], key=lambda r: r["fps"])
            result["best_vs_reference"] = round(best["fps"] / row["fps"], 2)
            pipelined = max((r.get("fps_pipelined", 0.0) for r in result["streamvj"]), default=0.0)
            if pipelined:
                result["best_pipelined_vs_reference"] = round(pipelined / row["fps"], 2)
    text = json.dumps(result)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
