"""The benchmark's own model (the sd-turbo / SD 2.1 UNet, TAESD-sized VAE, OpenCLIP-H-sized text
encoder, random weights) captures as one graph with no host sync, checked on the CPU through
the CUDA graph emulator at a tiny image size: what bench_gpu.py times on a GPU is capturable."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

from engine.pipeline import StreamPipeline, StreamSettings
from tests.engine.graph_emulator import EmulatedGraphs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

SIZE = 64  # 8x8 latents: the real architecture at a size the CPU runs in seconds


def test_sd_turbo_architecture_captures_and_replays_like_eager():
    from bench_gpu import build_sd_turbo_random

    parts = build_sd_turbo_random(torch.device("cpu"), torch.float32)
    settings = dict(width=SIZE, height=SIZE, t_index_list=[16, 32], cfg_type="self")
    eager = StreamPipeline(parts, StreamSettings(**settings), rng=random.Random(0))
    graphed = StreamPipeline(parts, StreamSettings(**settings), rng=random.Random(0))
    step = graphed.use_graphs(EmulatedGraphs())
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
        if i == 2:
            for pipe in (eager, graphed):
                pipe.set_guidance(1.5, 0.8)
                pipe.set_prompt("another prompt")
        assert torch.equal(eager(frame), graphed(frame)), f"frame {i}"
    assert step.captured and step.fallback_reason is None and step.captures == 1
