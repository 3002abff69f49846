"""`sd-turbo-random`: the sd-turbo / SD 2.1 architecture with random weights, built offline.

Speed does not depend on the weights, so this model measures what a real sd-turbo would
cost on a machine that cannot download it (a benchmark box, a venue without internet):
its UNet from sd-turbo's own config (written out below), a TAESD-sized AutoencoderTiny
(the VAE streamvj's presets use), and an OpenCLIP-H-shaped text encoder (off the
per-frame path; it only encodes prompts). The picture is noise; the frame rate is real.
"""

from __future__ import annotations

import torch

from engine.models.family import Family
from engine.models.tiny import build_tiny_tokenizer

# stabilityai/sd-turbo unet/config.json (= SD 2.1's UNet). In diffusers' SD2 configs
# "attention_head_dim" holds the number of heads per block (5, 10, 20, 20 -> 64 channels per head).
SD_TURBO_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,  # only read by the non-SDPA attention path; SDPA is what runs here
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
# sd-turbo's scheduler: epsilon prediction, SD's scaled-linear betas.
SD_TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}
# OpenCLIP ViT-H/14 text tower as SD 2.x uses it (penultimate layer: 23 of 24 layers kept).
OPENCLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                   "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                   "projection_dim": 512}


def build_sd_turbo_random(device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """The components (unet, vae, text_encoder, tokenizer, scheduler_config) on `device`, in fp32."""
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()  # offline byte-level CLIP tokenizer: same 77-token output shape
    vocab = len(tokenizer)
    with torch.device(device):  # initialise on the GPU there: seconds instead of a minute of CPU init
        unet = UNet2DConditionModel.from_config(SD_TURBO_UNET)
        vae = AutoencoderTiny()  # the default config is TAESD's
        text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                            pad_token_id=vocab - 1, **OPENCLIP_H_TEXT))
    for module in (unet, vae, text):
        module.eval().requires_grad_(False)
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tokenizer,
            "scheduler_config": dict(SD_TURBO_SCHEDULER)}


RANDOM_MODELS = {"sd-turbo-random": (Family.SD21, build_sd_turbo_random)}
