"""`sd-turbo-random`: the real sd-turbo architecture, offline, and capturable as one CUDA graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ModelLoadError
from engine.models.family import Family
from engine.models.load import load_model
from tests.engine.accel.graph_emulator import EmulatedGraphs
from tests.engine.core.pipelines import make_pipeline

SIZE = 64  # 8x8 latents: the real architecture at a size the CPU runs in seconds


@pytest.fixture(scope="module")
def sd_turbo():
    return load_model("sd-turbo-random")


def test_it_is_sd_turbo_shaped(sd_turbo):
    unet = sd_turbo.unet
    assert sd_turbo.family is Family.SD21 and sd_turbo.source == "sd-turbo-random"
    assert tuple(unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert unet.config.cross_attention_dim == 1024 and unet.config.use_linear_projection
    assert 860e6 < sum(p.numel() for p in unet.parameters()) < 870e6  # SD 2.1's 865M
    assert type(sd_turbo.vae).__name__ == "AutoencoderTiny"
    assert sd_turbo.text_encoder.config.hidden_size == 1024
    assert not any(p.requires_grad for p in unet.parameters())


def test_a_family_it_is_not_is_refused():
    with pytest.raises(ModelLoadError, match="sd21-shaped"):
        load_model("sd-turbo-random", family="sdxl")


def test_the_whole_frame_captures_with_no_host_sync_and_replays_like_eager(sd_turbo):
    """What bench_gpu.py times on a GPU is capturable: checked through the CUDA graph emulator."""
    eager = make_pipeline(sd_turbo, width=SIZE, height=SIZE, t_index_list=[16, 32])
    graphed = make_pipeline(sd_turbo, width=SIZE, height=SIZE, t_index_list=[16, 32])
    step = graphed.step.use_graphs(EmulatedGraphs())
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
        if i == 2:
            for pipe in (eager, graphed):
                pipe.set_guidance(1.5, 0.8)
                pipe.set_prompt("another prompt")
        assert torch.equal(eager(frame), graphed(frame)), f"frame {i}"
    assert step.captured and step.fallback_reason is None and step.captures == 1
