from __future__ import annotations

import pytest
import torch

from engine.core.blend import blend, normalised_weights, slerp
from engine.errors import ConfigError


def test_linear_blend_is_the_weighted_mean():
    a, b = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(blend([a, b], [1, 3]), torch.full((3,), 0.75))


def test_slerp_keeps_the_norm_of_orthogonal_noise():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, generator=gen), torch.randn(4096, generator=gen)
    mid = slerp(a, b, 0.5)
    assert float(mid.norm()) == pytest.approx(float(a.norm() + b.norm()) / 2, rel=0.02)
    assert float(torch.lerp(a, b, 0.5).norm()) < 0.8 * float(mid.norm())  # why lerp greys out noise


def test_slerp_endpoints_and_single_weight():
    a, b = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(blend([a, b], [1, 0], "slerp"), a)
    torch.testing.assert_close(blend([a, b], [0, 1], "slerp"), b)


@pytest.mark.parametrize("weights", [[], [0, 0], [-1, 2], [float("nan")]])
def test_bad_weights(weights):
    with pytest.raises(ConfigError):
        normalised_weights(weights)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown blend method"):
        blend([torch.zeros(1), torch.ones(1)], [1, 1], "cubic")


def test_slerp_of_parallel_inputs_is_a_lerp():
    a = torch.ones(8)
    torch.testing.assert_close(slerp(a, 3 * a, 0.5), 2 * a)
    torch.testing.assert_close(slerp(a, a, 0.3), a)
