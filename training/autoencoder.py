"""The trained model's autoencoder: diffusers' AutoencoderTiny (TAESD's shape), narrow.

Every stage has the same width (AutoencoderTiny's stride and upsample convs keep the channel
count), so the cost is set by the full-resolution layers: neither side has a residual block
at full resolution (the encoder's block count starts with 0, the decoder's ends with 0); the
blocks sit at 1/2 to 1/8 resolution, where they are 4-64x cheaper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

AE_WIDTH = 16
LATENT_CHANNELS = 4


def build_autoencoder(width: int = AE_WIDTH) -> AutoencoderTiny:
    vae = AutoencoderTiny(
        encoder_block_out_channels=(width,) * 4,
        decoder_block_out_channels=(width,) * 4,
        num_encoder_blocks=(0, 1, 2, 2),
        num_decoder_blocks=(2, 2, 1, 0),
        latent_channels=LATENT_CHANNELS,
        act_fn="silu",
    )
    # The decoder maps its output o to 2*o - 1, so at init (o ~ 0) every pixel is black; the
    # first steps then spend themselves (and kill ReLUs) shifting the mean. Starting at mid-grey
    # with a quiet output conv, and SiLU (no dead units), skips that plateau.
    with torch.no_grad():
        vae.decoder.layers[-1].bias.fill_(0.5)
        vae.decoder.layers[-1].weight.mul_(0.1)
    return vae


def autoencoder_loss(vae: AutoencoderTiny, images: torch.Tensor, noise: torch.Tensor,
                     noise_level: float = 0.1) -> torch.Tensor:
    """L1 + MSE reconstruction; half the batch is decoded from latents with a little noise
    added, so the decoder tolerates the small latent errors a one-step denoiser leaves."""
    latents = vae.encode(images).latents
    half = images.shape[0] // 2
    scale = latents.detach().std()
    noisy = torch.cat([latents[:half], latents[half:] + noise_level * scale * noise[half:]])
    recon = vae.decode(noisy).sample
    return F.l1_loss(recon, images) + F.mse_loss(recon, images)


@torch.no_grad()
def psnr(vae: AutoencoderTiny, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of the reconstructions of `images` ([-1, 1]), measured in [0, 1]."""
    recon = vae.decode(vae.encode(images).latents).sample.clamp(-1, 1)
    mse = ((recon - images) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
