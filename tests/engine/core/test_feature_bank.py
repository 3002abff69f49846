"""The feature bank processor: what it attends to, when it writes, what fusion does, and that off is plain
attention bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from engine.core.feature_bank import (
    BANK,
    FUSION,
    OFF,
    BankedSelfAttention,
    BankState,
    attn1_tokens,
    bank_elements,
    fuse,
    install_feature_bank,
)
from engine.core.stream import unet_batch_size
from engine.models.load import load_model
from tests.engine.core.pipelines import make_pipeline

ROWS, TOKENS, WIDTH = 3, 5, 16


def layer(max_frames: int = 3, mode: str = BANK, fused: bool = False) -> tuple[Attention, BankState,
                                                                              BankedSelfAttention]:
    torch.manual_seed(0)
    attn = Attention(query_dim=WIDTH, heads=2, dim_head=8).eval()
    state = BankState(max_frames, torch.device("cpu"), torch.float32)
    state.mode = mode
    processor = BankedSelfAttention(state, attn, ROWS, TOKENS, AttnProcessor2_0(), fused=fused)
    return attn, state, processor


def call(attn: Attention, state: BankState, processor: BankedSelfAttention, hidden: torch.Tensor) -> torch.Tensor:
    state.begin()
    out = processor(attn, hidden)
    state.end()
    return out


def attention_over(attn: Attention, hidden: torch.Tensor, context: list[torch.Tensor]) -> torch.Tensor:
    """Reference: each row's queries over its own tokens and the same row's tokens of `context` frames."""
    keys_from = torch.cat([hidden, *context], dim=1)
    b = hidden.shape[0]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, attn.heads, WIDTH // attn.heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(attn.to_q(hidden)), heads(attn.to_k(keys_from)),
                                         heads(attn.to_v(keys_from)))
    return attn.to_out[0](out.transpose(1, 2).reshape(b, -1, WIDTH))


def frames(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(ROWS, TOKENS, WIDTH, generator=generator) for _ in range(count)]


@torch.no_grad()
def test_each_row_attends_to_its_own_last_m_frames():
    attn, state, processor = layer(max_frames=3)
    state.set(frames=2, refresh=1, strength=1.0)
    seen = frames(6)
    for c, hidden in enumerate(seen):
        got = call(attn, state, processor, hidden)
        expected = attention_over(attn, hidden, seen[max(0, c - 2):c])  # the same rows, 1..M calls earlier
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_refresh_k_banks_every_kth_call_and_m_never_exceeds_the_allocation():
    attn, state, processor = layer(max_frames=2)
    state.set(frames=5, refresh=3, strength=1.0)  # 5 asks for more than the 2 slots: all 2 are used
    seen = frames(8)
    for c, hidden in enumerate(seen):
        got = call(attn, state, processor, hidden)
        banked = [seen[k] for k in range(c) if k % 3 == 0][-2:]  # calls 0, 3, 6: the last two before c
        torch.testing.assert_close(got, attention_over(attn, hidden, banked), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_strength_is_a_lerp_between_plain_and_extended_attention():
    attn, state, processor = layer()
    seen = frames(3)
    state.set(frames=1, refresh=1, strength=0.25)
    for hidden in seen[:2]:
        got = call(attn, state, processor, hidden)
    plain = attention_over(attn, seen[1], [])
    extended = attention_over(attn, seen[1], [seen[0]])
    torch.testing.assert_close(got, plain + 0.25 * (extended - plain), rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("setting", [{"frames": 0, "strength": 1.0}, {"frames": 3, "strength": 0.0}])
def test_m_zero_or_strength_zero_is_plain_attention_bit_for_bit(setting):
    attn, state, processor = layer()
    plain = AttnProcessor2_0()
    state.set(refresh=1, **setting)
    for hidden in frames(4):
        assert torch.equal(call(attn, state, processor, hidden), plain(attn, hidden))


@torch.no_grad()
def test_clear_forgets_the_bank_and_live_changes_keep_every_buffer():
    attn, state, processor = layer()
    state.set(frames=3, refresh=1, strength=1.0)
    seen = frames(4)
    for hidden in seen[:3]:
        call(attn, state, processor, hidden)
    buffers = [t.data_ptr() for t in (processor.keys, processor.values, state.slot_valid, state.weight)]
    state.clear()
    assert torch.equal(call(attn, state, processor, seen[3]), AttnProcessor2_0()(attn, seen[3]))
    state.set(frames=1, refresh=4, strength=0.5)
    assert buffers == [t.data_ptr() for t in (processor.keys, processor.values, state.slot_valid, state.weight)]


@pytest.mark.parametrize(("model", "width", "height"), [("tiny", 64, 64), ("tiny", 72, 56), ("tiny-sdxl", 72, 56)])
def test_token_counts_match_what_each_self_attention_layer_sees(model, width, height):
    parts = load_model(model)
    unet = parts.unet
    latent = (height // 8, width // 8)
    seen: dict[str, int] = {}
    hooks = [unet.get_submodule(name[: -len(".processor")]).register_forward_pre_hook(
        lambda module, args, kwargs, name=name: seen.__setitem__(name, args[0].shape[1]), with_kwargs=True)
        for name in attn1_tokens(unet, latent)]
    hidden = torch.zeros(1, 77, unet.config.cross_attention_dim)
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.zeros(1, unet.config.projection_class_embeddings_input_dim - 6 * 8),
                 "time_ids": torch.zeros(1, 6)}
    with torch.no_grad():
        unet(torch.zeros(1, 4, *latent), torch.tensor([10]), encoder_hidden_states=hidden, added_cond_kwargs=added)
    for hook in hooks:
        hook.remove()
    assert seen and seen == attn1_tokens(unet, latent)


def test_bank_elements_is_what_a_bank_allocates_per_frame_and_row():
    parts = load_model("tiny-sdxl")
    for fusion in (False, True):
        bank = install_feature_bank(parts.unet, 3, 2, (9, 7), torch.device("cpu"), torch.float32, fusion)
        rings = sum(t.numel() for t in bank.tensors()[len(bank.state.tensors()):])
        assert rings == 3 * 2 * bank_elements(parts.unet, (9, 7), fusion)
    assert bank_elements(parts.unet, (9, 7), True) > bank_elements(parts.unet, (9, 7))
    install_feature_bank(parts.unet, 0, 2, (9, 7), torch.device("cpu"), torch.float32)


def test_installing_no_bank_puts_the_plain_processors_back():
    parts = load_model("tiny")
    before = {name: type(p) for name, p in parts.unet.attn_processors.items()}
    bank = install_feature_bank(parts.unet, 2, 2, (8, 8), torch.device("cpu"), torch.float32)
    assert bank is not None and set(bank.processors) == {n for n in before if n.endswith("attn1.processor")}
    assert all(isinstance(parts.unet.attn_processors[n], BankedSelfAttention) for n in bank.processors)
    assert install_feature_bank(parts.unet, 0, 2, (8, 8), torch.device("cpu"), torch.float32) is None
    assert {name: type(p) for name, p in parts.unet.attn_processors.items()} == before


@torch.no_grad()
def test_with_the_stream_batch_each_row_banks_the_frames_that_passed_through_its_slot():
    """N=2 steps, F=2 frames per call, cfg full: 2*N*F = 8 rows, negatives included. After call c,
    ring slot for age a of row r holds the keys row r computed in call c-a (same slot, same
    timestep, same frame position j: frame j of earlier groups)."""
    parts = load_model("tiny")
    pipe = make_pipeline(parts, frame_buffer_size=2, cfg_type="full", negative_prompt="", bank_max=3,
                         bank_frames=3, cut_threshold=0.0)
    bank = pipe.temporal.bank
    name = next(iter(bank.processors))
    processor, attn = bank.processors[name], parts.unet.get_submodule(name[: -len(".processor")])
    rows = unet_batch_size("full", 2, 2)
    assert processor.keys.shape[0] == rows == 8
    recorded: list[torch.Tensor] = []
    hook = attn.register_forward_pre_hook(lambda module, args: recorded.append(args[0].clone()))
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):  # 2 priming calls, then 3 more
        pipe(torch.randint(0, 256, (2, 64, 64, 4), generator=generator, dtype=torch.uint8))
    hook.remove()
    assert len(recorded) == 5
    newest = int(bank.state.pos) - 1
    for age in range(3):
        hidden = recorded[-1 - age]
        keys = attn.to_k(hidden).view(rows, -1, processor.heads, processor.head_dim).transpose(1, 2)
        torch.testing.assert_close(processor.keys[:, :, (newest - age) % 3], keys, rtol=0, atol=1e-6)


def reference_fusion(x: torch.Tensor, banked: list[torch.Tensor], threshold: float, weight: float) -> torch.Tensor:
    """Token by token: the most cosine-similar token of the same row among `banked` frames, used if
    its cosine reaches `threshold`; out = x + weight * (used - x)."""
    out = x.clone()
    for r in range(x.shape[0]):
        candidates = torch.cat([b[r] for b in banked])
        for t in range(x.shape[1]):
            token = x[r, t]
            cosines = [float(token @ c) / max(float(token.norm() * c.norm()), 1e-12) for c in candidates]
            best = max(range(len(cosines)), key=cosines.__getitem__)
            if cosines[best] >= threshold:
                out[r, t] = token + weight * (candidates[best] - token)
    return out


def similar_frames(count: int, spread: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(ROWS, TOKENS, WIDTH, generator=generator)
    return [base + spread * torch.randn(ROWS, TOKENS, WIDTH, generator=generator) for _ in range(count)]


def test_fuse_moves_each_token_toward_its_most_similar_valid_banked_token():
    generator = torch.Generator().manual_seed(4)
    slots = 3
    frames_ = similar_frames(slots + 1, 0.6)
    x, banked = frames_[0], torch.stack(frames_[1:], dim=1)  # rows, slots, tokens, C
    valid = torch.tensor([True, False, True])
    token_valid = valid[:, None].expand(slots, TOKENS).reshape(-1)
    cos = F.cosine_similarity(x[:, :, None], banked[:, valid].flatten(1, 2)[:, None], dim=-1).amax(-1)
    threshold = float(cos.median())  # about half the tokens are fused, half stay
    assert (cos >= threshold).any() and (cos < threshold).any()
    for weight in (1.0, 0.3):
        got = fuse(x, banked.flatten(1, 2), token_valid, torch.tensor(threshold), torch.tensor(weight))
        expected = reference_fusion(x, [banked[:, k] for k in (0, 2)], threshold, weight)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(fuse(x, banked.flatten(1, 2), token_valid, torch.tensor(threshold), torch.tensor(0.0)), x)
    noise = torch.randn(x.shape, generator=generator)
    assert torch.equal(fuse(noise, banked.flatten(1, 2), token_valid, torch.tensor(1.0), torch.tensor(1.0)), noise)


@torch.no_grad()
def test_fusion_blends_each_output_toward_the_banked_outputs_of_its_own_row():
    """A fused layer in mode fusion: the extended-attention output of mode bank, fused with the
    same layer's earlier *unfused* outputs (the last M banked calls), row by row."""
    attn, plain_state, plain = layer(max_frames=2, fused=True)
    _, state, fused = layer(max_frames=2, mode=FUSION, fused=True)
    for s in (plain_state, state):
        s.set(frames=2, refresh=1, strength=0.5, fusion_strength=0.8, fusion_threshold=0.9)
    raws = []
    fired = 0
    for c, hidden in enumerate(similar_frames(5, 0.15)):
        raw = call(attn, plain_state, plain, hidden)
        got = call(attn, state, fused, hidden)
        banked = raws[max(0, c - 2):c]
        expected = reference_fusion(raw, banked, 0.9, 0.8) if banked else raw
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        fired += int(not torch.equal(got, raw))
        raws.append(raw)
    assert fired >= 3  # the threshold is reached on these similar frames: fusion acted


@torch.no_grad()
def test_mode_off_is_the_plain_processor_and_touches_no_bank_state():
    parts = load_model("tiny")
    unet = parts.unet
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(6))
    timesteps = torch.tensor([10, 20])
    plain = unet(latent, timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
    bank = install_feature_bank(unet, 2, 2, (8, 8), torch.device("cpu"), torch.float32, fusion=True)
    bank.set(frames=2, refresh=1, strength=1.0, fusion_strength=1.0, fusion_threshold=0.0)
    run = bank.wrap(lambda: unet(latent, timesteps, encoder_hidden_states=hidden, return_dict=False)[0])
    assert bank.state.mode == OFF  # as installed
    before = [t.clone() for t in bank.tensors()]
    for _ in range(3):
        assert torch.equal(run(), plain)
    assert all(torch.equal(a, b) for a, b in zip(before, bank.tensors(), strict=True))
    bank.state.mode = FUSION
    run()
    assert int(bank.state.filled) == 1 and not torch.equal(run(), plain)  # the same bank, on
    assert {n for n, p in bank.processors.items() if p.outputs is not None} == {
        n for n in bank.processors if n.startswith(("mid_block", "up_blocks.0", "up_blocks.1"))} != set()
    install_feature_bank(unet, 0, 2, (8, 8), torch.device("cpu"), torch.float32)
