"""ONNX export of the per-frame models (UNet, VAE encoder, VAE decoder, ControlNets) at fixed shapes.

The engine knows every shape when a pipeline is prepared (stream batch, latent size, text
tokens and width), so the graphs are exported static: TensorRT then plans for exactly those
shapes, and a different size or batch is a different cache entry, never a shape error.

Exporter: torch 2.13's default (`dynamo=True`) needs `onnxscript`, which neither the
`tensorrt` extra nor the CPU test environment installs. The TorchScript exporter
(`dynamo=False`) needs nothing beyond torch, traces diffusers' UNet and VAEs cleanly at
static shapes, and is what NVIDIA's diffusion demos build engines from. It is deprecated
upstream, so `exporter="dynamo"` is accepted too for when onnxscript is present.

Opset 17: the first with LayerNormalization (one node instead of a decomposed mean/var),
supported by TensorRT 8.6+ and every current onnxruntime.

ControlNets: a ControlNet graph outputs its residuals (`down_residual_0..`, `mid_residual`) at
conditioning scale 1 (streamvj scales them itself, per batch row: engine/core/controlnet.py),
and a pipeline with ControlNets runs a UNet graph that takes those residuals as extra inputs
(`export_unet(..., residuals=True)`). Both sides name them from `residual_specs`, so they fit.

Graphs take the pipeline's own dtype: export a float16 module to get a float16 graph.
TensorRT 11 builds strongly typed networks only (precision comes from the graph), so the
graph's dtype is the engine's dtype.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("streamvj.onnx_export")

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
VAE_FACTOR = 8
TEXT_TOKENS = 77
SDXL_TIME_IDS = 6
CONTROL_MAP = "controlnet_cond"  # (B,3,H,W) in 0..1, as engine/core/controlnet.py passes the maps
MID_RESIDUAL = "mid_residual"


def down_residual(i: int) -> str:
    return f"down_residual_{i}"


def unet_component(residuals: bool) -> str:
    """The UNet graph's component name (and cache key part): with or without ControlNet residual inputs."""
    return "unet_residuals" if residuals else "unet"


class OnnxExportError(RuntimeError):
    """An export failed; the message names the component and the likely fix."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class OnnxGraph:
    """An exported graph: where it is and the exact names/shapes/dtypes of its inputs and outputs."""

    path: Path
    component: str
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)

    def sample_inputs(self, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes (timesteps in [0, 1000), images in [-1, 1])."""
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for name, spec in self.inputs.items():
            if name == "timestep":
                value = torch.randint(0, 1000, spec.shape, generator=gen).to(spec.dtype)
            elif name == "images":
                value = torch.rand(spec.shape, generator=gen) * 2 - 1
            elif name == CONTROL_MAP:
                value = torch.rand(spec.shape, generator=gen)
            else:
                value = torch.randn(spec.shape, generator=gen)
            out[name] = value.to(device=device, dtype=spec.dtype)
        return out


# ---- wrappers: plain tensors in, one plain tensor out ----------------------------------------------


class UnetExport(torch.nn.Module):
    """UNet2DConditionModel as (sample, timestep, encoder_hidden_states[, text_embeds, time_ids]) -> noise.

    Timesteps are float32: diffusers casts them to float for the sinusoidal embedding anyway,
    and float inputs avoid int64 I/O, which older TensorRT versions do not bind.
    """

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                         return_dict=False)[0]


class UnetResidualsExport(torch.nn.Module):
    """UNet2DConditionModel taking ControlNet residuals: (sample, timestep, encoder_hidden_states
    [, text_embeds, time_ids], down_residual_0, ..., mid_residual) -> noise.

    Positional only (a traced graph takes a flat tuple); `inputs` are the names in that order.
    """

    def __init__(self, unet: torch.nn.Module, inputs: list[str]):
        super().__init__()
        self.unet, self.inputs = unet, list(inputs)
        self.sdxl = "text_embeds" in self.inputs
        self.down = 0
        while down_residual(self.down) in self.inputs:
            self.down += 1

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.inputs, tensors, strict=True))
        added = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]} if self.sdxl else None
        return self.unet(named["sample"], named["timestep"], encoder_hidden_states=named["encoder_hidden_states"],
                         added_cond_kwargs=added,
                         down_block_additional_residuals=[named[down_residual(i)] for i in range(self.down)],
                         mid_block_additional_residual=named[MID_RESIDUAL], return_dict=False)[0]


class ControlNetExport(torch.nn.Module):
    """ControlNetModel as (sample, timestep, encoder_hidden_states, controlnet_cond[, text_embeds,
    time_ids]) -> (down_residual_0, ..., mid_residual), at conditioning scale 1."""

    def __init__(self, controlnet: torch.nn.Module):
        super().__init__()
        self.controlnet = controlnet
        self.sdxl = getattr(controlnet.config, "addition_embed_type", None) == "text_time"

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, text_embeds: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=controlnet_cond, conditioning_scale=1.0,
                                    added_cond_kwargs=added, return_dict=False)
        return (*down, mid)


class VaeEncoderExport(torch.nn.Module):
    """images in [-1, 1] -> raw latents (before the pipeline's scaling/shift).

    AutoencoderTiny returns latents; AutoencoderKL a distribution whose mode (its mean) is
    what the pipeline uses, so both export deterministic graphs.
    """

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(images)
        return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mode()


class VaeDecoderExport(torch.nn.Module):
    """raw latents -> images in [-1, 1]."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


# ---- shapes --------------------------------------------------------------------------------------


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def _latent_channels(vae: torch.nn.Module) -> int:
    config = vae.config
    return int(getattr(config, "latent_channels", None) or 4)


def unet_input_specs(unet: torch.nn.Module, batch: int, height: int, width: int,
                     tokens: int = TEXT_TOKENS, dtype: torch.dtype | None = None) -> dict[str, TensorSpec]:
    """The UNet's inputs for a stream batch of `batch` latents of a height x width image."""
    _check_size(batch, height, width)
    config = unet.config
    dtype = dtype or _param(unet).dtype
    text_width = config.cross_attention_dim
    if isinstance(text_width, (list, tuple)):
        text_width = text_width[0]
    specs = {
        "sample": TensorSpec((batch, config.in_channels, height // VAE_FACTOR, width // VAE_FACTOR), dtype),
        "timestep": TensorSpec((batch,), torch.float32),
        "encoder_hidden_states": TensorSpec((batch, tokens, int(text_width)), dtype),
    }
    if getattr(config, "addition_embed_type", None) == "text_time":
        pooled = config.projection_class_embeddings_input_dim - SDXL_TIME_IDS * config.addition_time_embed_dim
        specs["text_embeds"] = TensorSpec((batch, int(pooled)), dtype)
        specs["time_ids"] = TensorSpec((batch, SDXL_TIME_IDS), dtype)
    return specs


def residual_specs(unet: torch.nn.Module, batch: int, height: int, width: int,
                   dtype: torch.dtype | None = None) -> dict[str, TensorSpec]:
    """The ControlNet residuals a UNet (or the ControlNet made from it) has, from its config:
    conv_in's output, then per down block `layers_per_block` resnet outputs and, but for the
    last block, the downsampler's (a stride-2 conv with padding 1: ceil(side / 2)); the mid
    block's output last. SD 1.5/2.1: 12 down residuals; SDXL: 9."""
    _check_size(batch, height, width)
    config = unet.config
    dtype = dtype or _param(unet).dtype
    widths = list(config.block_out_channels)
    layers = config.layers_per_block
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(widths)
    h, w = height // VAE_FACTOR, width // VAE_FACTOR
    shapes = [(widths[0], h, w)]
    for i, channels in enumerate(widths):
        shapes += [(channels, h, w)] * int(layers[i])
        if i < len(widths) - 1:
            h, w = -(-h // 2), -(-w // 2)
            shapes.append((channels, h, w))
    specs = {down_residual(i): TensorSpec((batch, *shape), dtype) for i, shape in enumerate(shapes)}
    specs[MID_RESIDUAL] = TensorSpec((batch, widths[-1], h, w), dtype)
    return specs


def controlnet_input_specs(controlnet: torch.nn.Module, batch: int, height: int, width: int,
                           tokens: int = TEXT_TOKENS, dtype: torch.dtype | None = None) -> dict[str, TensorSpec]:
    """A ControlNet's inputs: the UNet's (its config has the same fields) plus the control map."""
    unet = unet_input_specs(controlnet, batch, height, width, tokens, dtype)
    channels = int(getattr(controlnet.config, "conditioning_channels", None) or 3)
    specs = {n: unet[n] for n in ("sample", "timestep", "encoder_hidden_states")}
    specs[CONTROL_MAP] = TensorSpec((batch, channels, height, width), unet["sample"].dtype)
    return {**specs, **unet}  # then SDXL's text_embeds, time_ids (the others keep their places)


def _check_size(batch: int, height: int, width: int) -> None:
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if height % VAE_FACTOR or width % VAE_FACTOR:
        raise ValueError(f"height and width must be multiples of {VAE_FACTOR}, got {height}x{width}")


# ---- export --------------------------------------------------------------------------------------


def _export(wrapper: torch.nn.Module, path: Path, component: str, inputs: dict[str, TensorSpec],
            output_names: list[str], opset: int, exporter: str) -> OnnxGraph:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: allowed {', '.join(EXPORTERS)}")
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is too old: streamvj exports opset {DEFAULT_OPSET} or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = _param(wrapper).device
    example = OnnxGraph(path, component, inputs).sample_inputs(device)
    names = list(inputs)
    wrapper.eval()
    log.info("exporting %s to ONNX (opset %d, %s exporter): %s", component, opset, exporter,
             ", ".join(f"{n} {tuple(s.shape)}" for n, s in inputs.items()))
    with torch.no_grad():
        try:
            reference = wrapper(*example.values())
            if exporter == "torchscript":
                with warnings.catch_warnings():
                    # Shape checks inside diffusers become constants: intended, the graph is static.
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
                    warnings.filterwarnings("ignore", message="The feature will be removed.*")
                    warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
                    torch.onnx.export(wrapper, tuple(example.values()), str(path), dynamo=False,
                                      opset_version=opset, input_names=names, output_names=output_names,
                                      do_constant_folding=True)
            else:
                torch.onnx.export(wrapper, tuple(example.values()), str(path), dynamo=True, opset_version=opset,
                                  input_names=names, output_names=output_names, external_data=True,
                                  optimize=True)
        except ImportError as exc:
            raise OnnxExportError(f"cannot export {component} with the {exporter} exporter: {exc} "
                                  f"(the dynamo exporter needs `pip install onnxscript`)") from None
        except (RuntimeError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxExportError(f"ONNX export of {component} failed: {first}") from exc
    references = reference if isinstance(reference, (tuple, list)) else (reference,)
    if len(references) != len(output_names):
        raise OnnxExportError(f"{component} returned {len(references)} outputs, expected {len(output_names)}")
    outputs = {name: TensorSpec(tuple(r.shape), r.dtype) for name, r in zip(output_names, references)}
    return OnnxGraph(path, component, dict(inputs), outputs)


def export_unet(unet: torch.nn.Module, path: str | Path, batch: int, height: int, width: int,
                tokens: int = TEXT_TOKENS, opset: int = DEFAULT_OPSET, exporter: str = "torchscript",
                residuals: bool = False) -> OnnxGraph:
    """Export the UNet for a stream batch of `batch` rows at height x width pixels.

    Inputs: sample (B,C,h,w), timestep (B,) float32, encoder_hidden_states (B,tokens,width);
    SDXL adds text_embeds (B,pooled) and time_ids (B,6); `residuals` adds the ControlNet
    residuals (`residual_specs`). Output: "noise_pred" like sample.
    """
    inputs = unet_input_specs(unet, batch, height, width, tokens)
    wrapper: torch.nn.Module = UnetExport(unet)
    if residuals:
        inputs.update(residual_specs(unet, batch, height, width))
        wrapper = UnetResidualsExport(unet, list(inputs))
    return _export(wrapper, Path(path), unet_component(residuals), inputs, ["noise_pred"], opset, exporter)


def export_controlnet(controlnet: torch.nn.Module, path: str | Path, batch: int, height: int, width: int,
                      tokens: int = TEXT_TOKENS, opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> OnnxGraph:
    """Export a ControlNet for a stream batch of `batch` rows: the UNet's inputs plus
    controlnet_cond (B,3,H,W) in 0..1 -> down_residual_0.. and mid_residual (`residual_specs`)."""
    inputs = controlnet_input_specs(controlnet, batch, height, width, tokens)
    outputs = list(residual_specs(controlnet, batch, height, width))
    return _export(ControlNetExport(controlnet), Path(path), "controlnet", inputs, outputs, opset, exporter)


def export_vae_encoder(vae: torch.nn.Module, path: str | Path, batch: int, height: int, width: int,
                       opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> OnnxGraph:
    """images (B,3,H,W) in [-1,1] -> "latents" (B,C,H/8,W/8), raw (unscaled)."""
    _check_size(batch, height, width)
    inputs = {"images": TensorSpec((batch, 3, height, width), _param(vae).dtype)}
    return _export(VaeEncoderExport(vae), Path(path), "vae_encoder", inputs, ["latents"], opset, exporter)


def export_vae_decoder(vae: torch.nn.Module, path: str | Path, batch: int, height: int, width: int,
                       opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> OnnxGraph:
    """raw latents (B,C,H/8,W/8) -> "images" (B,3,H,W) in [-1,1]."""
    _check_size(batch, height, width)
    shape = (batch, _latent_channels(vae), height // VAE_FACTOR, width // VAE_FACTOR)
    inputs = {"latents": TensorSpec(shape, _param(vae).dtype)}
    return _export(VaeDecoderExport(vae), Path(path), "vae_decoder", inputs, ["images"], opset, exporter)
