"""Fixtures shared by the engine tests."""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import pytest
import torch

import engine.accel.trt_components as trt_components
import engine.accel.trt_engine as trt_engine
from engine.realtime.runtime import Runtime
from tests.engine.accel.fake_tensorrt import make_fake_trt


@pytest.fixture
def runtimes():
    """Runtimes a test starts; each is stopped when the test ends, pass or fail."""
    started: list[Runtime] = []
    yield started
    for rt in started:
        rt.stop(timeout=10)


@pytest.fixture
def cuda_visible(monkeypatch):
    """select_backend only asks torch whether CUDA is there; pretend it is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "_TRT_LOGGER", None)  # one logger per fake module
    return trt


@pytest.fixture
def fake_cuda(monkeypatch, fake_trt):
    """Just enough torch.cuda for TrtEngine on a CPU: 'CUDA' tensors are CPU tensors, streams are records."""
    real_empty = torch.empty

    def empty(*size, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return real_empty(*size, device=device, **kwargs)

    class FakeStream:
        created = []

        def __init__(self, device=None, handle=None):
            self.cuda_stream = handle if handle is not None else 7000 + len(FakeStream.created)
            if handle is None:
                FakeStream.created.append(self)

        def wait_stream(self, other):
            fake_trt.events.append(("wait", self.cuda_stream, other.cuda_stream))

    state = SimpleNamespace(current=FakeStream(handle=0), Stream=FakeStream)
    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state.current)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(trt_components, "_gpu_parts", lambda device: ("Fake GPU", {"compute_capability": "9.0"}))
    return state
