"""Feature bank: extended self-attention over cached keys/values, and feature fusion (StreamV2V,
Liang et al. 2024, arXiv 2405.15757).

Each self-attention layer (attn1) of the UNet also attends to the keys and values it
computed in earlier calls, which pulls the new frame's features toward the recent frames'
and so damps flicker. Feature fusion, StreamV2V's second half, then moves each output token
of the deepest layers toward its most similar banked output token. Installed as a diffusers
attention processor; diffusers is not forked.

Which features a row attends to (the stream batch, engine/core/stream.py): every row of
the UNet batch keeps its own ring of `max_frames` slots. Row (slot i, frame j) therefore
attends to what the same row held 1..M refreshes earlier: the frames that passed through
slot i, at slot i's timestep, before this one. With F frames per call that is frame j of the
earlier groups (F, 2F, ... frames back), not frame j-1 of the same group. Negative rows
(cfg full / initialize) keep rings of their own too, so the negative prediction is as
steady as the positive one and guidance does not amplify the bank's pull.

The mode (`BankState.mode`, host side, one of BANK_MODES) decides which code runs: `off` is
the plain attention of AttnProcessor2_0 with no ring work at all (no cost, today's output bit
for bit); `bank` adds the extended attention and the ring writes; `fusion` adds feature
fusion. A compiled or CUDA-graph-captured frame step has one variant per mode, all made in
the pipeline's warm-up. Within a mode everything is live with no shape change: M (`frames`,
0..max_frames) masks slots out; K (`refresh`) writes the ring every K-th call (an on-device
counter and a torch.where select, no host branch); the strengths are lerp weights, exactly 0
while the ring holds no frame, and lerp with weight 0 returns its first argument bit for bit.
The pipeline (engine/core/temporal.py) runs `off` while it primes an empty stream batch and
clears the ring whenever the bank switches on, so it starts empty, never with stale features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from engine.errors import ConfigError

log = logging.getLogger("streamvj.feature_bank")

OFF, BANK, FUSION = "off", "bank", "fusion"
BANK_MODES = (OFF, BANK, FUSION)  # what each runs: the module docstring
# The blocks whose self-attention outputs are fused: StreamV2V's choice, the deepest (fewest tokens).
FUSION_BLOCKS = ("mid_block", "up_blocks.0", "up_blocks.1")


class BankState:
    """What every layer's processor shares: the mode, live settings and the ring's position.

    `begin` (before a UNet call) derives which slots count and the blend weights; `end` (after)
    advances the ring. Both are tensor ops into these buffers, so they capture and compile.
    """

    def __init__(self, max_frames: int, device: torch.device, dtype: torch.dtype):
        self.max_frames = max_frames
        self.mode = OFF  # a Python value: selects the code (and so the compiled step / CUDA graph)

        def scalar(value: float, kind: torch.dtype) -> torch.Tensor:
            return torch.full((), value, device=device, dtype=kind)

        self.frames = scalar(0, torch.int64)  # M
        self.refresh = scalar(1, torch.int64)  # K
        self.strength = scalar(1.0, dtype)
        self.fusion_strength = scalar(0.0, dtype)
        self.fusion_threshold = scalar(1.0, dtype)
        self.calls = scalar(0, torch.int64)  # UNet calls since the last clear
        self.pos = torch.zeros(1, device=device, dtype=torch.int64)  # the slot the next write goes to
        self.filled = scalar(0, torch.int64)  # slots written since the last clear (at most max_frames)
        self._slots = torch.arange(max_frames, device=device, dtype=torch.int64)
        self.slot_valid = torch.zeros(max_frames, device=device, dtype=torch.bool)
        self.weight = scalar(0.0, dtype)
        self.fusion_weight = scalar(0.0, dtype)
        self.write = scalar(False, torch.bool)

    def set(self, frames: int, refresh: int, strength: float, fusion_strength: float = 0.0,
            fusion_threshold: float = 1.0) -> None:
        self.frames.fill_(min(int(frames), self.max_frames))
        self.refresh.fill_(int(refresh))
        self.strength.fill_(float(strength))
        self.fusion_strength.fill_(float(fusion_strength))
        self.fusion_threshold.fill_(float(fusion_threshold))

    def clear(self) -> None:
        """Forget every banked frame (reset, scene cut, switch-on): the next call attends to itself only."""
        self.calls.zero_()
        self.pos.zero_()
        self.filled.zero_()

    def begin(self) -> None:
        ages = torch.remainder(self.pos - 1 - self._slots, self.max_frames)  # 0 = the newest slot
        limit = torch.minimum(self.frames, self.filled)
        self.slot_valid.copy_(ages < limit)
        self.weight.copy_(self.strength * (limit > 0))
        self.fusion_weight.copy_(self.fusion_strength * (limit > 0))
        self.write.copy_(torch.remainder(self.calls, self.refresh) == 0)

    def end(self) -> None:
        step = self.write.long()
        self.calls.add_(1)
        self.pos.copy_(torch.remainder(self.pos + step, self.max_frames))
        self.filled.copy_(torch.clamp(self.filled + step, max=self.max_frames))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.calls, self.pos, self.filled)


def fuse(x: torch.Tensor, banked: torch.Tensor, token_valid: torch.Tensor, threshold: torch.Tensor,
         weight: torch.Tensor) -> torch.Tensor:
    """StreamV2V's feature fusion: each token of `x` (rows, tokens, C) moves toward its most
    cosine-similar token among the same row's valid banked ones (`banked`: rows, slots x tokens, C;
    `token_valid`: slots x tokens), if that similarity reaches `threshold`:
    lerp(x, nearest if best cosine >= threshold else x, weight). Invalid tokens score -2, below any
    threshold in 0..1; a token no banked one reaches stays exactly x."""
    cos = torch.bmm(F.normalize(x, dim=-1), F.normalize(banked, dim=-1).transpose(1, 2))
    best, index = cos.masked_fill(~token_valid, -2.0).max(dim=-1)
    nearest = torch.gather(banked, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.lerp(x, torch.where((best >= threshold).unsqueeze(-1), nearest, x), weight)


class BankedSelfAttention:
    """attn1's processor: AttnProcessor2_0's ops for the plain attention (mode `off`, and w = 0, are
    bit-exact), in the bank modes one more attention over [own keys, banked keys], the lerp, the
    ring writes and, on a fusion layer (`fused`), feature fusion of the output."""

    def __init__(self, state: BankState, attn: Any, rows: int, tokens: int, original: Any, fused: bool = False):
        self.state, self.rows, self.tokens, self.original = state, rows, tokens, original
        inner = attn.to_k.out_features
        self.heads, self.head_dim = attn.heads, inner // attn.heads
        weight = attn.to_k.weight
        shape = (rows, self.heads, state.max_frames, tokens, self.head_dim)
        self.keys = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.own = torch.ones(tokens, device=weight.device, dtype=torch.bool)
        # The layer's own outputs (before fusion), written in both bank modes so fusion can switch on at once.
        width = attn.to_out[0].out_features
        self.outputs = torch.zeros((rows, state.max_frames, tokens, width), device=weight.device,
                                   dtype=weight.dtype) if fused else None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ConfigError("the feature bank serves self-attention (attn1) without a mask only")
        if batch_size != self.rows or sequence_length != self.tokens:
            raise ConfigError(f"feature bank sized for {self.rows} rows x {self.tokens} tokens, got "
                              f"{batch_size} x {sequence_length}: rebuild the pipeline (size or batch changed)")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        heads, head_dim = self.heads, self.head_dim
        query = query.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                                       is_causal=False)

        state, slots = self.state, self.state.max_frames
        banked = state.mode != OFF
        if banked:
            token_valid = state.slot_valid[:, None].expand(slots, sequence_length).reshape(-1)
            banked_shape = (batch_size, heads, slots * sequence_length, head_dim)
            keys = torch.cat([key, self.keys.view(banked_shape)], dim=2)
            values = torch.cat([value, self.values.view(banked_shape)], dim=2)
            mask = torch.cat([self.own, token_valid]).view(1, -1)
            extended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=0.0,
                                                      is_causal=False)
            hidden_states = torch.lerp(hidden_states, extended, state.weight)
            # Bank this call's keys/values (every K-th call): a select, so no host branch.
            self._bank(self.keys, key.unsqueeze(2))
            self._bank(self.values, value.unsqueeze(2))

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if banked and self.outputs is not None:
            own = hidden_states
            if state.mode == FUSION:
                hidden_states = fuse(own, self.outputs.view(batch_size, slots * sequence_length, -1), token_valid,
                                     state.fusion_threshold, state.fusion_weight)
            self._bank(self.outputs, own.unsqueeze(1), dim=1)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _bank(self, ring: torch.Tensor, new: torch.Tensor, dim: int = 2) -> None:
        pos = self.state.pos
        ring.index_copy_(dim, pos, torch.where(self.state.write, new, ring.index_select(dim, pos)))


def _levels(unet: Any) -> dict[str, int]:
    """How many times each block's input was halved: down blocks count the downsamplers before
    them, the mid block all of them, up blocks that minus the upsamplers before them."""
    levels, level = {}, 0
    for i, block in enumerate(unet.down_blocks):
        levels[f"down_blocks.{i}"] = level
        level += 1 if getattr(block, "downsamplers", None) else 0
    levels["mid_block"] = level
    for i, block in enumerate(unet.up_blocks):
        levels[f"up_blocks.{i}"] = level
        level -= 1 if getattr(block, "upsamplers", None) else 0
    return levels


def attn1_tokens(unet: Any, latent_hw: tuple[int, int]) -> dict[str, int]:
    """Tokens each attn1 layer sees for a latent of `latent_hw`, by processor name (a stride-2
    convolution halves rounding up)."""
    levels = _levels(unet)
    tokens = {}
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0] if name.startswith("mid_block") else ".".join(name.split(".")[:2])
        h, w = latent_hw
        for _ in range(levels[block]):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        tokens[name] = h * w
    return tokens


def bank_elements(unet: Any, latent_hw: tuple[int, int], fusion: bool = False) -> int:
    """Elements one banked frame of one batch row holds: keys and values of every attn1 layer, and
    with `fusion` the outputs of the fused ones (FUSION_BLOCKS)."""
    total = 0
    for name, tokens in attn1_tokens(unet, latent_hw).items():
        attn = unet.get_submodule(name[: -len(".processor")])
        total += 2 * tokens * attn.to_k.out_features
        total += tokens * attn.to_out[0].out_features if fusion and name.startswith(FUSION_BLOCKS) else 0
    return total


class FeatureBank:
    """The bank of one UNet: its shared state and one processor per attn1 layer."""

    def __init__(self, unet: Any, max_frames: int, rows: int, latent_hw: tuple[int, int],
                 device: torch.device, dtype: torch.dtype, fusion: bool = False):
        self.unet, self.max_frames = unet, max_frames
        # Fusion is allocated (its ring of outputs, its mode) only when asked for: else none of its cost.
        self.modes = BANK_MODES if fusion else (OFF, BANK)
        self._capped: int | None = None  # the bank_frames last said to be above bank_max
        self.state = BankState(max_frames, torch.device(device), dtype)
        current = dict(unet.attn_processors)
        self.processors: dict[str, BankedSelfAttention] = {}
        for name, tokens in attn1_tokens(unet, latent_hw).items():
            attn = unet.get_submodule(name[: -len(".processor")])
            original = current[name]
            original = getattr(original, "original", original)  # a bank installed earlier on this UNet
            self.processors[name] = BankedSelfAttention(self.state, attn, rows, tokens, original,
                                                        fused=fusion and name.startswith(FUSION_BLOCKS))
        unet.set_attn_processor({**current, **self.processors})
        self.bytes = sum(t.numel() * t.element_size() for t in self.tensors())
        fused = sum(p.outputs is not None for p in self.processors.values())
        log.info("feature bank: %d frames x %d rows on %d self-attention layers (%d fused), %.1f MB",
                 max_frames, rows, len(self.processors), fused, self.bytes / 1e6)

    def set(self, frames: int, refresh: int, strength: float, fusion_strength: float = 0.0,
            fusion_threshold: float = 1.0) -> None:
        if frames > self.max_frames and frames != self._capped:  # once per value, not per temporal change
            log.info("bank_frames %d is more than this pipeline's bank_max %d: using %d",
                     frames, self.max_frames, self.max_frames)
        self._capped = frames if frames > self.max_frames else None
        self.state.set(frames, refresh, strength, fusion_strength, fusion_threshold)

    def clear(self) -> None:
        self.state.clear()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Everything a call writes: what a CUDA graph capture's warm-up must leave as it found it."""
        banks = [t for p in self.processors.values() for t in (p.keys, p.values, p.outputs) if t is not None]
        return (*self.state.tensors(), *banks)

    def wrap(self, unet_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`unet_fn` with the bank's per-call bookkeeping around it (one begin/end per UNet call;
        none in mode `off`)."""
        state = self.state

        def unet(*args: Any, **kwargs: Any) -> torch.Tensor:
            if state.mode == OFF:
                return unet_fn(*args, **kwargs)
            state.begin()
            out = unet_fn(*args, **kwargs)
            state.end()
            return out

        return unet


def install_feature_bank(unet: Any, max_frames: int, rows: int, latent_hw: tuple[int, int],
                         device: torch.device, dtype: torch.dtype, fusion: bool = False) -> FeatureBank | None:
    """A FeatureBank on `unet`'s attn1 layers (with feature fusion if `fusion`), or None for max_frames 0,
    which also puts back the original processors if an earlier pipeline on this UNet installed a bank."""
    if max_frames > 0:
        return FeatureBank(unet, max_frames, rows, latent_hw, device, dtype, fusion)
    # A module without diffusers' attention processors (an engine or a stand-in) has no bank to remove.
    current = getattr(unet, "attn_processors", None) or {}
    if any(isinstance(p, BankedSelfAttention) for p in current.values()):
        unet.set_attn_processor({name: getattr(p, "original", p) for name, p in current.items()})
    return None
