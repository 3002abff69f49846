"""ModelParts: what a model is to streamvj, wherever it was loaded from, and the classes a
model's files may name (engine/models/load.py and single_file.py both build parts from files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.errors import ModelLoadError
from engine.models.family import Family

# Only these classes may be instantiated from a folder's model_index.json / config.json.
ALLOWED_CLASSES = {
    "UNet2DConditionModel": "diffusers",
    "AutoencoderKL": "diffusers",
    "AutoencoderTiny": "diffusers",
    "CLIPTextModel": "transformers",
    "CLIPTextModelWithProjection": "transformers",
    "CLIPTokenizer": "transformers",
    "CLIPTokenizerFast": "transformers",
}


@dataclass
class ModelParts:
    """A model's pieces (UNet, VAE, text encoder(s), tokenizer(s), scheduler config) and its family."""

    family: Family
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        found = {name: getattr(self, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
        return {name: m for name, m in found.items() if m is not None}

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ModelParts:
        for module in self.modules().values():
            current = next(module.parameters())
            if current.dtype != dtype or current.device != torch.device(device):
                module.to(device=device, dtype=dtype)
            module.eval().requires_grad_(False)
        return self


def class_for(name: str) -> type:
    library = ALLOWED_CLASSES.get(name)
    if library is None:
        allowed = ", ".join(sorted(ALLOWED_CLASSES))
        raise ModelLoadError(f"component class {name!r} is not supported by streamvj (allowed: {allowed})")
    module = __import__(library, fromlist=[name])
    return getattr(module, name)
