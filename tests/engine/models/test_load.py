from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import ModelLoadError
from engine.models.family import Family, detect_family
from engine.models.load import load_model, pick_hub_files, save_folder
from tests.engine.core.pipelines import make_pipeline


def render(parts, frames=3):
    pipe = make_pipeline(parts, seed_rng=None)
    gen = np.random.default_rng(0)
    return [pipe(gen.integers(0, 256, (64, 64, 4), dtype=np.uint8)).clone() for _ in range(frames)]


def assert_same_output(a, b):
    for x, y in zip(render(a), render(b), strict=True):
        assert torch.equal(x, y)


def test_tiny_models_are_deterministic_and_family_shaped(tiny_parts, tiny_sdxl_parts):
    again = load_model("tiny")
    for x, y in zip(tiny_parts.unet.state_dict().values(), again.unet.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert tiny_parts.family is Family.SD15 and tiny_parts.text_encoder_2 is None
    assert tiny_sdxl_parts.family is Family.SDXL and tiny_sdxl_parts.text_encoder_2 is not None


@pytest.mark.parametrize("name", ["tiny", "tiny-random", "tiny-sdxl"])
def test_local_folder_round_trip_is_bit_exact(tmp_path, name):
    parts = load_model(name)
    save_folder(parts, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    assert loaded.family is parts.family
    assert type(loaded.vae).__name__ == "AutoencoderTiny"  # the folder's own VAE class
    assert_same_output(parts, loaded)


def test_vae_override_from_a_folder(tmp_path, tiny_parts):
    tiny_parts.vae.save_pretrained(str(tmp_path / "vae"))
    save_folder(tiny_parts, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), vae=str(tmp_path / "vae"))
    assert_same_output(tiny_parts, loaded)


def test_family_comes_from_config_not_name(tmp_path, tiny_parts):
    save_folder(tiny_parts, tmp_path / "sdxl-looking-name")
    assert load_model(str(tmp_path / "sdxl-looking-name")).family is Family.SD15
    assert detect_family({"cross_attention_dim": 1024}) is Family.SD21
    assert detect_family({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) is Family.SDXL
    assert load_model(str(tmp_path / "sdxl-looking-name"), family="sd21").family is Family.SD21


@pytest.mark.parametrize(("spec", "message"), [
    ("./no/such/folder", "does not exist"),
    ("/no/such/model.safetensors", "does not exist"),
    ("not a model id", "does not exist"),
])
def test_missing_model_is_a_one_line_error(spec, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match="missing unet"):
        load_model(str(tmp_path))


def test_disallowed_component_class_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["os", "system"]}))
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name", ["tiny", "tiny-random"])
def test_wrong_family_for_tiny(name):
    with pytest.raises(ModelLoadError, match="sd15-shaped"):
        load_model(name, family="sdxl")


def test_a_missing_trained_tiny_names_the_command_that_makes_it(monkeypatch, tmp_path):
    import engine.models.load as load

    monkeypatch.setattr(load, "TRAINED_TINY", tmp_path / "gone")
    with pytest.raises(ModelLoadError, match="python -m training.train_tiny --seed 0") as info:
        load_model("tiny")
    assert "\n" not in str(info.value)


def test_hub_model_offline_names_the_model_and_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot download model 'stabilityai/sd-turbo'.*--model tiny") as info:
        load_model("stabilityai/sd-turbo")
    assert "\n" not in str(info.value)


def test_hub_file_selection_takes_one_safetensors_per_weight():
    files = ["model_index.json", "sd_turbo.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
             "text_encoder/model.safetensors", "tokenizer/vocab.json", "README.md"]
    assert pick_hub_files(files, fp16=True) == ["model_index.json", "text_encoder/model.safetensors",
                                                "tokenizer/vocab.json", "unet/config.json",
                                                "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert "unet/diffusion_pytorch_model.safetensors" in pick_hub_files(files, fp16=False)
    assert "sd_turbo.safetensors" not in pick_hub_files(files, fp16=False)
    ema = files + ["unet/diffusion_pytorch_model.non_ema.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    picked = pick_hub_files(ema, fp16=False)
    assert "unet/diffusion_pytorch_model.non_ema.safetensors" not in picked
    assert "vae/diffusion_pytorch_model.safetensors" in picked


def test_vae_repo_files():
    files = ["config.json", "diffusion_pytorch_model.safetensors", "taesd_encoder.pth", "README.md"]
    assert pick_hub_files(files, fp16=True) == ["config.json", "diffusion_pytorch_model.safetensors"]
