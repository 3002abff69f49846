from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler

from engine.core.schedule import alphas_cumprod, lcm_timesteps, slot_coefficients
from engine.errors import ConfigError
from engine.models.tiny import TINY_SCHEDULER_CONFIG


def test_timesteps_index_the_50_step_lcm_schedule():
    scheduler = LCMScheduler.from_config(TINY_SCHEDULER_CONFIG)
    scheduler.set_timesteps(50)
    indices = [0, 16, 32, 45, 49]
    assert lcm_timesteps(indices) == [int(scheduler.timesteps[k]) for k in indices]
    assert lcm_timesteps([32, 45]) == [359, 99]


def test_coefficients_match_diffusers_lcm_scheduler():
    scheduler = LCMScheduler.from_config(TINY_SCHEDULER_CONFIG)
    coeffs = slot_coefficients([0, 20, 35, 49], TINY_SCHEDULER_CONFIG)
    torch.testing.assert_close(alphas_cumprod(TINY_SCHEDULER_CONFIG).float(), scheduler.alphas_cumprod)
    for i, t in enumerate(coeffs.timesteps.tolist()):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        abar = scheduler.alphas_cumprod[t].double()
        assert float(coeffs.c_skip[i]) == pytest.approx(float(c_skip), rel=1e-6)
        assert float(coeffs.c_out[i]) == pytest.approx(float(c_out), rel=1e-6)
        assert float(coeffs.alpha[i]) == pytest.approx(float(abar.sqrt()), rel=1e-5)  # diffusers accumulates in float32
        assert float(coeffs.beta[i]) == pytest.approx(float((1 - abar).sqrt()), rel=1e-5)


def test_unknown_beta_schedule_is_rejected():
    with pytest.raises(ConfigError, match="beta_schedule"):
        alphas_cumprod({"beta_schedule": "cosine_squared"})
