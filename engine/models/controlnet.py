"""ControlNets: from a hub id, a local folder or a single file (like the main model), or `random`.

`random` is a ControlNet built in code from the loaded model's own UNet (diffusers'
`ControlNetModel.from_unet`: the real ControlNet architecture for that UNet, so an
sd-turbo-random pipeline gets a real-size ControlNet for benchmarks and the tiny model a
tiny one for tests), with seeded random weights. Its zero convolutions are made non-zero:
a freshly initialised ControlNet adds exactly nothing, and nothing could be tested.

A ControlNet must be trained for the model's family (its cross-attention width and block
widths are the UNet's); a mismatch is refused at load time with one line naming both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from engine.errors import ModelLoadError
from engine.models.family import Family, detect_family
from engine.models.load import _HUB_ID, _read_json, _resolve_folder, _variant

log = logging.getLogger("streamvj.models")

RANDOM_CONTROLNET = "random"
# Channels of the control-image encoder (3 stride-2 convs: pixels -> latent size); diffusers'
# default (16, 32, 96, 256) for real-size UNets, a quarter of it for narrow (tiny) ones.
_CONDITIONING_CHANNELS = (16, 32, 96, 256)
_TINY_CONDITIONING_CHANNELS = (8, 8, 16, 16)


def build_random_controlnet(unet: torch.nn.Module, seed: int = 0) -> ControlNetModel:
    """A ControlNet shaped like `unet`, seeded random weights, zero convolutions made live."""
    narrow = max(unet.config.block_out_channels) < 256
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=_TINY_CONDITIONING_CHANNELS if narrow else _CONDITIONING_CHANNELS)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            # Small enough that the residuals stay in the UNet's own range, large enough to matter.
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
    return controlnet.eval().requires_grad_(False)


def check_controlnet_family(controlnet: ControlNetModel, unet: torch.nn.Module, family: Family, spec: str) -> None:
    """The ControlNet's residuals must fit this UNet: same family, same block widths."""
    config = dict(controlnet.config)
    own = detect_family(config)
    widths = tuple(config.get("block_out_channels", ()))
    fits = (own is family and widths == tuple(unet.config.block_out_channels)
            and config.get("cross_attention_dim") == unet.config.cross_attention_dim)
    if not fits:
        raise ModelLoadError(
            f"ControlNet {spec!r} is {own.value}-shaped (blocks {list(widths)}, text width "
            f"{config.get('cross_attention_dim')}) but the model is {family.value} (blocks "
            f"{list(unet.config.block_out_channels)}, text width {unet.config.cross_attention_dim}); "
            f"use a ControlNet trained for {family.value}")


def _from_folder(folder: Path, spec: str, dtype: torch.dtype | None) -> ControlNetModel:
    config = _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    if config.get("_class_name") != "ControlNetModel":
        raise ModelLoadError(f"{spec!r} is not a ControlNet (its config.json names "
                             f"{config.get('_class_name', 'nothing')}, not ControlNetModel)")
    try:
        return ControlNetModel.from_pretrained(str(folder), torch_dtype=dtype, variant=_variant(folder))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load ControlNet from {spec!r}: {str(exc).splitlines()[0]}") from None


def _from_single_file(path: Path, dtype: torch.dtype | None) -> ControlNetModel:
    if not path.is_file():
        raise ModelLoadError(f"ControlNet file {str(path)!r} does not exist (give a .safetensors ControlNet, "
                             f"a diffusers ControlNet folder, a Hugging Face id or 'random')")
    try:
        # diffusers converts original (lllyasviel-style) ControlNet checkpoints.
        return ControlNetModel.from_single_file(str(path), torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types for a file it cannot read
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load ControlNet file {str(path)!r} ({reason}); convert it to a diffusers "
                             f"ControlNet folder, or use a Hugging Face id") from None


def load_controlnet(spec: str, unet: torch.nn.Module, family: Family, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """`spec` ("random", a folder, a .safetensors file or a hub id) for a model with `unet` of `family`."""
    if spec == RANDOM_CONTROLNET:
        controlnet = build_random_controlnet(unet)
    elif spec.endswith(".safetensors"):
        controlnet = _from_single_file(Path(spec).expanduser(), dtype)
    else:
        local = Path(spec).expanduser()
        if not local.is_dir() and (local.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec)):
            raise ModelLoadError(f"ControlNet {spec!r} does not exist (give a diffusers ControlNet folder, a "
                                 f".safetensors file, a Hugging Face id like thibaud/controlnet-sd21-depth-diffusers "
                                 f"or 'random')")
        try:
            folder = _resolve_folder(spec, fp16=dtype == torch.float16)
        except ModelLoadError as exc:
            raise ModelLoadError(f"ControlNet: {exc}") from None
        controlnet = _from_folder(folder, spec, dtype)
    check_controlnet_family(controlnet, unet, family, spec)
    return controlnet.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass
class ControlNetParts:
    """One preset ControlNet, loaded: the network and, for preprocessor depth, its depth network."""

    model: ControlNetModel
    depth: torch.nn.Module | None = None


def load_controlnets(specs: Sequence[Any], unet: torch.nn.Module, family: Family,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[ControlNetParts]:
    """A preset's `load.controlnets` (schema.ControlNetSpec), loaded; a depth network named twice is loaded once."""
    from engine.models.depth import load_depth_model

    depth_models: dict[str, torch.nn.Module] = {}
    loaded = []
    for spec in specs:
        depth = None
        if "depth" in spec.preprocessors:  # any of its choices: all are loaded at build time
            if spec.depth_model not in depth_models:
                depth_models[spec.depth_model] = load_depth_model(spec.depth_model, device=device, dtype=dtype)
            depth = depth_models[spec.depth_model]
        loaded.append(ControlNetParts(load_controlnet(spec.model, unet, family, device=device, dtype=dtype), depth))
    return loaded
