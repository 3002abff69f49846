"""ControlNet loading: `random` shaped like the model, folders and hub-style ids, family checks, errors."""

from __future__ import annotations

import pytest
import torch

from engine.config.schema import ControlNetSpec
from engine.errors import ModelLoadError
from engine.models.controlnet import build_random_controlnet, load_controlnet, load_controlnets
from engine.models.family import Family
from engine.models.load import load_model


@pytest.fixture(scope="module")
def random_parts():
    """The random-weight tiny model (its UNet is what these ControlNets are shaped after)."""
    return load_model("tiny-random")



def test_random_controlnet_is_shaped_like_the_unet_and_acts(random_parts):
    controlnet = build_random_controlnet(random_parts.unet)
    assert tuple(controlnet.config.block_out_channels) == tuple(random_parts.unet.config.block_out_channels)
    x, t, hidden = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        down, mid = controlnet(x, t, hidden, torch.rand(1, 3, 64, 64), return_dict=False)
    assert all(float(r.abs().max()) > 0 for r in (*down, mid))  # zero convolutions made live
    again = build_random_controlnet(random_parts.unet)
    assert all(torch.equal(a, b) for a, b in zip(controlnet.state_dict().values(), again.state_dict().values()))


def test_a_saved_controlnet_folder_loads_back(random_parts, tmp_path):
    saved = build_random_controlnet(random_parts.unet, seed=3)
    saved.save_pretrained(str(tmp_path / "cn"))
    loaded = load_controlnet(str(tmp_path / "cn"), random_parts.unet, Family.SD15)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))


def test_family_mismatch_names_both_families(random_parts, tiny_sdxl_parts):
    with pytest.raises(ModelLoadError, match=r"ControlNet 'random' is sdxl-shaped .* the model is sd15 .* "
                                             r"trained for sd15"):
        # An SDXL-shaped ControlNet for an SD 1.5 model: built from the SDXL UNet, checked against the SD 1.5 one.
        from engine.models.controlnet import check_controlnet_family

        check_controlnet_family(build_random_controlnet(tiny_sdxl_parts.unet), random_parts.unet, Family.SD15, "random")


@pytest.mark.parametrize(("spec", "message"), [
    ("./no/such/controlnet", "does not exist .* Hugging Face id .* 'random'"),
    ("/no/such/controlnet.safetensors", "does not exist"),
    ("not a hub id!", "does not exist"),
])
def test_missing_controlnets_say_what_to_give(random_parts, spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_controlnet(spec, random_parts.unet, Family.SD15)


def test_a_folder_that_is_not_a_controlnet_is_refused(random_parts, tmp_path):
    random_parts.unet.save_pretrained(str(tmp_path / "unet"))
    with pytest.raises(ModelLoadError, match="not a ControlNet .* UNet2DConditionModel"):
        load_controlnet(str(tmp_path / "unet"), random_parts.unet, Family.SD15)


def test_load_controlnets_loads_a_shared_depth_model_once(random_parts):
    specs = [ControlNetSpec(model="random", preprocessor="depth", depth_model="random"),
             ControlNetSpec(model="random", preprocessor="depth", depth_model="random"),
             ControlNetSpec(model="random", preprocessor="canny")]
    loaded = load_controlnets(specs, random_parts.unet, Family.SD15)
    assert loaded[0].depth is loaded[1].depth is not None and loaded[2].depth is None
