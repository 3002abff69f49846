"""The tiny models: `tiny` (trained, shipped in weights/tiny) and the random-weight builds.

`tiny` is trained on procedural pictures by training/train_tiny.py and loaded from its
diffusers folder (TRAINED_TINY) through engine/models/load.py's load_folder, like any model.

`tiny-random` and `tiny-sdxl`, built here, are random weights for tests: they have the real
architectures (diffusers UNet2DConditionModel, AutoencoderTiny, CLIP text encoders with a
byte-level BPE tokenizer) at toy widths, so every code path that runs on sd-turbo or
sdxl-turbo runs on them, with nothing to download. Weights are seeded, so two builds are
identical. The VAE keeps the real 8x spatial factor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from engine.models.family import Family

TRAINED_TINY = Path(__file__).parent / "weights" / "tiny"
TINY_SCHEDULER_CONFIG = {
    "_class_name": "LCMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_scaling": 10.0,
}
_TEXT_WIDTH = 32
_TIME_EMBED = 8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (no merges): fully offline."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[s] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(vocab_size: int, projection_dim: int = _TEXT_WIDTH) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_TEXT_WIDTH,
        intermediate_size=2 * _TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def build_tiny_unet(family: Family) -> UNet2DConditionModel:
    kwargs: dict = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        # Attention only at half resolution: 4x fewer tokens keeps the demo and tests quick.
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": _TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }
    if family is Family.SDXL:
        # Two encoders concatenated; pooled embeds + 6 micro-conditioning time ids.
        kwargs.update(
            cross_attention_dim=2 * _TEXT_WIDTH,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED,
            projection_class_embeddings_input_dim=_TEXT_WIDTH + 6 * _TIME_EMBED,
        )
    return UNet2DConditionModel(**kwargs)


def build_tiny_vae(seed: int = 0) -> AutoencoderTiny:
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    # PyTorch's default conv init shrinks the signal ~3x per layer, so a random VAE would
    # ignore its input. He init keeps it alive; the last layers are scaled so latents are
    # ~unit variance and decoded pixels mostly inside [-1, 1]: the output follows the input.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        vae.encoder.layers[-1].weight.mul_(0.25)
        vae.decoder.layers[-1].weight.mul_(0.08)
    return vae


def build_tiny_components(family: Family = Family.SD15, seed: int = 0) -> dict:
    """The pieces of a tiny pipeline as a dict keyed like diffusers' model_index.json."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    vocab_size = len(tokenizer)
    parts = {
        "unet": build_tiny_unet(family),
        "vae": build_tiny_vae(seed),
        "tokenizer": tokenizer,
        "scheduler_config": dict(TINY_SCHEDULER_CONFIG),
    }
    if family is Family.SDXL:
        parts["text_encoder"] = CLIPTextModel(_text_config(vocab_size))
        parts["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(vocab_size))
        parts["tokenizer_2"] = build_tiny_tokenizer()
    else:
        parts["text_encoder"] = CLIPTextModel(_text_config(vocab_size))
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return parts
