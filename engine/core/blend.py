"""Weighted blends of tensors (prompt embeddings, seed noise): linear and spherical."""

from __future__ import annotations

import torch

from engine.errors import ConfigError


def normalised_weights(weights: list[float]) -> list[float]:
    if not weights:
        raise ConfigError("a blend needs at least one entry")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w != w or w < 0:
            raise ConfigError(f"blend weights must be numbers >= 0, got {w!r}")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("blend weights sum to 0: give at least one positive weight")
    return [float(w) / total for w in weights]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation over the whole tensor, falling back to lerp for near-parallel inputs.

    Keeps the norm of Gaussian noise (a lerp of two noises is too quiet in the middle, which
    shows as a washed-out frame) and moves prompt embeddings along the arc between them.
    Branch-free on the device: a prompt crossfade calls this every frame, and a Python
    `if` on the angle would be a host sync each time.
    """
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    arc = sin > 1e-4
    safe_sin = torch.where(arc, sin, torch.ones_like(sin))
    wa = torch.where(arc, torch.sin((1 - t) * theta) / safe_sin, torch.full_like(sin, 1 - t))
    wb = torch.where(arc, torch.sin(t * theta) / safe_sin, torch.full_like(sin, t))
    return (wa * a.double() + wb * b.double()).to(a.dtype)


def blend(tensors: list[torch.Tensor], weights: list[float], method: str = "linear") -> torch.Tensor:
    """Weighted blend; `slerp` folds the list pairwise so weights add up like a running mean."""
    w = normalised_weights(weights)
    if len(tensors) != len(w):
        raise ConfigError(f"blend got {len(tensors)} tensors and {len(w)} weights")
    if method == "linear":
        out = tensors[0] * w[0]
        for tensor, weight in zip(tensors[1:], w[1:]):
            out = out + tensor * weight
        return out
    if method != "slerp":
        raise ConfigError(f"unknown blend method {method!r}: allowed linear, slerp")
    out, acc = tensors[0], w[0]
    for tensor, weight in zip(tensors[1:], w[1:]):
        if weight > 0:
            out = slerp(out, tensor, weight / (acc + weight)) if acc > 0 else tensor
            acc += weight
    return out
