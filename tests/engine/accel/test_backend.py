"""Acceleration policy (engine/accel/backend.py): backend choice, device and dtype, and every
fallback: TensorRT -> compile, compile -> eager, a failed CUDA graph capture, and the status string."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from engine.accel.backend import resolve_device, resolve_dtype, select_backend
from engine.accel.trt_engine import INSTALL_HINT
from engine.config.schema import ACCELERATIONS, LiveParams, LoadSettings, Preset
from engine.errors import ConfigError


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def fake_tensorrt(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.9.0.34"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


# ---- choice -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "device", "backend"), [
    ("none", "cpu", "none"), ("compile", "cpu", "compile"), ("auto", "cpu", "none"), ("tensorrt", "cpu", "none"),
])
def test_choices_on_cpu(no_tensorrt, requested, device, backend):
    chosen, reason = select_backend(requested, device)
    assert chosen == backend and reason


def test_every_acceleration_the_schema_allows_resolves_to_a_backend(no_tensorrt):
    for requested in ACCELERATIONS:
        assert select_backend(requested, "cpu")[0] in ("none", "compile", "tensorrt")


def test_tensorrt_on_cpu_says_it_needs_a_gpu(fake_tensorrt, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.backend"):
        assert select_backend("tensorrt", "cpu")[0] == "none"
    assert "needs an NVIDIA GPU" in caplog.text


def test_missing_library_on_cuda_falls_back_to_compile_with_the_hint(no_tensorrt, cuda_visible, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.backend"):
        backend, reason = select_backend("tensorrt", "cuda")
    assert backend == "compile"
    assert INSTALL_HINT in reason and "CUDA graphs" in reason
    assert len(caplog.records) == 1 and INSTALL_HINT in caplog.text


def test_auto_without_library_is_quiet_compile(no_tensorrt, cuda_visible, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.backend"):
        assert select_backend("auto", "cuda")[0] == "compile"
    assert not caplog.records  # auto falling back is expected, not a warning


def test_library_on_cuda_selects_tensorrt(fake_tensorrt, cuda_visible):
    for requested in ("tensorrt", "auto"):
        backend, reason = select_backend(requested, "cuda")
        assert backend == "tensorrt" and "10.9.0.34" in reason


# ---- device and dtype -------------------------------------------------------------------------------


def test_device_and_dtype_follow_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = resolve_device("auto")
    assert cpu.type == "cpu" and resolve_dtype("auto", cpu) is torch.float32  # CPU half precision is slow
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")


# ---- fallbacks when building ------------------------------------------------------------------------


def test_any_tensorrt_failure_falls_back_to_compile(monkeypatch, caplog):
    """A TensorRT version whose API moved raises whatever it raises: the preset still plays."""
    import engine.accel.trt_engine as trt_engine
    import engine.core.build as build_module

    monkeypatch.setattr(build_module, "resolve_acceleration", lambda requested, device: "tensorrt")

    def api_moved(*args, **kwargs):
        raise AttributeError("'Builder' object has no attribute 'build_serialized_network'")

    monkeypatch.setattr(trt_engine, "build_trt_components", api_moved)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the fallback's compile: not under test here
    preset = Preset(name="trt", load=LoadSettings(model="tiny", width=64, height=64, acceleration="tensorrt"),
                    live=LiveParams(t_index_list=[20, 40]))
    with caplog.at_level("WARNING"):
        pipeline = build_module.build_pipeline(preset)
    assert pipeline.backend == "compile"
    assert "TensorRT build failed (AttributeError" in caplog.text
