"""docs/tiny-demo.png: what the offline demo shows, made by the offline demo's own path.

    .venv/bin/python scripts/demo_strip.py [--out docs/tiny-demo.png]

presets/tiny.yaml (model `tiny`, the trained one) builds its pipeline as run_engine.py does
(engine/core/build.py); the test pattern (bridges/video/pattern.py, the preset's source) goes
in, and each prompt's output comes out, as /streamvj/prompt would set it. Rows: two frames
of the pattern; columns: the input, then one output per prompt (the preset's own first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridges.video.pattern import render_pattern  # noqa: E402
from engine.config.preset_files import load_preset  # noqa: E402
from engine.core.build import build_pipeline  # noqa: E402

PROMPTS = ("red and yellow", "blue and white", "green and white stripes", "a red circle on a blue background")
FRAMES = (0, 90)
LABEL_H = 16


def render_strip(size: int = 256) -> Image.Image:
    preset = load_preset(ROOT / "presets" / "tiny.yaml")
    load = preset.load.model_copy(update={"device": "cpu", "dtype": "float32", "width": size, "height": size})
    preset = preset.model_copy(update={"load": load})
    pipe = build_pipeline(preset)
    prompts = (preset.live.prompt, *PROMPTS)
    rows = []
    for index in FRAMES:
        frame = render_pattern(index, size, size)
        tiles = [frame[..., :3]]
        for prompt in prompts:
            pipe.set_prompt(prompt, preset.live.negative_prompt)
            pipe.reset()  # no earlier frame in flight: each tile is this prompt on this frame
            tiles.append(pipe(frame)[..., :3].numpy().copy())
        rows.append(np.concatenate(tiles, axis=1))
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    labels = Image.new("RGB", (picture.width, LABEL_H), (20, 20, 20))
    draw = ImageDraw.Draw(labels)
    for i, text in enumerate(("input: test pattern", *prompts)):
        draw.text((i * size + 4, 2), text if len(text) <= 40 else text[:38] + "..", fill=(230, 230, 230))
    strip = Image.new("RGB", (picture.width, picture.height + LABEL_H))
    strip.paste(labels, (0, 0))
    strip.paste(picture, (0, LABEL_H))
    return strip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tiny-demo.png")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with torch.no_grad():
        render_strip(args.size).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
