"""The feature bank processor: what it attends to, when it writes, and that off is plain attention bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from engine.core.feature_bank import BankedSelfAttention, BankState, attn1_tokens, install_feature_bank
from engine.core.stream import unet_batch_size
from engine.models.load import load_model
from tests.engine.core.pipelines import make_pipeline

ROWS, TOKENS, WIDTH = 3, 5, 16


def layer(max_frames: int = 3) -> tuple[Attention, BankState, BankedSelfAttention]:
    torch.manual_seed(0)
    attn = Attention(query_dim=WIDTH, heads=2, dim_head=8).eval()
    state = BankState(max_frames, torch.device("cpu"), torch.float32)
    processor = BankedSelfAttention(state, attn, ROWS, TOKENS, AttnProcessor2_0())
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
