"""The shipped, trained `tiny` model, judged by its pictures through the real StreamPipeline at
the offline demo's settings (presets/tiny.yaml), against the random model as the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.load import load_folder, load_model
from engine.models.tiny import TRAINED_TINY
from training.autoencoder import psnr
from training.evaluate import (
    BLUE,
    RED,
    edge_correlation,
    held_out_inputs,
    make_pipeline,
    red_minus_blue,
    run,
)
from training.procedural import image_batch

SIZE = 128


@pytest.fixture(scope="module")
def inputs():
    return held_out_inputs(SIZE, count=4)


@pytest.fixture(scope="module")
def random_parts():
    return load_model("tiny-random")


def _structure(parts, inputs) -> list[float]:
    pipe = make_pipeline(parts, SIZE, RED)
    return [edge_correlation(img, run(pipe, img)) for img in inputs]


def test_tiny_is_the_shipped_diffusers_folder_loaded_like_any_other(tiny_parts):
    folder = load_folder(TRAINED_TINY)
    assert tiny_parts.scheduler_config["prediction_type"] == "v_prediction"
    for name in ("unet", "vae", "text_encoder"):
        shipped = getattr(folder, name).state_dict()
        loaded = getattr(tiny_parts, name).state_dict()
        assert all(torch.equal(shipped[k], loaded[k]) for k in shipped)


def test_output_follows_the_input_structure_far_better_than_the_random_model(tiny_parts, random_parts, inputs):
    trained, baseline = _structure(tiny_parts, inputs), _structure(random_parts, inputs)
    # Edge correlation; measured at 128 px: trained 0.42 mean (0.13 min), random 0.02.
    assert min(trained) > 0.08, trained
    assert np.mean(trained) > np.mean(baseline) + 0.25, (trained, baseline)


def test_a_colour_prompt_moves_the_mean_colour_its_way(tiny_parts, inputs):
    pipe = make_pipeline(tiny_parts, SIZE, RED)
    for img in inputs:
        shift = red_minus_blue(run(pipe, img, RED)) - red_minus_blue(run(pipe, img, BLUE))
        assert shift > 60, shift  # mean R - B, in 0..255 units; measured 180-230, random model ~0


def test_a_prompt_crossfade_moves_the_picture_monotonically(tiny_parts, inputs):
    pipe = make_pipeline(tiny_parts, SIZE, RED)
    img = inputs[0]
    end = run(pipe, img, BLUE).astype(np.float64)
    distances = []
    for w in np.linspace(0.0, 1.0, 6):
        pipe.set_prompt_blend([(RED, 1.0 - w), (BLUE, w)], negative_prompt="")
        distances.append(float(np.abs(run(pipe, img).astype(np.float64) - end).mean()))
    assert all(b < a for a, b in zip(distances, distances[1:-1])), distances
    assert distances[-1] == 0.0 and distances[0] > 10, distances


def test_the_autoencoder_reconstructs_held_out_pictures_at_25_db(tiny_parts):
    held_out = image_batch(torch.Generator().manual_seed(10_000), 8, 256)
    assert psnr(tiny_parts.vae, held_out) >= 25.0
