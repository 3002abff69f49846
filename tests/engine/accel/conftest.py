"""Fixtures for the TensorRT tests: ONNX exports replaced by fakes (with the fake TensorRT of
tests/engine/conftest.py, an engine "builds" on any machine)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

import engine.accel.trt_components as trt_components
from engine.accel.onnx_export import (
    OnnxGraph,
    TensorSpec,
    controlnet_input_specs,
    residual_specs,
    unet_component,
    unet_input_specs,
)
from tests.engine.accel.fake_tensorrt import write_graph


@pytest.fixture
def fake_exports(monkeypatch):
    """Export stand-ins writing fake ONNX files with the real input specs; records what was exported."""
    exported = []

    def dump(specs: dict[str, TensorSpec]):
        return [[n, list(s.shape), str(s.dtype).removeprefix("torch.")] for n, s in specs.items()]

    def export_unet(unet, path, batch, height, width, tokens, residuals=False):
        specs = unet_input_specs(unet, batch, height, width, tokens)
        component = unet_component(residuals)
        if residuals:
            specs.update(residual_specs(unet, batch, height, width))
        exported.append(component)
        out = {"noise_pred": specs["sample"]}
        write_graph(Path(path), dump(specs), dump(out))
        return OnnxGraph(Path(path), component, specs, out)

    def export_controlnet(controlnet, path, batch, height, width, tokens):
        specs = controlnet_input_specs(controlnet, batch, height, width, tokens)
        exported.append("controlnet")
        out = residual_specs(controlnet, batch, height, width)
        write_graph(Path(path), dump(specs), dump(out))
        return OnnxGraph(Path(path), "controlnet", specs, out)

    def export_vae(component, in_name, out_name, in_shape, out_shape):
        def export(vae, path, batch, height, width):
            exported.append(component)
            specs = {in_name: TensorSpec((batch, *in_shape(height, width)), torch.float32)}
            out = {out_name: TensorSpec((batch, *out_shape(height, width)), torch.float32)}
            write_graph(Path(path), dump(specs), dump(out))
            return OnnxGraph(Path(path), component, specs, out)
        return export

    def latent(h, w):
        return (4, h // 8, w // 8)

    def image(h, w):
        return (3, h, w)

    monkeypatch.setattr(trt_components, "export_unet", export_unet)
    monkeypatch.setattr(trt_components, "export_controlnet", export_controlnet)
    monkeypatch.setattr(trt_components, "export_vae_decoder",
                        export_vae("vae_decoder", "latents", "images", latent, image))
    monkeypatch.setattr(trt_components, "export_vae_encoder",
                        export_vae("vae_encoder", "images", "latents", image, latent))
    return exported


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in module that imports and reports a version (no engine API: see fake_tensorrt.py)."""
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.9.0.34"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake
