"""The trained model's UNet and its img2img diffusion loss.

Prediction type: v (v = alpha*eps - beta*x0). The stream batch's first slot starts at
t ~ 359, where most of the change toward the prompt happens; with epsilon prediction the x0
the scheduler reads back is (x - beta*eps)/alpha, which multiplies the UNet's error by
beta/alpha (and by ~14 at t = 999, txt2img's start). v is well conditioned at every t, and
engine/core/stream.py converts it to epsilon (scheduler prediction_type "v_prediction").

The loss (`pair_loss`): plain denoising never teaches a prompt to override the colours the
noisy input still shows, because in training the caption always matches the picture. So the
source picture A is noised, the caption is that of B (the same layout painted otherwise) and
the target is B: x_t = alpha*z(A) + beta*n, and the v the model must give is the one whose
implied x0 is z(B). For A == B (half the batches) it is ordinary v-prediction training.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from engine.core.schedule import alphas_cumprod, lcm_timesteps

UNET_CHANNELS = (32, 64)


def build_unet(cross_attention_dim: int, channels: tuple[int, int] = UNET_CHANNELS) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        # Attention only at half resolution, as in the random tiny model: 4x fewer tokens.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # A zero output conv starts the model at v = 0, i.e. x0 = alpha * x_t: the noisy input
    # itself, shrunk. So training starts from "keep the input's structure" and learns what
    # to change, instead of first forgetting the input behind random outputs.
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    return unet


def sample_timesteps(g: torch.Generator, batch: int, scheduler_config: dict) -> torch.Tensor:
    """Mostly in the range the stream batch uses (t_index_list [32, 45] -> 359, 99; up to
    ~420), the rest anywhere (txt2img starts at 999; other step lists)."""
    hi, lo = lcm_timesteps([32, 45], int(scheduler_config.get("num_train_timesteps", 1000)))
    which = torch.rand(batch, generator=g)
    near = (lo - 40 + (hi + 60 - lo + 40) * torch.rand(batch, generator=g)).round()
    anywhere = torch.randint(0, 1000, (batch,), generator=g).float()
    return torch.where(which < 0.75, near, anywhere).clamp(0, 999).long()


def changed(z_source: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows whose target is another picture than their source."""
    return (z_source - z_target).flatten(1).abs().amax(1).gt(0)


def pair_timesteps(g: torch.Generator, t: torch.Tensor, differs: torch.Tensor) -> torch.Tensor:
    """Rows that change picture train only around the stream batch's first step (t 260..460).

    At low t (the second step, t = 99) a change of colours cannot be told from noise: there
    the model must keep what it gets and clean it up. Trained to change pictures at low t
    too, it hedges toward the caption's mean colour before it can read captions well, and
    the picture's structure is lost. So the first slot moves colours, the last one denoises.
    """
    high = torch.randint(260, 461, t.shape, generator=g)
    return torch.where(differs, high, t)


def pair_loss(unet: UNet2DConditionModel, hidden: torch.Tensor, z_source: torch.Tensor, z_target: torch.Tensor,
              t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """MSE on v for x_t = alpha*z_source + beta*noise whose x0 should be z_target.

    v-MSE is x0-MSE / beta^2; when source and target differ, the v target itself grows like
    1/beta as t -> 0 (little noise left to explain the change), so those rows are weighted
    down to x0-MSE / 0.3^2 below beta = 0.3: they would otherwise dominate the gradient.
    """
    a = abar[t].sqrt().float().view(-1, 1, 1, 1)
    b = (1 - abar[t]).sqrt().float().view(-1, 1, 1, 1)
    x_t = a * z_source + b * noise
    eps = (x_t - a * z_target) / b
    v = a * eps - b * z_target
    pred = unet(x_t, t, encoder_hidden_states=hidden).sample
    differs = changed(z_source, z_target).float().view(-1, 1, 1, 1)
    weight = 1 - differs + differs * (b / 0.3).pow(2).clamp(max=1.0)
    return ((pred - v).pow(2) * weight).mean()


def alphas(scheduler_config: dict) -> torch.Tensor:
    return alphas_cumprod(scheduler_config)
