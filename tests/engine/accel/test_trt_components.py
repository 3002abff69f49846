"""TensorRT components with the fake TensorRT: export -> build -> cache -> load, and fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch

import engine.accel.trt_components as trt_components
from engine.accel.onnx_export import OnnxExportError
from engine.accel.trt_cache import TrtCache
from engine.accel.trt_components import build_trt_components
from engine.accel.trt_engine import TrtBuildError
from engine.errors import ConfigError

# ---- components: export -> build -> cache -> load, with the fake TensorRT -----------------------------


def components(parts, cache, **kwargs):
    return build_trt_components(parts, width=64, height=64, unet_batch=2, frame_buffer_size=1, device="cuda",
                                dtype=torch.float32, cache=cache, **kwargs)


def test_components_build_once_then_load_from_the_cache(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path,
                                                       caplog):
    cache = TrtCache(tmp_path / "trt")
    built = components(tiny_parts, cache)
    assert fake_exports == ["unet", "vae_decoder", "vae_encoder"] and fake_trt.build_count == 3
    assert len(cache.entries()) == 3
    assert not any(p.name.startswith(".onnx-") for p in cache.root.iterdir())  # the ONNX temp dirs are gone
    assert built.unet.engine.inputs == ["sample", "timestep", "encoder_hidden_states"]
    assert built.vae_decoder.buffers["images"].shape == (1, 3, 64, 64)
    assert built.vae_encoder.buffers["latents"].shape == (1, 4, 8, 8)
    fake_trt.on_execute = lambda: built.unet.engine.buffers["noise_pred"].copy_(built.unet.engine.buffers["sample"])
    x = torch.randn(built.unet.engine.buffers["sample"].shape)
    torch.testing.assert_close(built.unet(x, torch.tensor([999, 400]), torch.randn(
        built.unet.engine.buffers["encoder_hidden_states"].shape)), x)

    with caplog.at_level(logging.INFO, logger="streamvj.trt_components"):
        again = components(tiny_parts, cache)
    assert fake_exports == ["unet", "vae_decoder", "vae_encoder"] and fake_trt.build_count == 3  # nothing rebuilt
    assert caplog.text.count("loaded from") == 3 and "not cached" not in caplog.text
    assert again.vae_decoder.outputs == ["images"]


def test_txt2img_components_have_no_encoder(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path):
    built = components(tiny_parts, TrtCache(tmp_path), txt2img=True)
    assert built.vae_encoder is None and fake_exports == ["unet", "vae_decoder"]


def test_engine_that_cannot_be_cached_still_runs(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path,
                                                 monkeypatch, caplog):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TrtCache, "store", disk_full)
    with caplog.at_level(logging.WARNING, logger="streamvj.trt_components"):
        built = components(tiny_parts, TrtCache(tmp_path), txt2img=True)
    assert built.unet.engine.outputs == ["noise_pred"]
    assert caplog.text.count("could not be cached") == 2 and "No space left" in caplog.text


def test_export_failure_is_a_build_error(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        raise OnnxExportError("ONNX export of unet failed: unsupported op")

    monkeypatch.setattr(trt_components, "export_unet", broken_export)
    with pytest.raises(TrtBuildError, match="unsupported op"):
        components(tiny_parts, TrtCache(tmp_path))
    assert fake_trt.build_count == 0


def test_components_need_cuda(tiny_parts, fake_trt):
    with pytest.raises(ConfigError, match="CUDA"):
        build_trt_components(tiny_parts, width=64, height=64, unet_batch=2, frame_buffer_size=1, device="cpu",
                             dtype=torch.float32)
