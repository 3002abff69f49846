from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.models.family import Family, detect_family, parse_family


@pytest.mark.parametrize(("config", "pipeline", "family"), [
    ({"cross_attention_dim": 768}, "StableDiffusionPipeline", Family.SD15),
    ({"cross_attention_dim": 1024}, "StableDiffusionPipeline", Family.SD21),
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, None, Family.SDXL),
    ({"cross_attention_dim": 2048}, "StableDiffusionXLPipeline", Family.SDXL),
    ({"cross_attention_dim": 32}, None, Family.SD15),  # tiny: SD 1.x-shaped conditioning
])
def test_detected_from_the_config(config, pipeline, family):
    assert detect_family(config, pipeline) is family


def test_parse_accepts_names_and_rejects_unknown_ones():
    assert parse_family("SDXL") is Family.SDXL and parse_family(None) is None
    with pytest.raises(ConfigError, match="allowed: sd15, sd21, sdxl"):
        parse_family("flux")


def test_only_sdxl_uses_pooled_embeddings():
    assert [f.uses_pooled_embeddings for f in Family] == [False, False, True]
