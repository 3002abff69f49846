"""Acceleration policy (engine/accel/backend.py): backend choice, device and dtype, and every
fallback: TensorRT -> compile, compile -> eager, a failed CUDA graph capture, and the status string."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.accel.backend import (
    COMPILED_VARIANTS,
    FrameStep,
    model_calls,
    resolve_device,
    resolve_dtype,
    select_backend,
    torch_compile_mode,
)
from engine.accel.trt_cache import TrtCache
from engine.accel.trt_engine import INSTALL_HINT, TrtControlNet, TrtUnet
from engine.config.scalars import ACCELERATIONS, COMPILE_MODES
from engine.config.schema import ControlNetSpec, LiveParams, LoadSettings, Preset
from engine.errors import ConfigError
from tests.engine.accel.graph_emulator import EmulatedGraphs
from tests.engine.core.pipelines import SIZE, make_pipeline

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
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # also on a Mac
    cpu = resolve_device("auto")
    assert cpu.type == "cpu" and resolve_dtype("auto", cpu) is torch.float32  # CPU half precision is slow
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")


# ---- Apple silicon (MPS), with torch.backends.mps faked ------------------------------------------------


@pytest.fixture
def apple_silicon(monkeypatch):
    """A Mac with an M-series GPU as torch sees it: no CUDA, MPS built and available, macOS 15."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    macos = [(15, 0)]
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos[0] >= (major, minor))
    return macos


def test_auto_picks_mps_after_cuda_with_float16(apple_silicon, monkeypatch):
    device = resolve_device("auto")
    assert device.type == "mps" and resolve_dtype("auto", device) is torch.float16
    assert resolve_device("mps").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # an eGPU-era Mac or a Linux box with both
    assert resolve_device("auto").type == "cuda"


def test_cuda_asked_for_on_a_mac_names_mps(apple_silicon):
    with pytest.raises(ConfigError, match=r"sees no CUDA GPU .*device: mps \(this Mac's GPU\)"):
        resolve_device("cuda")


@pytest.mark.parametrize(("built", "available", "words"), [
    (False, False, "this torch build has no MPS backend"),
    (True, False, "needs an Apple silicon Mac and macOS 12.3 or later"),
])
def test_mps_asked_for_where_there_is_none(monkeypatch, built, available, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
    assert resolve_device("auto").type == "cpu"  # an Intel Mac, or Linux/Windows without a GPU
    with pytest.raises(ConfigError, match=words):
        resolve_device("mps")


def test_bfloat16_on_mps_needs_macos_14(apple_silicon):
    mps = torch.device("mps")
    assert resolve_dtype("bfloat16", mps) is torch.bfloat16
    assert resolve_dtype("float32", mps) is torch.float32
    apple_silicon[0] = (13, 6)
    with pytest.raises(ConfigError, match="bfloat16 on mps needs macOS 14 or later"):
        resolve_dtype("bfloat16", mps)
    assert resolve_dtype("float16", mps) is torch.float16


@pytest.mark.parametrize(("requested", "backend", "words"), [
    ("auto", "none", "eager PyTorch on Apple's GPU"),  # inductor's Metal backend is a prototype
    ("tensorrt", "none", "TensorRT needs an NVIDIA GPU (device is mps)"),
    ("compile", "compile", "Metal backend, a prototype: eager if it fails"),
    ("none", "none", "acceleration off"),
])
def test_acceleration_on_mps(no_tensorrt, apple_silicon, requested, backend, words):
    chosen, reason = select_backend(requested, "mps")
    assert chosen == backend and words in reason


def test_no_cuda_graphs_on_mps(apple_silicon):
    step = FrameStep(lambda x: x, "none", device="mps", static_inputs=[])
    assert step.graphed is None and step.status == "eager"


def test_the_schema_takes_mps():
    assert LoadSettings(model="tiny", device="mps").device == "mps"
    with pytest.raises(Exception, match="should match pattern"):
        LoadSettings(model="tiny", device="metal")


# ---- TensorRT -> compile when building -------------------------------------------------------------


def trt_calls(parts, txt2img=False, controlnets=()):
    return model_calls(parts, "tensorrt", width=64, height=64, unet_batch=2, frame_buffer_size=1,
                       device=torch.device("cuda"), dtype=torch.float32, txt2img=txt2img, controlnets=controlnets)


def test_tensorrt_engines_become_the_network_calls(tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path))
    calls = trt_calls(tiny_parts)
    assert calls.backend == "tensorrt" and isinstance(calls.unet, TrtUnet)
    assert fake_exports == ["unet", "vae_decoder", "vae_encoder"]


def test_a_failed_engine_build_falls_back_to_compile_with_the_reason(tiny_parts, fake_trt, fake_cuda, fake_exports,
                                                                    tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path))
    fake_trt.fail_build = True
    with caplog.at_level(logging.WARNING, logger="streamvj.backend"):
        calls = trt_calls(tiny_parts)
    assert calls.backend == "compile" and not isinstance(calls.unet, TrtUnet)  # the torch UNet
    assert "TensorRT build failed" in caplog.text and "could not build unet.onnx" in caplog.text
    assert TrtCache(tmp_path).entries() == []  # nothing half-built is cached


def test_controlnets_get_tensorrt_engines_and_a_failed_build_falls_back_with_them(
        tiny_parts, fake_trt, fake_cuda, fake_exports, tmp_path, monkeypatch, caplog):
    from engine.models.controlnet import build_random_controlnet

    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path))
    controlnets = [build_random_controlnet(tiny_parts.unet, seed=k) for k in range(2)]
    calls = trt_calls(tiny_parts, controlnets=controlnets)
    assert calls.backend == "tensorrt" and isinstance(calls.unet, TrtUnet) and calls.unet.residual_inputs
    assert [type(c) for c in calls.controlnets] == [TrtControlNet, TrtControlNet]

    fake_trt.fail_build = True
    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="streamvj.backend"):
        calls = trt_calls(tiny_parts, controlnets=controlnets)
    assert calls.backend == "compile" and len(calls.controlnets) == 2
    assert not any(isinstance(c, TrtControlNet) for c in calls.controlnets)  # the torch ControlNets
    ours = [r.getMessage() for r in caplog.records if r.name == "streamvj.backend"]
    assert len(ours) == 1 and "TensorRT build failed" in ours[0] and "unet_residuals.onnx" in ours[0]


def test_any_tensorrt_failure_falls_back_to_compile(tiny_parts, monkeypatch, caplog):
    """A TensorRT version whose API moved raises whatever it raises: the preset still plays."""
    import engine.accel.trt_components as trt_components

    def api_moved(*args, **kwargs):
        raise AttributeError("'Builder' object has no attribute 'build_serialized_network'")

    monkeypatch.setattr(trt_components, "build_trt_components", api_moved)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the fallback's compile: not under test here
    with caplog.at_level("WARNING", logger="streamvj.backend"):
        pipeline = make_pipeline(tiny_parts, backend="tensorrt")
    assert pipeline.backend == "compile"
    assert "TensorRT build failed (AttributeError" in caplog.text


def test_the_preset_build_resolves_and_warms_up(monkeypatch):
    from engine.core.build import build_pipeline

    preset = Preset(name="cpu", load=LoadSettings(model="tiny", width=SIZE, height=SIZE, device="cpu",
                                                  acceleration="auto"),
                    live=LiveParams(t_index_list=[20, 40], guidance_scale=2.0))
    pipeline = build_pipeline(preset)
    assert pipeline.backend == "eager" and pipeline.fit_input and pipeline.dtype is torch.float32
    assert float(pipeline.stream.guidance) == 2.0 and not pipeline.primed  # the live values; warmed, then reset


# ---- a pipeline with ControlNets on (fake) TensorRT engines ----------------------------------------------


def kernels_run_the_torch_modules(fake_trt, pipeline, parts, controlnets):
    """Each fake engine's execution runs the torch module it was exported from on its bound buffers
    (by name, in the exported order), so the pipeline's TensorRT wiring is checked against eager."""
    from engine.accel.onnx_export import (
        ControlNetExport,
        UnetResidualsExport,
        VaeDecoderExport,
        VaeEncoderExport,
    )
    from engine.accel.trt_engine import TrtEngine, residual_names

    unet, encoder, decoder = pipeline.stream.unet_fn, pipeline._vae_encode, pipeline._vae_decode
    assert isinstance(unet, TrtUnet) and isinstance(encoder, TrtEngine) and isinstance(decoder, TrtEngine)
    trt_controlnets = pipeline.control.calls
    assert all(isinstance(c, TrtControlNet) for c in trt_controlnets)
    modules = {unet.engine: UnetResidualsExport(parts.unet, unet.engine.inputs), encoder: VaeEncoderExport(parts.vae),
               decoder: VaeDecoderExport(parts.vae)}
    modules.update({c.engine: ControlNetExport(m) for c, m in zip(trt_controlnets, controlnets, strict=True)})
    by_context = {engine.context: (engine, module) for engine, module in modules.items()}
    runs = {engine.name: 0 for engine in modules}

    def execute(context):
        engine, module = by_context[context]
        with torch.no_grad():
            outs = module(*(engine.buffers[n] for n in engine.inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        names = engine.outputs if len(outs) == 1 else residual_names(engine, outputs=True)
        for name, out in zip(names, outs, strict=True):
            engine.buffers[name].copy_(out)
        runs[engine.name] += 1

    fake_trt.on_execute_context = execute
    return runs


@pytest.mark.parametrize(("fixture", "cfg_type"), [("tiny_parts", "self"), ("tiny_parts", "full"),
                                                   ("tiny_sdxl_parts", "initialize")])
def test_a_pipeline_with_controlnets_runs_them_as_tensorrt_engines(request, fake_trt, fake_cuda, fake_exports,
                                                                   tmp_path, monkeypatch, fixture, cfg_type):
    """Same pictures as eager, ControlNets on and off (their residuals then zeros), one engine call
    per ControlNet per UNet call, none while it is off."""
    import numpy as np

    import engine.accel.trt_components as trt_components
    from engine.core.pipeline import StreamPipeline
    from engine.models.controlnet import ControlNetParts, build_random_controlnet

    parts = request.getfixturevalue(fixture)
    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path))
    real_build = trt_components.build_trt_components
    # The pipeline runs on the CPU; its engines think they are on the (fake) GPU.
    monkeypatch.setattr(trt_components, "build_trt_components", lambda p, **kw: real_build(p, **{**kw, "device": "cuda"}))
    controlnets = [build_random_controlnet(parts.unet, seed=k) for k in range(2)]
    specs = [ControlNetSpec(model="random"), ControlNetSpec(model="random", guidance_end=0.5)]  # the input frame as map
    load = LoadSettings(model="tiny", width=SIZE, height=SIZE, cfg_type=cfg_type, controlnets=specs)
    live = LiveParams(t_index_list=[20, 40], controlnet_0_scale=0.8, controlnet_1_scale=1.5, guidance_scale=1.5)

    def build(backend):
        return StreamPipeline(parts, load, live, backend=backend, controlnets=[ControlNetParts(c) for c in controlnets])

    eager, engines = build("none"), build("tensorrt")
    assert engines.backend == "tensorrt" and "controlnet" in fake_exports
    runs = kernels_run_the_torch_modules(fake_trt, engines, parts, controlnets)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8) for _ in range(6)]
    for i, frame in enumerate(frames):
        if i == 3:  # both off: the residual UNet engine reads its zeros
            off = live.model_copy(update={"controlnet_0_enabled": False, "controlnet_1_enabled": False})
            for pipeline in (eager, engines):
                pipeline.apply_live("controlnet", off)
            calls = dict(runs)
        want, got = eager(frame).clone(), engines(frame)
        off_by = int((got.int() - want.int()).abs().max())
        # Within one level: the engines read contiguous float32 copies (timesteps too), eager the views.
        assert off_by <= 1, f"frame {i}: off by {off_by} of 255"
    unet_calls = engines.counters.unet_calls
    assert runs["unet"] == unet_calls and runs["controlnet_0"] == runs["controlnet_1"] == calls["unet"] > 0
    assert runs["controlnet_0"] == calls["controlnet_0"] < unet_calls  # not run while off


def test_real_onnx_graphs_on_the_fake_tensorrt_give_the_eager_pictures(tiny_parts, fake_trt, fake_cuda, tmp_path,
                                                                       monkeypatch, caplog):
    """End to end but for TensorRT itself: the real ONNX exports (UNet taking residuals, two ControlNets,
    VAE) are "built" by the fake, which runs each graph in onnxruntime on the memory its bound
    addresses point to. Same pictures as eager, ControlNets on and off; a second pipeline loads
    every engine from the cache."""
    import numpy as np

    import engine.accel.trt_components as trt_components
    from engine.core.pipeline import StreamPipeline
    from engine.models.controlnet import ControlNetParts, build_random_controlnet

    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path))
    real_build = trt_components.build_trt_components
    monkeypatch.setattr(trt_components, "build_trt_components", lambda p, **kw: real_build(p, **{**kw, "device": "cuda"}))
    controlnets = [ControlNetParts(build_random_controlnet(tiny_parts.unet, seed=k)) for k in range(2)]
    load = LoadSettings(model="tiny", width=SIZE, height=SIZE, cfg_type="self",
                        controlnets=[ControlNetSpec(model="random"), ControlNetSpec(model="random", guidance_end=0.5)])
    live = LiveParams(t_index_list=[20, 40], controlnet_0_scale=0.8, controlnet_1_scale=1.5)

    def build(backend):
        return StreamPipeline(tiny_parts, load, live, backend=backend, controlnets=controlnets)

    eager, engines = build("none"), build("tensorrt")
    assert engines.backend == "tensorrt" and fake_trt.build_count == 5  # UNet, 2 ControlNets, VAE encoder, decoder
    assert isinstance(engines.stream.unet_fn, TrtUnet)
    rng = np.random.default_rng(1)
    for i in range(5):
        if i == 3:
            off = live.model_copy(update={"controlnet_0_enabled": False, "controlnet_1_enabled": False})
            eager.apply_live("controlnet", off)
            engines.apply_live("controlnet", off)
        frame = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
        want, got = eager(frame).clone(), engines(frame)
        off_by = int((got.int() - want.int()).abs().max())
        assert off_by <= 1, f"frame {i}: off by {off_by} of 255"  # onnxruntime's fp32 kernels, not torch's

    with caplog.at_level(logging.INFO, logger="streamvj.trt_components"):
        again = build("tensorrt")
    assert fake_trt.build_count == 5 and caplog.text.count("loaded from") == 5
    frame = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    assert int((again(frame).int() - build("none")(frame).int()).abs().max()) <= 1


# ---- compile -> eager, graph capture failure, and the status string --------------------------------------


def test_every_compile_mode_is_one_torch_knows_and_none_asks_for_inductor_graphs():
    from torch._inductor import list_mode_options

    modes = {name: torch_compile_mode(name) for name in COMPILE_MODES}
    assert modes["default"] is None
    for mode in modes.values():
        assert mode is None or (mode in list_mode_options() and "no-cudagraphs" in mode)


@pytest.mark.parametrize("name", COMPILE_MODES)
def test_compile_mode_reaches_torch_compile(monkeypatch, name):
    seen = {}

    def fake_compile(fn, **kwargs):
        seen.update(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    FrameStep(lambda x: x, "compile", device="cpu", static_inputs=[torch.zeros(1)], compile_mode=name)
    assert seen["mode"] == torch_compile_mode(name) and seen["dynamic"] is False


def test_compiling_lifts_dynamos_recompile_limit(monkeypatch):
    """A show with more than four preset shapes must not silently drop its 5th to eager."""
    import torch._dynamo.config as dynamo_config

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    # The config module's own patch(): monkeypatch's undo would delete the setting.
    with dynamo_config.patch(recompile_limit=8):
        FrameStep(lambda x: x, "compile", device="cpu", static_inputs=[torch.zeros(1)])
        assert dynamo_config.recompile_limit == COMPILED_VARIANTS >= 2 * 8


def test_a_compile_failure_on_the_first_frame_falls_back_to_eager_for_good(tiny_parts, monkeypatch, caplog,
                                                                           tmp_path):
    """No working compiler (Triton on Windows, a C++ compiler on CPU) shows up only when the
    first frame compiles: the show goes on eagerly, with the same pictures, after one warning."""
    import numpy as np
    import torch._inductor.config as inductor_config

    def frame(seed):
        return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)

    # No compiler, and no cached kernels from earlier tests that would make one unnecessary.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    eager, compiled = make_pipeline(tiny_parts), make_pipeline(tiny_parts, backend="compile")
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}), \
                caplog.at_level("WARNING", logger="streamvj.backend"):
            got = [compiled(frame(i)).clone() for i in range(3)]
    finally:
        torch._dynamo.reset()
    error = compiled.step.compile_error
    assert error and "compiler" in error.lower()
    assert caplog.text.count("torch.compile failed") == 1
    assert compiled.backend == "eager (compile failed)"
    for i, g in enumerate(got):
        assert torch.equal(g, eager(frame(i)))


def test_a_failed_capture_runs_the_step_without_a_graph(caplog):
    def syncs(x):
        return x * float(x.sum().item())  # a host sync: not capturable

    step = FrameStep(syncs, "none", device="cpu", static_inputs=[torch.ones(2)])
    step.use_graphs(EmulatedGraphs())
    with caplog.at_level("WARNING", logger="streamvj.cuda_graphs"):
        out = step()
    torch.testing.assert_close(out, torch.full((2,), 2.0))
    assert step.status == "eager (cuda graph capture failed)" and "capture failed" in caplog.text


def test_status_says_what_runs_after_fallbacks(tiny_parts, monkeypatch):
    assert make_pipeline(tiny_parts).backend == "eager"
    graphed = make_pipeline(tiny_parts)
    graphed.step.use_graphs(EmulatedGraphs())
    assert graphed.backend == "eager"  # nothing captured yet
    graphed.warm_up()
    assert graphed.backend == "eager + cuda graphs"
    assert graphed.step.use_graphs(None) is None and graphed.backend == "eager"  # graphs off again
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    compiled = FrameStep(lambda x: x, "compile", device="cpu", static_inputs=[torch.zeros(1)])
    assert compiled.status == "compile"
    compiled.compile_error = "InvalidCxxCompiler: no compiler"
    assert compiled.status == "eager (compile failed)"
    assert FrameStep(lambda x: x, "tensorrt", device="cpu", static_inputs=[torch.zeros(1)]).status == "tensorrt"
