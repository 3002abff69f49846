from __future__ import annotations

import torch

from engine.models.family import Family
from engine.models.tiny import build_tiny_components, build_tiny_tokenizer


def test_tokenizer_is_offline_and_round_trips_text():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("Neon jellyfish, 4K!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "neonjellyfish,4k!"


def test_components_are_seeded():
    a, b, c = build_tiny_components(seed=0), build_tiny_components(seed=0), build_tiny_components(seed=1)
    weight = "conv_in.weight"
    assert torch.equal(a["unet"].state_dict()[weight], b["unet"].state_dict()[weight])
    assert not torch.equal(a["unet"].state_dict()[weight], c["unet"].state_dict()[weight])


def test_vae_keeps_the_8x_factor_and_follows_its_input():
    vae = build_tiny_components()["vae"]
    with torch.no_grad():
        dark, light = torch.full((1, 3, 64, 64), -0.8), torch.full((1, 3, 64, 64), 0.8)
        lat_dark, lat_light = vae.encode(dark).latents, vae.encode(light).latents
        assert lat_dark.shape == (1, 4, 8, 8)
        assert (vae.decode(lat_dark).sample - vae.decode(lat_light).sample).abs().mean() > 0.05


def test_sdxl_shape_has_two_encoders_and_time_embedding():
    parts = build_tiny_components(Family.SDXL)
    assert parts["text_encoder_2"] is not None and parts["unet"].config.addition_embed_type == "text_time"
