"""Per-slot diffusion coefficients for the stream batch, computed once at prepare time.

Timesteps follow StreamDiffusion: `t_index_list` indexes a 50-step LCM schedule, so index
k is timestep 999 - 20k ([32, 45] -> 359, 99). The denoiser is LCM's consistency
parameterisation (Luo et al. 2023, eq. 9): x0 = c_out * (x - beta*eps)/alpha + c_skip * x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config.schema import LCM_STEPS
from engine.errors import ConfigError

_SIGMA_DATA = 0.5


def check_t_index_list(t_index_list: list[int] | tuple[int, ...]) -> list[int]:
    values = list(t_index_list)
    if not values:
        raise ConfigError(f"t_index_list is empty: give 1 to 4 indices in 0..{LCM_STEPS - 1}, e.g. [32, 45]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"t_index_list entries must be integers in 0..{LCM_STEPS - 1}, got {v!r}")
        if not 0 <= v < LCM_STEPS:
            raise ConfigError(f"t_index_list entry {v} is out of range: allowed 0..{LCM_STEPS - 1}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"t_index_list must be strictly increasing, got {values}")
    return values


def lcm_timesteps(t_index_list: list[int], num_train_timesteps: int = 1000) -> list[int]:
    stride = num_train_timesteps // LCM_STEPS
    return [num_train_timesteps - 1 - stride * k for k in check_t_index_list(t_index_list)]


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """alpha_bar(t) for t in 0..T-1, in float64, from a diffusers scheduler config."""
    n = int(scheduler_config.get("num_train_timesteps", 1000))
    start = float(scheduler_config.get("beta_start", 0.00085))
    end = float(scheduler_config.get("beta_end", 0.012))
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise ConfigError(f"unsupported beta_schedule {kind!r}: streamvj supports scaled_linear and linear")
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class SlotCoefficients:
    """One value per denoising slot (length N), float64 on the CPU; the stream expands them."""

    timesteps: torch.Tensor
    alpha: torch.Tensor  # sqrt(alpha_bar)
    beta: torch.Tensor  # sqrt(1 - alpha_bar)
    c_skip: torch.Tensor
    c_out: torch.Tensor


def slot_coefficients(t_index_list: list[int], scheduler_config: dict) -> SlotCoefficients:
    n_train = int(scheduler_config.get("num_train_timesteps", 1000))
    timesteps = torch.tensor(lcm_timesteps(t_index_list, n_train), dtype=torch.int64)
    abar = alphas_cumprod(scheduler_config)[timesteps]
    scale = float(scheduler_config.get("timestep_scaling", 10.0))
    scaled_t = timesteps.to(torch.float64) * scale
    c_skip = _SIGMA_DATA**2 / (scaled_t**2 + _SIGMA_DATA**2)
    c_out = scaled_t / (scaled_t**2 + _SIGMA_DATA**2) ** 0.5
    return SlotCoefficients(timesteps, abar.sqrt(), (1.0 - abar).sqrt(), c_skip, c_out)
