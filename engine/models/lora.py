"""LoRA weights fused into the UNet (and text encoders) at load time, e.g. LCM-LoRA on SD 1.5.

Fusing costs nothing per frame: the pipeline then runs plain weights, which is also what
torch.compile and TensorRT want. diffusers does the key mapping (kohya, PEFT, diffusers
formats) through a throwaway pipeline object that shares the already-loaded modules.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import ModelLoadError
from engine.models.family import Family
from engine.models.parts import ModelParts

log = logging.getLogger("streamvj.lora")


def _host_pipeline(parts: ModelParts):
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    common = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                  scheduler=LCMScheduler(steps_offset=1))
    if parts.family is Family.SDXL:
        return StableDiffusionXLPipeline(text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2, **common)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   **common)


def fuse_loras(parts: ModelParts, loras: list[tuple[str, float, str | None]]) -> None:
    """Fuse each (path-or-hub-id, scale, weight_name) into `parts` in place."""
    if not loras:
        return
    try:
        import peft  # noqa: F401  (diffusers needs it for LoRA; fail here with a clear line)
    except ImportError:
        raise ModelLoadError("LoRA needs the peft package: pip install 'streamvj[lora]'") from None
    pipe = _host_pipeline(parts)
    names = []
    for index, (source, scale, weight_name) in enumerate(loras):
        name = f"lora{index}"
        location, weight = source, weight_name
        path = Path(source).expanduser()
        if path.suffix == ".safetensors":
            if not path.is_file():
                raise ModelLoadError(f"LoRA file {source!r} does not exist")
            location, weight = str(path.parent), path.name
        try:
            pipe.load_lora_weights(location, weight_name=weight, adapter_name=name)
        except Exception as exc:  # diffusers/hub raise many types; all mean "this LoRA cannot be used"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"cannot load LoRA {source!r} ({reason})") from None
        names.append((name, scale))
        log.info("LoRA %s loaded (scale %.2f)", source, scale)
    for name, scale in names:
        pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
