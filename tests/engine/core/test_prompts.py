from __future__ import annotations

import pytest
import torch

from engine.core.prompts import MAX_PROMPT_CHARS, PromptEncoder
from engine.errors import ConfigError


def test_cache_encodes_each_text_once_and_evicts_the_oldest(tiny_parts):
    enc = PromptEncoder(tiny_parts, torch.device("cpu"), torch.float32, cache_size=2)
    a = enc.encode("a")
    enc.encode("a")
    assert enc.encode_calls == 1 and enc.encode("a") is a
    enc.encode("b")
    enc.encode("c")  # evicts "a"
    enc.encode("a")
    assert enc.encode_calls == 4


def test_sd15_shapes_and_no_pooled(tiny_parts):
    emb = PromptEncoder(tiny_parts, torch.device("cpu"), torch.float32).encode("neon")
    width = tiny_parts.text_encoder.config.hidden_size
    assert emb.hidden.shape == (1, 77, width) and emb.pooled is None


def test_sdxl_concatenates_both_encoders_and_zeroes_the_empty_prompt(tiny_sdxl_parts):
    enc = PromptEncoder(tiny_sdxl_parts, torch.device("cpu"), torch.float32)
    emb = enc.encode("neon")
    assert emb.hidden.shape == (1, 77, 64) and emb.pooled.shape == (1, 32)
    empty = enc.encode("")
    assert not empty.hidden.any() and not empty.pooled.any()


def test_overlong_and_wrong_type_prompts(tiny_parts):
    enc = PromptEncoder(tiny_parts, torch.device("cpu"), torch.float32)
    assert torch.equal(enc.encode("x" * (MAX_PROMPT_CHARS + 50)).hidden, enc.encode("x" * MAX_PROMPT_CHARS).hidden)
    with pytest.raises(ConfigError, match="must be a string"):
        enc.encode(42)
