"""Single-file checkpoints: streamvj's own format, and original (ldm) SD/SDXL checkpoints.

streamvj's format is one .safetensors file holding every component's weights under
`<component>.` prefixes, with the configs and tokenizer files in the safetensors metadata,
so a model travels as one file and loads with nothing else. Other .safetensors files are
treated as original Stable Diffusion checkpoints and converted by diffusers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import ModelLoadError
from engine.models.family import Family, detect_family
from engine.models.parts import ModelParts, class_for

FORMAT_KEY = "streamvj.format"
FORMAT_VERSION = "1"
_MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
_TOKENIZERS = ("tokenizer", "tokenizer_2")


def save_single_file(parts: ModelParts, path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = {FORMAT_KEY: FORMAT_VERSION, "family": parts.family.value,
            "scheduler_config": json.dumps(parts.scheduler_config)}
    for name in _MODEL_COMPONENTS:
        module = getattr(parts, name)
        if module is None:
            continue
        meta[f"{name}.class"] = type(module).__name__
        config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        meta[f"{name}.config"] = json.dumps(config, default=str)
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    for name in _TOKENIZERS:
        tokenizer = getattr(parts, name)
        if tokenizer is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}
        meta[f"{name}.class"] = type(tokenizer).__name__
        meta[f"{name}.files"] = json.dumps(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def _build_module(cls_name: str, config: dict) -> torch.nn.Module:
    cls = class_for(cls_name)
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    config_cls = cls.config_class
    return cls(config_cls.from_dict(config))


def _load_streamvj(path: Path, meta: dict, family: Family | None, dtype: torch.dtype | None) -> ModelParts:
    state = load_file(str(path))
    parts: dict = {}
    for name in _MODEL_COMPONENTS:
        if f"{name}.class" not in meta:
            continue
        module = _build_module(meta[f"{name}.class"], json.loads(meta[f"{name}.config"]))
        prefix = f"{name}."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        result = module.load_state_dict(own, strict=False)
        # Non-persistent buffers (e.g. CLIP position ids) may be absent; real weights may not.
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing or result.unexpected_keys:
            raise ModelLoadError(f"{path}: {name} weights do not match its config "
                                 f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        parts[name] = module.to(dtype=dtype) if dtype is not None else module
    for name in _TOKENIZERS:
        if f"{name}.class" not in meta:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for filename, text in json.loads(meta[f"{name}.files"]).items():
                (Path(tmp) / Path(filename).name).write_text(text)
            parts[name] = class_for(meta[f"{name}.class"]).from_pretrained(tmp)
    stored = Family(meta["family"]) if "family" in meta else detect_family(dict(parts["unet"].config))
    return ModelParts(family=family or stored, scheduler_config=json.loads(meta["scheduler_config"]),
                      source=str(path), **parts)


def _load_original(path: Path, keys: set[str], family: Family | None, dtype: torch.dtype | None) -> ModelParts:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    # The checkpoint's own contents tell SDXL (two text encoders under conditioner.embedders).
    is_xl = any(k.startswith("conditioner.embedders.1") for k in keys)
    family = family or (Family.SDXL if is_xl else None)
    cls = StableDiffusionXLPipeline if family is Family.SDXL else StableDiffusionPipeline
    try:
        pipe = cls.from_single_file(str(path), torch_dtype=dtype)
    except Exception as exc:  # diffusers raises many types here; all mean "cannot convert this file"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load checkpoint {path} as a Stable Diffusion model ({reason}); "
                             f"the first load needs internet for the model configs") from None
    unet_config = dict(pipe.unet.config)
    return ModelParts(
        family=family or detect_family(unet_config), unet=pipe.unet, vae=pipe.vae,
        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        text_encoder_2=getattr(pipe, "text_encoder_2", None), tokenizer_2=getattr(pipe, "tokenizer_2", None),
        scheduler_config=dict(pipe.scheduler.config), source=str(path))


def load_single_file(path: Path, family: Family | None = None, dtype: torch.dtype | None = None) -> ModelParts:
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            keys = set(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"{path} is not a readable .safetensors file ({exc})") from None
    if meta.get(FORMAT_KEY) == FORMAT_VERSION:
        return _load_streamvj(path, meta, family, dtype)
    if FORMAT_KEY in meta:
        raise ModelLoadError(f"{path} is streamvj single-file format {meta[FORMAT_KEY]}; "
                             f"this streamvj reads format {FORMAT_VERSION}")
    return _load_original(path, keys, family, dtype)
