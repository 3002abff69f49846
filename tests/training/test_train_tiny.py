from __future__ import annotations

import json

import torch

from engine.models.load import load_folder
from training.train_tiny import main


def test_a_micro_run_is_bit_for_bit_reproducible_and_loads_as_a_diffusers_folder(tmp_path):
    for name in ("a", "b"):
        assert main(["--quick", "--seed", "7", "--out", str(tmp_path / name)]) == 0
    a, b = load_folder(tmp_path / "a"), load_folder(tmp_path / "b")
    for component in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, component).state_dict(), getattr(b, component).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), component
    assert a.scheduler_config["prediction_type"] == "v_prediction"
    assert a.vae.config.scaling_factor > 0 and a.tokenizer("red circle").input_ids == b.tokenizer("red circle").input_ids
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["seed"] == 7 and record["budget"]["unet_steps"] == 4
