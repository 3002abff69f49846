"""Figures that judge the pictures a model makes through the real StreamPipeline.

    python -m training.evaluate [--model tiny] [--size 256]

`structure`: how well the output's edges follow the input's (Pearson correlation of Sobel
edge magnitudes of luma), averaged over held-out procedural scenes and the test pattern.
`colour`: the same inputs under a red and a blue prompt: mean (R - B) of the red outputs minus
that of the blue ones, in 0..255 units (positive = the prompt moved colour the right way).
`psnr`: the autoencoder alone on held-out procedural pictures. `--speed`: frame rate against
the random model's. The tests
(tests/engine/models/test_tiny_trained.py) and docs/tiny-model.md use these functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bridges.video.pattern import render_pattern
from engine.config.preset_files import load_preset
from engine.config.schema import LiveParams
from engine.core.pipeline import StreamPipeline
from engine.models.load import load_model
from engine.models.parts import ModelParts
from training.autoencoder import psnr
from training.procedural import image_batch

DEMO_PRESET = Path(__file__).resolve().parents[1] / "presets" / "tiny.yaml"
RED, BLUE = "red and yellow", "blue and cyan"  # two-colour prompts: they recolour, naming no shapes


def make_pipeline(parts: ModelParts, size: int, prompt: str, **live) -> StreamPipeline:
    """A CPU pipeline at the offline demo's settings (presets/tiny.yaml's cfg, steps, guidance,
    seed), `size` square, with `prompt`; `live` overrides more live values."""
    preset = load_preset(DEMO_PRESET)
    values = {**preset.live.model_dump(), "prompt": prompt, "prompt_blend": [], "negative_prompt": "",
              "similarity_enabled": False, **live}
    load = preset.load.model_copy(update={"width": size, "height": size})
    return StreamPipeline(parts, load, LiveParams(**values), device="cpu", dtype=torch.float32, backend="none")


def run(pipe: StreamPipeline, rgb_u8: np.ndarray, prompt: str | None = None) -> np.ndarray:
    """One frame (HxWx3 uint8) through `pipe` after a reset, so no earlier frame is in flight."""
    if prompt is not None:
        pipe.set_prompt(prompt, "")
    pipe.reset()
    rgba = np.concatenate([rgb_u8, np.full(rgb_u8.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return pipe(np.ascontiguousarray(rgba))[..., :3].numpy().copy()


def edges(rgb_u8: np.ndarray) -> torch.Tensor:
    luma = torch.from_numpy(rgb_u8.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T]).unsqueeze(1)
    g = F.conv2d(luma[None, None], k, padding=1)[0]
    return g.pow(2).sum(0).sqrt()[1:-1, 1:-1]  # the borders see the zero padding


def edge_correlation(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    ea, eb = edges(a_u8).flatten(), edges(b_u8).flatten()
    ea, eb = ea - ea.mean(), eb - eb.mean()
    return float((ea * eb).sum() / (ea.norm() * eb.norm()).clamp_min(1e-8))


def red_minus_blue(rgb_u8: np.ndarray) -> float:
    mean = rgb_u8.reshape(-1, 3).astype(np.float64).mean(0)
    return float(mean[0] - mean[2])


def held_out_inputs(size: int, count: int = 6, seed: int = 20_000) -> list[np.ndarray]:
    """`count` procedural scenes never drawn in training (another generator seed) + the test pattern."""
    images = image_batch(torch.Generator().manual_seed(seed), count, size)
    scenes = [((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for img in images]
    return scenes + [render_pattern(40, size, size)[..., :3].copy()]


def figures(parts: ModelParts, size: int = 128, count: int = 6, **live) -> dict:
    inputs = held_out_inputs(size, count)
    pipe = make_pipeline(parts, size, RED, **live)
    structure, colour = [], []
    for img in inputs:
        red, blue = run(pipe, img, RED), run(pipe, img, BLUE)
        structure += [edge_correlation(img, red), edge_correlation(img, blue)]
        colour.append(red_minus_blue(red) - red_minus_blue(blue))
    held = image_batch(torch.Generator().manual_seed(10_000), 16, 256)
    return {"size": size, "inputs": len(inputs), "structure": round(float(np.mean(structure)), 3),
            "structure_min": round(float(np.min(structure)), 3), "colour": round(float(np.mean(colour)), 1),
            "colour_min": round(float(np.min(colour)), 1), "psnr_256": round(psnr(parts.vae, held), 2)}


def speed(models: tuple[str, ...] = ("tiny-random", "tiny"), size: int = 256, rounds: int = 3,
          frames: int = 30) -> dict:
    """`run_engine.py bench`'s measurement (CPU, fp32, eager, cfg self, steps [32, 45]) of each
    model, in turns (A B A B ...) so a change in the machine's load hits both alike; the
    median over rounds of each round's median frame time."""
    from engine.bench import bench_plan, run_bench

    load = {"model": None, "width": size, "height": size, "device": "cpu", "dtype": "float32",
            "acceleration": "none", "cfg_type": "self"}
    ms: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(rounds):
        for model in models:
            plan = bench_plan({**load, "model": model}, [32, 45], frames=frames, warmup=5)
            ms[model].append(run_bench(plan)[1]["ms_median"])
    result = {m: {"ms_median": round(float(np.median(v)), 2), "fps": round(1000 / float(np.median(v)), 1)}
              for m, v in ms.items()}
    first, last = models[0], models[-1]
    result["ratio_fps"] = round(result[last]["fps"] / result[first]["fps"], 3)
    return {"size": size, "rounds": rounds, "frames": frames, "threads": torch.get_num_threads(), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a model spec, as run_engine.py --model takes")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--guidance", type=float, help="guidance_scale (default: the tiny preset's)")
    parser.add_argument("--t-index", help="t_index_list, e.g. 32,45 (default: the tiny preset's)")
    parser.add_argument("--speed", action="store_true",
                        help="instead: frame rate of tiny-random vs tiny at 256x256 (bench, in turns)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with torch.no_grad():
        if args.speed:
            print(json.dumps(speed()))
        else:
            live = {} if args.guidance is None else {"guidance_scale": args.guidance}
            if args.t_index:
                live["t_index_list"] = [int(v) for v in args.t_index.split(",")]
            print(json.dumps({"model": args.model, **live, **figures(load_model(args.model), args.size, **live)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
