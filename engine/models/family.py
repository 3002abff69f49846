"""Model families and how to tell them apart from a model's own config (never its file name)."""

from __future__ import annotations

from enum import Enum

from engine.errors import ConfigError


class Family(str, Enum):
    SD15 = "sd15"
    SD21 = "sd21"
    SDXL = "sdxl"

    @property
    def uses_pooled_embeddings(self) -> bool:
        """SDXL conditions on pooled text embeddings and micro-conditioning time ids."""
        return self is Family.SDXL


def parse_family(value: str | Family | None) -> Family | None:
    if value is None or isinstance(value, Family):
        return value
    try:
        return Family(value.lower())
    except ValueError:
        allowed = ", ".join(f.value for f in Family)
        raise ConfigError(f"unknown model family {value!r}; allowed: {allowed}") from None


def detect_family(unet_config: dict, pipeline_class: str | None = None) -> Family:
    """Family from the UNet config (and model_index.json's class when there is one).

    SDXL is the one with `addition_embed_type == "text_time"`; SD 2.x cross-attends to
    1024-d OpenCLIP states, SD 1.x to 768-d CLIP states. Models of other widths (the
    built-in tiny model) follow SD 1.x's conditioning, which is what they are shaped like.
    """
    if unet_config.get("addition_embed_type") == "text_time" or (pipeline_class or "").endswith("XLPipeline"):
        return Family.SDXL
    if unet_config.get("cross_attention_dim") == 1024:
        return Family.SD21
    return Family.SD15
