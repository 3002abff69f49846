"""TensorRT components with the fake TensorRT: export -> build -> cache -> load, and fallbacks."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import engine.accel.trt_components as trt_components
from engine.accel.onnx_export import OnnxExportError
from engine.accel.trt_cache import TrtCache
from engine.accel.trt_components import build_trt_components
from engine.accel.trt_engine import TrtBuildError
from engine.errors import ConfigError
from engine.models.controlnet import build_random_controlnet

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


def entries_by_component(cache):
    """component -> the keys cached for it."""
    found = {}
    for key, _size, _used in cache.entries():
        parts = json.loads(cache.paths(key)[1].read_text())["parts"]
        found.setdefault(parts["component"], set()).add(key)
    return found


def test_controlnet_components_are_cached_under_their_own_keys(tiny_parts, fake_trt, fake_cuda, fake_exports,
                                                                tmp_path, caplog):
    cache = TrtCache(tmp_path / "trt")
    pair = [build_random_controlnet(tiny_parts.unet, seed=k) for k in range(2)]
    built = components(tiny_parts, cache, controlnets=pair)
    assert fake_exports == ["unet_residuals", "controlnet", "controlnet", "vae_decoder", "vae_encoder"]
    assert len(built.controlnets) == 2 and built.unet.residual_inputs[-1] == "mid_residual"
    assert built.controlnets[0].engine.inputs[:4] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    assert built.controlnets[0].engine.buffers["sample"].shape[0] == 2  # the UNet call's rows
    keys = entries_by_component(cache)
    assert len(keys["controlnet"]) == 2  # each ControlNet keyed by its own weights

    # The plain UNet (a preset without ControlNets) is another entry; the VAEs are shared.
    plain = components(tiny_parts, cache)
    assert fake_exports[5:] == ["unet"] and plain.controlnets == () and plain.unet.residual_inputs == []
    keys = entries_by_component(cache)
    assert len(keys["unet"]) == 1 and len(keys["unet_residuals"]) == 1 and keys["unet"] != keys["unet_residuals"]

    # Again with the same ControlNets (and one the same as another, seed 0): everything from the cache.
    with caplog.at_level(logging.INFO, logger="streamvj.trt_components"):
        again = components(tiny_parts, cache, controlnets=[*pair, build_random_controlnet(tiny_parts.unet, seed=0)])
    assert len(fake_exports) == 6 and fake_trt.build_count == 6 and len(again.controlnets) == 3
    assert caplog.text.count("loaded from") == 6 and "not cached" not in caplog.text

    # A new stream batch is a new ControlNet engine (and UNet), not a shape error.
    build_trt_components(tiny_parts, width=64, height=64, unet_batch=3, frame_buffer_size=1, device="cuda",
                         dtype=torch.float32, cache=cache, controlnets=pair[:1])
    assert fake_exports[6:] == ["unet_residuals", "controlnet"]
    assert len(entries_by_component(cache)["controlnet"]) == 3


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


def test_a_controlnet_export_failure_is_a_build_error(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path,
                                                     monkeypatch):
    def broken_export(*args, **kwargs):
        raise OnnxExportError("ONNX export of controlnet failed: unsupported op")

    monkeypatch.setattr(trt_components, "export_controlnet", broken_export)
    with pytest.raises(TrtBuildError, match="controlnet failed"):
        components(tiny_parts, TrtCache(tmp_path), controlnets=[build_random_controlnet(tiny_parts.unet)])


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
