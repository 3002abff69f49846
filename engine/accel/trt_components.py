"""The TensorRT engines a pipeline runs: its UNet (at the stream batch's size), VAE encoder and
decoder, and one per ControlNet, each from the on-disk cache (engine/accel/trt_cache.py) or
exported to ONNX and built once. engine/accel/backend.py uses them in place of the torch
modules, or falls back.

A pipeline with ControlNets gets a UNet engine that takes their residuals as inputs (component
`unet_residuals`, cached apart from the plain `unet` one, which presets without ControlNets
keep). Each ControlNet engine is keyed by that ControlNet's own weights, size and batch: two
presets sharing a ControlNet share its engine.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.accel.onnx_export import (
    DEFAULT_OPSET,
    TEXT_TOKENS,
    OnnxExportError,
    OnnxGraph,
    export_controlnet,
    export_unet,
    export_vae_decoder,
    export_vae_encoder,
    unet_component,
)
from engine.accel.trt_cache import TrtCache, engine_key_parts, key_from_parts, model_identity
from engine.accel.trt_engine import (
    TrtBuildError,
    TrtControlNet,
    TrtEngine,
    TrtUnet,
    build_engine,
    import_tensorrt,
)
from engine.errors import ConfigError

log = logging.getLogger("streamvj.trt_components")


@dataclass
class TrtComponents:
    unet: TrtUnet
    vae_decoder: TrtEngine
    vae_encoder: TrtEngine | None  # None for txt2img
    controlnets: tuple[TrtControlNet, ...] = ()  # in the preset's order


def _gpu_parts(device: torch.device) -> tuple[str, dict]:
    props = torch.cuda.get_device_properties(device)
    return props.name, {"compute_capability": f"{props.major}.{props.minor}"}


def cached_engine(cache: TrtCache, module: torch.nn.Module, component: str, export: Callable[[Path], OnnxGraph],
                  *, width: int, height: int, batch: int, device: torch.device, dtype: torch.dtype,
                  extra: dict | None = None, cancel: threading.Event | None = None) -> Any:
    """The engine for `component`: from the cache when a valid entry exists, else export + build + store."""
    trt = import_tensorrt()
    gpu_name, gpu_extra = _gpu_parts(device)
    parts = engine_key_parts(model_identity(module), component, width, height, batch, dtype, trt.__version__,
                             gpu_name, {**gpu_extra, "opset": DEFAULT_OPSET, "exporter": "torchscript",
                                        **(extra or {})})
    key = key_from_parts(parts)
    data = cache.load(key, parts)
    if data is not None:
        log.info("TensorRT %s engine %s loaded from %s", component, key, cache.root)
        return data
    log.info("TensorRT %s engine %s not cached: exporting and building (once per model/size/GPU)", component, key)
    cache.root.mkdir(parents=True, exist_ok=True)
    # The ONNX of a full UNet is GBs: keep it on the cache's disk, not a small tmpfs.
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=cache.root) as tmp:
        try:
            graph = export(Path(tmp) / f"{component}.onnx")
        except OnnxExportError as exc:
            raise TrtBuildError(str(exc)) from exc
        serialized = build_engine(graph.path, fp16=dtype == torch.float16, cancel=cancel)
    try:
        cache.store(key, parts, serialized)
    except OSError as exc:  # a full disk: run the engine just built anyway, rebuild it next time
        log.warning("TensorRT %s engine %s could not be cached (%s): it will be rebuilt next time",
                    component, key, exc)
    return serialized


def build_trt_components(parts: Any, *, width: int, height: int, unet_batch: int, frame_buffer_size: int,
                         device: torch.device | str, dtype: torch.dtype, txt2img: bool = False,
                         cache: TrtCache | None = None, tokens: int = TEXT_TOKENS,
                         cancel: threading.Event | None = None,
                         controlnets: Sequence[torch.nn.Module] = ()) -> TrtComponents:
    """Engines for a pipeline's UNet and ControlNets (its stream batch) and VAE (F frames), cached on disk.

    `parts` (a ModelParts) must already be on `device` in `dtype`: the graphs are exported
    from the modules as they run, so the engine's precision matches the eager path.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(f"TensorRT engines need a CUDA device, not {device}")
    cache = cache or TrtCache()
    common = dict(width=width, height=height, device=device, dtype=dtype, cancel=cancel)
    residuals = bool(controlnets)
    unet_data = cached_engine(
        cache, parts.unet, unet_component(residuals),
        lambda p: export_unet(parts.unet, p, batch=unet_batch, height=height, width=width, tokens=tokens,
                              residuals=residuals),
        batch=unet_batch, extra={"tokens": tokens}, **common)
    # The ControlNets run on the UNet call's rows (CFG negatives included): the UNet's batch.
    controlnet_data = [cached_engine(
        cache, controlnet, "controlnet",
        lambda p, c=controlnet: export_controlnet(c, p, batch=unet_batch, height=height, width=width, tokens=tokens),
        batch=unet_batch, extra={"tokens": tokens}, **common) for controlnet in controlnets]
    decoder_data = cached_engine(
        cache, parts.vae, "vae_decoder",
        lambda p: export_vae_decoder(parts.vae, p, batch=frame_buffer_size, height=height, width=width),
        batch=frame_buffer_size, **common)
    encoder_data = None
    if not txt2img:
        encoder_data = cached_engine(
            cache, parts.vae, "vae_encoder",
            lambda p: export_vae_encoder(parts.vae, p, batch=frame_buffer_size, height=height, width=width),
            batch=frame_buffer_size, **common)
    return TrtComponents(
        unet=TrtUnet(TrtEngine(unet_data, device, name="unet")),
        vae_decoder=TrtEngine(decoder_data, device, name="vae_decoder"),
        vae_encoder=None if encoder_data is None else TrtEngine(encoder_data, device, name="vae_encoder"),
        controlnets=tuple(TrtControlNet(TrtEngine(data, device, name=f"controlnet_{k}"))
                          for k, data in enumerate(controlnet_data)))
