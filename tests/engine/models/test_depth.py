"""Depth networks: `random` built in code, folders of an allowed class, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models.depth import build_random_depth_model, load_depth_model


def test_random_depth_model_is_seeded_and_answers_with_a_map():
    model = load_depth_model("random")
    again = build_random_depth_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with torch.no_grad():
        depth = model(pixel_values=torch.rand(1, 3, 56, 56)).predicted_depth
    assert depth.shape == (1, 56, 56) and float(depth.std()) > 0


def test_a_saved_depth_folder_loads_back(tmp_path):
    build_random_depth_model().save_pretrained(str(tmp_path / "depth"))
    assert isinstance(load_depth_model(str(tmp_path / "depth")), torch.nn.Module)


def test_a_folder_of_another_class_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="is a GPT2LMHeadModel; streamvj runs DepthAnythingForDepthEstimation"):
        load_depth_model(str(tmp_path))


def test_a_missing_depth_model_says_what_to_give():
    with pytest.raises(ModelLoadError, match="depth model './nowhere' does not exist .* 'random'"):
        load_depth_model("./nowhere")
