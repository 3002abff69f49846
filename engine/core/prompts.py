"""Prompt encoding per family, with a cache so a prompt change encodes only the new text."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from engine.core.blend import blend
from engine.errors import ConfigError
from engine.models.family import Family
from engine.models.parts import ModelParts

MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class PromptEmbedding:
    hidden: torch.Tensor  # (1, tokens, width): what the UNet cross-attends to
    pooled: torch.Tensor | None  # (1, width): SDXL's pooled text embedding, else None


class PromptEncoder:
    """Encodes text with the model's text encoder(s); keeps the last `cache_size` results."""

    def __init__(self, parts: ModelParts, device: torch.device, dtype: torch.dtype, cache_size: int = 64):
        self.parts, self.device, self.dtype = parts, device, dtype
        self._cache: OrderedDict[str, PromptEmbedding] = OrderedDict()
        self._cache_size = cache_size
        self.encode_calls = 0

    def _ids(self, tokenizer, text: str) -> torch.Tensor:
        return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def _encode(self, text: str) -> PromptEmbedding:
        self.encode_calls += 1
        parts = self.parts
        if parts.family is not Family.SDXL:
            hidden = parts.text_encoder(self._ids(parts.tokenizer, text))[0]
            return PromptEmbedding(hidden.to(self.dtype), None)
        if text == "":
            # SDXL was trained with zeroed embeddings for the empty (negative) prompt.
            width = parts.unet.config.cross_attention_dim
            tokens = parts.tokenizer.model_max_length
            pooled_width = parts.text_encoder_2.config.projection_dim
            zeros = torch.zeros(1, tokens, width, device=self.device, dtype=self.dtype)
            return PromptEmbedding(zeros, torch.zeros(1, pooled_width, device=self.device, dtype=self.dtype))
        # SDXL cross-attends to the penultimate layers of both encoders, concatenated.
        out_1 = parts.text_encoder(self._ids(parts.tokenizer, text), output_hidden_states=True)
        out_2 = parts.text_encoder_2(self._ids(parts.tokenizer_2, text), output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return PromptEmbedding(hidden.to(self.dtype), out_2.text_embeds.to(self.dtype))

    def encode(self, text: str) -> PromptEmbedding:
        if not isinstance(text, str):
            raise ConfigError(f"a prompt must be a string, got {type(text).__name__}")
        text = text[:MAX_PROMPT_CHARS]
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        embedding = self._encode(text)
        self._cache[text] = embedding
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return embedding

    def blend(self, prompts: list[tuple[str, float]], method: str = "linear") -> PromptEmbedding:
        """A weighted mix of cached embeddings (hidden and pooled blended alike)."""
        embeddings = [self.encode(text) for text, _ in prompts]
        weights = [weight for _, weight in prompts]
        if len(embeddings) == 1:
            return embeddings[0]
        hidden = blend([e.hidden for e in embeddings], weights, method)
        pooled = None if embeddings[0].pooled is None else blend([e.pooled for e in embeddings], weights, method)
        return PromptEmbedding(hidden, pooled)
