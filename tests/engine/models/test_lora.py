from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

from engine.errors import ModelLoadError
from engine.models.load import load_model
from engine.models.lora import fuse_loras

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """A LoRA for the tiny UNet, saved the way trainers publish them."""
    unet = load_model("tiny").unet
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False), adapter_name="trained")
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(
        unet, adapter_name="trained"), safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def fused_delta(lora_file, scale: float) -> torch.Tensor:
    base = load_model("tiny")
    before = base.unet.state_dict()[LAYER].clone()
    fuse_loras(base, [(str(lora_file), scale, None)])
    after = base.unet.state_dict()
    assert not any("lora" in key for key in after)  # adapters unloaded, plain weights remain
    return after[LAYER] - before


def test_lora_is_fused_with_its_scale(lora_file):
    full, half = fused_delta(lora_file, 1.0), fused_delta(lora_file, 0.5)
    assert full.abs().max() > 1e-3
    torch.testing.assert_close(half, full / 2, atol=1e-6, rtol=1e-4)


def test_lora_from_a_folder_with_weight_name(lora_file, tmp_path):
    """A folder holding several LoRAs: `weight_name` picks the file. The other one (the same LoRA
    three times as strong) sits under the name diffusers loads by default, so a weight_name that
    were ignored would fuse the wrong file (or fail to choose), never the right delta."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(lora_file))
    save_file(state, str(tmp_path / "style_a.safetensors"))
    save_file({key: 3 * value for key, value in state.items()}, str(tmp_path / "pytorch_lora_weights.safetensors"))
    parts = load_model("tiny")
    before = parts.unet.state_dict()[LAYER].clone()
    fuse_loras(parts, [(str(tmp_path), 1.0, "style_a.safetensors")])
    delta = parts.unet.state_dict()[LAYER] - before
    torch.testing.assert_close(delta, fused_delta(lora_file, 1.0), atol=1e-6, rtol=1e-4)


def test_missing_lora_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        fuse_loras(load_model("tiny"), [(str(tmp_path / "nope.safetensors"), 1.0, None)])


def test_unreadable_lora_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load LoRA"):
        fuse_loras(load_model("tiny"), [(str(bad), 1.0, None)])
