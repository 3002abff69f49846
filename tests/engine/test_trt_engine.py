"""TensorRT: backend choice and pure logic on CPU (library absent or faked); engines only on a GPU."""

from __future__ import annotations

import logging
import sys
import threading
import types
from types import SimpleNamespace

import pytest
import torch

from engine.errors import ConfigError
from engine.trt_engine import (
    INSTALL_HINT,
    BuildProgress,
    TensorRTUnavailable,
    TrtBuildError,
    TrtEngine,
    TrtUnet,
    build_trt_components,
    import_tensorrt,
    network_flags,
    select_backend,
)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def fake_tensorrt(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.9.0.34"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture
def cuda_visible(monkeypatch):
    """select_backend only asks torch whether CUDA is there; pretend it is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_missing_library_is_one_line_naming_the_extra(no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as info:
        import_tensorrt()
    message = str(info.value)
    assert INSTALL_HINT in message and "\n" not in message
    assert INSTALL_HINT == "pip install 'streamvj[tensorrt]'"


@pytest.mark.parametrize(("requested", "device", "backend"), [
    ("none", "cpu", "none"), ("compile", "cpu", "compile"), ("auto", "cpu", "none"), ("tensorrt", "cpu", "none"),
])
def test_choices_on_cpu(no_tensorrt, requested, device, backend):
    chosen, reason = select_backend(requested, device)
    assert chosen == backend and reason


def test_tensorrt_on_cpu_says_it_needs_a_gpu(fake_tensorrt, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.trt_engine"):
        assert select_backend("tensorrt", "cpu", build=lambda: pytest.fail("no build on a CPU"))[0] == "none"
    assert "needs an NVIDIA GPU" in caplog.text


def test_missing_library_on_cuda_falls_back_to_compile_with_the_hint(no_tensorrt, cuda_visible, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.trt_engine"):
        backend, reason = select_backend("tensorrt", "cuda", build=lambda: pytest.fail("no build without TensorRT"))
    assert backend == "compile"
    assert INSTALL_HINT in reason and "CUDA graphs" in reason
    assert len(caplog.records) == 1 and INSTALL_HINT in caplog.text


def test_auto_without_library_is_quiet_compile(no_tensorrt, cuda_visible, caplog):
    with caplog.at_level(logging.WARNING, logger="streamvj.trt_engine"):
        assert select_backend("auto", "cuda")[0] == "compile"
    assert not caplog.records  # auto falling back is expected, not a warning


def test_build_failure_falls_back(fake_tensorrt, cuda_visible):
    def failing_build():
        raise TrtBuildError("TensorRT could not parse unet.onnx: unsupported op")

    backend, reason = select_backend("tensorrt", "cuda", build=failing_build)
    assert backend == "compile" and "build failed" in reason and "unsupported op" in reason


def test_library_and_build_ok_selects_tensorrt(fake_tensorrt, cuda_visible):
    built = []
    for requested in ("tensorrt", "auto"):
        backend, reason = select_backend(requested, "cuda", build=lambda: built.append(1))
        assert backend == "tensorrt" and "10.9.0.34" in reason
    assert built == [1, 1]


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown acceleration"):
        select_backend("warp", "cpu")


def _fake_trt(version: str, fp16_flag: bool, strongly_typed: bool) -> SimpleNamespace:
    flags = SimpleNamespace(EXPLICIT_BATCH=0)
    if strongly_typed:
        flags.STRONGLY_TYPED = 1
    builder_flags = SimpleNamespace(FP16=0) if fp16_flag else SimpleNamespace()
    return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags, BuilderFlag=builder_flags)


@pytest.mark.parametrize(("version", "fp16_flag", "strong", "flags", "strongly_typed"), [
    ("8.6.1", True, False, 1, False),    # EXPLICIT_BATCH, FP16 builder flag
    ("10.9.0", True, True, 0, False),    # implicit explicit-batch; weak typing + FP16 flag still there
    ("11.4.0", False, True, 2, True),    # FP16 flag removed: strongly typed
])
def test_network_flags_per_version(version, fp16_flag, strong, flags, strongly_typed):
    assert network_flags(_fake_trt(version, fp16_flag, strong)) == (flags, strongly_typed)


def test_build_progress_logs_phases_throttles_steps_and_cancels(caplog):
    now = [0.0]
    cancel = threading.Event()
    progress = BuildProgress(cancel, interval_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="streamvj.trt_engine"):
        progress.phase_start("Building engine", None, 3)
        progress.phase_start("Tactic selection", "Building engine", 100)
        progress.phase_start("Layer 7", "Tactic selection", 10)  # depth 2: debug only
        results = []
        for step in range(100):
            now[0] += 0.5
            results.append(progress.step_complete("Tactic selection", step))
        progress.phase_finish("Layer 7")
        progress.phase_finish("Tactic selection")
        cancel.set()
        assert progress.step_complete("Building engine", 1) is False  # asks TensorRT to stop
        progress.phase_finish("Building engine")
    assert all(results)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "TensorRT build: Building engine (3 steps)"
    assert lines[1] == "TensorRT build:   Tactic selection (100 steps)"
    steps = [line for line in lines if "/100" in line]
    assert 5 <= len(steps) <= 11  # every ~5 s of 50 s, not all 100
    assert not any("Layer 7" in line for line in lines)
    assert lines[-1].startswith("TensorRT build: Building engine done in")


def test_progress_tolerates_unknown_phases():
    progress = BuildProgress()
    assert progress.step_complete("never started", 0) is True
    progress.phase_finish("never started")


class FakeEngine:
    def __init__(self, inputs):
        self.inputs = inputs
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return args[0] * 2


def test_trt_unet_routes_sd_and_sdxl_inputs():
    x, t, h = torch.ones(2, 4, 8, 8), torch.tensor([999, 500]), torch.zeros(2, 77, 32)
    sd = FakeEngine(["sample", "timestep", "encoder_hidden_states"])
    torch.testing.assert_close(TrtUnet(sd)(x, t, h, None, None), x * 2)
    assert len(sd.calls[0]) == 3
    xl = FakeEngine(["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"])
    unet = TrtUnet(xl)
    unet(x, t, h, torch.zeros(2, 32), torch.zeros(2, 6))
    assert len(xl.calls[0]) == 5
    with pytest.raises(ValueError, match="pooled"):
        unet(x, t, h, None, None)
    with pytest.raises(ConfigError, match="not a streamvj UNet engine"):
        TrtUnet(FakeEngine(["images"]))


def test_engine_stages_inputs_only_when_they_are_not_its_buffers(monkeypatch):
    engine = TrtEngine.__new__(TrtEngine)  # the staging logic alone; binding needs a GPU
    engine.name = "unet"
    engine.buffers = {"timestep": torch.zeros(2), "sample": torch.zeros(2, 4)}
    copies = []
    real_copy = torch.Tensor.copy_

    def counting_copy(self, src, non_blocking=False):
        copies.append(src)
        return real_copy(self, src, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", counting_copy)
    engine._stage("sample", engine.buffers["sample"])
    engine._stage("sample", engine.buffers["sample"].view(2, 4))  # same storage, same layout
    assert not copies
    engine._stage("timestep", torch.tensor([999, 500]))  # int64 into the float32 buffer
    assert len(copies) == 1 and engine.buffers["timestep"].tolist() == [999.0, 500.0]
    with pytest.raises(ValueError, match="engine built for"):
        engine._stage("sample", torch.zeros(3, 4))


def test_components_need_cuda(tiny_parts, fake_tensorrt):
    with pytest.raises(ConfigError, match="CUDA"):
        build_trt_components(tiny_parts, width=64, height=64, unet_batch=2, frame_buffer_size=1, device="cpu",
                             dtype=torch.float32)


# ---- GPU + TensorRT only ------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def gpu_engines(tmp_path_factory):
    pytest.importorskip("tensorrt")
    from engine.models import load_model
    from engine.trt_cache import TrtCache

    parts = load_model("tiny", device="cuda", dtype=torch.float32)
    cache = TrtCache(tmp_path_factory.mktemp("trt"))
    components = build_trt_components(parts, width=64, height=64, unet_batch=2, frame_buffer_size=1,
                                      device="cuda", dtype=torch.float32, cache=cache)
    return parts, cache, components


@pytest.mark.cuda
@needs_gpu
def test_trt_unet_matches_pytorch_and_keeps_its_buffers(gpu_engines):
    parts, _cache, components = gpu_engines
    x = torch.randn(2, 4, 8, 8, device="cuda")
    t = torch.tensor([999, 400], device="cuda")
    h = torch.randn(2, 77, 32, device="cuda")
    pointers = {n: b.data_ptr() for n, b in components.unet.engine.buffers.items()}
    out = components.unet(x, t, h)
    again = components.unet(x, t, h)
    assert out is again  # the bound output buffer, not a new tensor
    assert {n: b.data_ptr() for n, b in components.unet.engine.buffers.items()} == pointers
    with torch.no_grad():
        want = parts.unet(x, t, encoder_hidden_states=h, return_dict=False)[0]
    torch.testing.assert_close(out, want, atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@needs_gpu
def test_second_build_loads_from_cache(gpu_engines, caplog):
    parts, cache, _ = gpu_engines
    with caplog.at_level(logging.INFO, logger="streamvj.trt_engine"):
        build_trt_components(parts, width=64, height=64, unet_batch=2, frame_buffer_size=1, device="cuda",
                             dtype=torch.float32, cache=cache)
    assert caplog.text.count("loaded from") == 3 and "not cached" not in caplog.text


@pytest.mark.cuda
@needs_gpu
def test_trt_vae_matches_pytorch(gpu_engines):
    parts, _cache, components = gpu_engines
    images = torch.rand(1, 3, 64, 64, device="cuda") * 2 - 1
    latents = components.vae_encoder(images)
    with torch.no_grad():
        torch.testing.assert_close(latents, parts.vae.encode(images).latents, atol=1e-2, rtol=1e-2)
        decoded = components.vae_decoder(latents)
        torch.testing.assert_close(decoded, parts.vae.decode(latents, return_dict=False)[0], atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@needs_gpu
def test_trt_call_captures_in_a_cuda_graph(gpu_engines):
    from engine.cuda_graphs import GraphedStep

    _parts, _cache, components = gpu_engines
    x = torch.randn(2, 4, 8, 8, device="cuda")
    t = torch.tensor([999, 400], device="cuda")
    h = torch.randn(2, 77, 32, device="cuda")
    want = components.unet(x, t, h).clone()
    step = GraphedStep(lambda a, b, c: components.unet(a, b, c) * 1.0, [x, t, h], warmup=2)
    got = step()
    assert step.captured
    torch.testing.assert_close(got, want)
    h.mul_(0.5)  # a live update through the captured input buffer
    torch.testing.assert_close(step(), components.unet(x, t, h) * 1.0)
