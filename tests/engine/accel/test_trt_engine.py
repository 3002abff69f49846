"""TensorRT: pure logic on CPU (library absent or faked); engines only on a GPU."""

from __future__ import annotations

import json
import logging
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

import engine.accel.trt_engine as trt_engine
from engine.accel.trt_cache import TrtCache
from engine.accel.trt_components import build_trt_components
from engine.accel.trt_engine import (
    INSTALL_HINT,
    BuildProgress,
    TensorRTUnavailable,
    TrtBuildError,
    TrtControlNet,
    TrtEngine,
    TrtUnet,
    build_engine,
    import_tensorrt,
    network_flags,
)
from engine.errors import ConfigError
from tests.engine.accel.fake_tensorrt import make_fake_trt, write_graph


def test_missing_library_is_one_line_naming_the_extra(no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as info:
        import_tensorrt()
    message = str(info.value)
    assert INSTALL_HINT in message and "\n" not in message
    assert INSTALL_HINT == "pip install 'streamvj[tensorrt]'"


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


UNET_IO = ([["sample", [2, 4, 8, 8], "float16"], ["timestep", [2], "float32"],
            ["encoder_hidden_states", [2, 77, 32], "float16"]], [["noise_pred", [2, 4, 8, 8], "float16"]])


def serialized_unet(tmp_path) -> memoryview:
    return build_engine(write_graph(tmp_path / "unet.onnx", *UNET_IO), fp16=True)


def test_build_configures_tensorrt_10_and_reports_progress(fake_trt, tmp_path, caplog):
    onnx = write_graph(tmp_path / "unet.onnx", *UNET_IO)
    with caplog.at_level(logging.INFO, logger="streamvj.trt_engine"):
        serialized = build_engine(onnx, fp16=True, workspace_bytes=1 << 30, optimization_level=2)
    assert ("parse_from_file", str(onnx)) in fake_trt.calls  # a path, so external weights are found
    assert ("create_network", 0) in fake_trt.calls           # EXPLICIT_BATCH is deprecated (ignored) in 10
    assert ("set_flag", "BuilderFlag.FP16") in fake_trt.calls
    assert json.loads(bytes(serialized))["fp16"] is True
    assert serialized.nbytes > 0
    text = caplog.text
    assert "TensorRT build: Building engine (3 steps)" in text and "Building engine done in" in text
    assert "built unet.onnx" in text


def test_build_sets_workspace_level_and_monitor_on_the_config(fake_trt, tmp_path, monkeypatch):
    configs = []
    real = fake_trt.Builder.create_builder_config

    def keep_config(builder):
        configs.append(real(builder))
        return configs[-1]

    monkeypatch.setattr(fake_trt.Builder, "create_builder_config", keep_config)
    build_engine(write_graph(tmp_path / "vae.onnx", [["latents", [1, 4, 8, 8], "float32"]],
                             [["images", [1, 3, 64, 64], "float32"]]),
                 fp16=False, workspace_bytes=2 << 30, optimization_level=5)
    (config,) = configs
    assert config.flags == []  # fp32: no FP16 flag
    assert config.pools == {fake_trt.MemoryPoolType.WORKSPACE: 2 << 30}
    assert config.builder_optimization_level == 5
    assert isinstance(config.progress_monitor, fake_trt.IProgressMonitor)


def test_build_on_tensorrt_8_6_sets_explicit_batch_and_builds_without_a_monitor(monkeypatch, tmp_path, caplog):
    trt = make_fake_trt("8.6.1.6")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "_TRT_LOGGER", None)
    with caplog.at_level(logging.INFO, logger="streamvj.trt_engine"):
        build_engine(write_graph(tmp_path / "unet.onnx", *UNET_IO), fp16=True)
    assert ("create_network", 1) in trt.calls and ("set_flag", "BuilderFlag.FP16") in trt.calls
    assert "has no progress monitor" in caplog.text


def test_build_on_tensorrt_11_is_strongly_typed(monkeypatch, tmp_path, caplog):
    trt = make_fake_trt("11.4.0.1")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "_TRT_LOGGER", None)
    inputs = [["sample", [2, 4, 8, 8], "float32"], ["timestep", [2], "float32"]]
    with caplog.at_level(logging.WARNING, logger="streamvj.trt_engine"):
        build_engine(write_graph(tmp_path / "unet.onnx", inputs, UNET_IO[1]), fp16=True)
    assert ("create_network", 2) in trt.calls            # STRONGLY_TYPED
    assert not any(c[0] == "set_flag" for c in trt.calls)  # there is no FP16 flag to set
    assert "sample is float32" in caplog.text and "timestep" not in caplog.text


def test_parse_failure_is_one_clear_build_error(fake_trt, tmp_path):
    onnx = write_graph(tmp_path / "unet.onnx", [], [], error="In node 7 (importConv): UNSUPPORTED_NODE")
    with pytest.raises(TrtBuildError, match=r"could not parse unet.onnx: In node 7 .*UNSUPPORTED_NODE; In node 2"):
        build_engine(onnx)
    assert fake_trt.build_count == 0


def test_dynamic_input_is_rejected_before_building(fake_trt, tmp_path):
    onnx = write_graph(tmp_path / "unet.onnx", [["sample", [-1, 4, 8, 8], "float16"]], UNET_IO[1])
    with pytest.raises(TrtBuildError, match=r"sample has a dynamic shape \(-1, 4, 8, 8\)"):
        build_engine(onnx)
    assert fake_trt.build_count == 0


def test_builder_returning_none_is_a_build_error_and_tensorrt_errors_are_logged(fake_trt, tmp_path, caplog):
    fake_trt.fail_build = True
    with caplog.at_level(logging.DEBUG, logger="streamvj.tensorrt"), \
            pytest.raises(TrtBuildError, match="could not build unet.onnx"):
        serialized_unet(tmp_path)
    errors = [r for r in caplog.records if r.name == "streamvj.tensorrt"]
    assert [r.levelno for r in errors] == [logging.ERROR] and "Error Code 4" in errors[0].getMessage()


def test_cancel_stops_the_build(fake_trt, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrtBuildError, match="cancelled"):
        build_engine(write_graph(tmp_path / "unet.onnx", *UNET_IO), cancel=cancel)


def test_one_logger_for_every_builder_and_runtime(fake_trt, tmp_path, fake_cuda):
    data = serialized_unet(tmp_path)
    serialized_unet(tmp_path)
    TrtEngine(data, "cuda", name="unet")
    assert len(fake_trt.loggers) == 3 and len({id(x) for x in fake_trt.loggers}) == 1


def test_engine_binds_every_tensor_once_with_engine_dtypes(fake_trt, fake_cuda, tmp_path):
    engine = TrtEngine(serialized_unet(tmp_path), "cuda", name="unet")
    assert engine.device == torch.device("cuda", 0)
    assert engine.inputs == ["sample", "timestep", "encoder_hidden_states"] and engine.outputs == ["noise_pred"]
    assert {n: b.dtype for n, b in engine.buffers.items()} == {
        "sample": torch.float16, "timestep": torch.float32, "encoder_hidden_states": torch.float16,
        "noise_pred": torch.float16}
    shapes = [c[1:] for c in fake_trt.calls if c[0] == "set_input_shape"]
    assert shapes == [("sample", (2, 4, 8, 8)), ("timestep", (2,)), ("encoder_hidden_states", (2, 77, 32))]
    addresses = {c[1]: c[2] for c in fake_trt.calls if c[0] == "set_tensor_address"}
    assert addresses == {n: b.data_ptr() for n, b in engine.buffers.items()}


def test_call_copies_only_foreign_inputs_enqueues_on_the_current_stream_and_returns_the_bound_output(
        fake_trt, fake_cuda, tmp_path, monkeypatch):
    engine = TrtEngine(serialized_unet(tmp_path), "cuda", name="unet")
    bound = len(fake_trt.calls)
    fake_trt.on_execute = lambda: engine.buffers["noise_pred"].copy_(engine.buffers["sample"] * 2)
    fake_cuda.current = fake_cuda.Stream(handle=4242)  # e.g. GraphedStep's capture stream
    copies = []
    real_copy = torch.Tensor.copy_

    def counting_copy(self, src, non_blocking=False):
        copies.append(self.data_ptr())
        return real_copy(self, src, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", counting_copy)
    sample = engine.buffers["sample"]
    sample.fill_(1.5)  # the caller wrote straight into the engine's input
    hidden = torch.randn(2, 77, 32, dtype=torch.float16)
    out = engine(sample, torch.tensor([999, 500]), hidden)
    assert out is engine.buffers["noise_pred"]
    assert torch.equal(out, torch.full((2, 4, 8, 8), 3.0, dtype=torch.float16))
    assert engine.buffers["timestep"].tolist() == [999.0, 500.0]   # int64 timesteps into the float32 input
    assert torch.equal(engine.buffers["encoder_hidden_states"], hidden)
    staged = {engine.buffers["timestep"].data_ptr(), engine.buffers["encoder_hidden_states"].data_ptr()}
    assert set(copies[:2]) == staged and sample.data_ptr() not in copies  # no copy of its own buffer
    assert fake_trt.events == [("execute_async_v3", 4242)]
    assert len(fake_trt.calls) == bound  # nothing re-bound per call
    assert engine(sample, torch.tensor([999, 500]), hidden) is out


def test_call_on_the_default_stream_runs_on_a_side_stream_ordered_by_events(fake_trt, fake_cuda, tmp_path):
    engine = TrtEngine(serialized_unet(tmp_path), "cuda", name="unet")
    args = [engine.buffers[n] for n in engine.inputs]
    engine(*args)
    engine(*args)
    (side,) = fake_cuda.Stream.created  # one side stream, made on first use
    once = [("wait", side.cuda_stream, 0), ("execute_async_v3", side.cuda_stream), ("wait", 0, side.cuda_stream)]
    assert fake_trt.events == once * 2


def test_enqueue_failure_is_a_clear_error(fake_trt, fake_cuda, tmp_path):
    engine = TrtEngine(serialized_unet(tmp_path), "cuda", name="unet")
    fake_trt.execute_ok = False
    with pytest.raises(RuntimeError, match="could not enqueue the unet engine"):
        engine(*[engine.buffers[n] for n in engine.inputs])
    with pytest.raises(TypeError, match=r"takes 3 inputs \(sample, timestep, encoder_hidden_states\), got 1"):
        engine(engine.buffers["sample"])


@pytest.mark.parametrize(("setup", "match"), [
    (lambda trt: setattr(trt, "context_none", True), "could not create an execution context for the unet"),
    (lambda trt: setattr(trt, "address_ok", False), "refused the buffer for unet.sample"),
    (lambda trt: setattr(trt, "shape_ok", False), r"refused the shape \(2, 4, 8, 8\) for unet.sample"),
])
def test_load_failures_are_build_errors(fake_trt, fake_cuda, tmp_path, setup, match):
    data = serialized_unet(tmp_path)
    setup(fake_trt)
    with pytest.raises(TrtBuildError, match=match):
        TrtEngine(data, "cuda", name="unet")


def test_foreign_plan_is_a_build_error(fake_trt, fake_cuda):
    with pytest.raises(TrtBuildError, match="could not load the vae_decoder engine"):
        TrtEngine(b"\x00plan from another TensorRT", "cuda", name="vae_decoder")


def test_engine_rejects_what_it_cannot_bind(fake_trt, fake_cuda):
    def plan(inputs, outputs):
        return json.dumps({"inputs": inputs, "outputs": outputs}).encode()

    with pytest.raises(TrtBuildError, match="dynamic shape"):
        TrtEngine(plan([["x", [-1, 4], "float32"]], [["y", [1], "float32"]]), "cuda")
    fake_trt.fp8 = "DataType.fp8"
    with pytest.raises(TrtBuildError, match="DataType.fp8, which streamvj does not bind"):
        TrtEngine(plan([["x", [1, 4], "fp8"]], [["y", [1], "float32"]]), "cuda")
    with pytest.raises(ConfigError, match="no tensors named latent"):
        TrtEngine(plan([["x", [1, 4], "float32"]], [["y", [1], "float32"]]), "cuda",
                  buffers={"latent": torch.zeros(1, 4)})
    with pytest.raises(ConfigError, match=r"buffer for engine.x must be a contiguous torch.float32 \(1, 4\)"):
        TrtEngine(plan([["x", [1, 4], "float32"]], [["y", [1], "float32"]]), "cuda", buffers={"x": torch.zeros(2, 4)})
    with pytest.raises(ConfigError, match="CUDA devices"):
        TrtEngine(plan([], []), "cpu")


def test_trt_unet_matches_engine_inputs_by_name(fake_trt, fake_cuda):
    outputs = [["noise_pred", [2, 4, 8, 8], "float32"]]
    names = [["encoder_hidden_states", [2, 77, 32], "float32"], ["sample", [2, 4, 8, 8], "float32"],
             ["timestep", [2], "float32"]]  # not the ONNX order
    engine = TrtEngine(json.dumps({"inputs": names, "outputs": outputs}).encode(), "cuda", name="unet")
    x, t, h = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 32)
    fake_trt.on_execute = lambda: engine.buffers["noise_pred"].copy_(engine.buffers["sample"])
    torch.testing.assert_close(TrtUnet(engine)(x, t, h), x)
    torch.testing.assert_close(engine.buffers["encoder_hidden_states"], h)


def engine_of(fake_trt, inputs, outputs, name):
    return TrtEngine(json.dumps({"inputs": inputs, "outputs": outputs}).encode(), "cuda", name=name)


RESIDUAL_IO = [["down_residual_1", [2, 8, 4, 4], "float32"], ["mid_residual", [2, 8, 4, 4], "float32"],
               ["down_residual_0", [2, 4, 8, 8], "float32"]]  # not the UNet's order


def test_residual_unet_engine_takes_the_controlnets_residuals_and_zeros_when_none_runs(fake_trt, fake_cuda):
    plain = [["sample", [2, 4, 8, 8], "float32"], ["timestep", [2], "float32"],
             ["encoder_hidden_states", [2, 77, 32], "float32"]]
    engine = engine_of(fake_trt, [plain[0], *RESIDUAL_IO, *plain[1:]], [["noise_pred", [2, 4, 8, 8], "float32"]],
                       "unet_residuals")
    buf = engine.buffers
    fake_trt.on_execute = lambda: buf["noise_pred"].copy_(
        buf["sample"] + buf["down_residual_0"] + buf["mid_residual"].mean() + buf["down_residual_1"].sum())
    unet = TrtUnet(engine)
    assert unet.residual_inputs == ["down_residual_0", "down_residual_1", "mid_residual"]
    x, t, h = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 32)
    down, mid = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)], torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(unet(x, t, h, residuals=(down, mid)), x + down[0] + mid.mean() + down[1].sum())
    torch.testing.assert_close(buf["mid_residual"], mid)
    pointers = {n: b.data_ptr() for n, b in buf.items()}
    for _ in range(2):  # no ControlNet this frame: the bound residual inputs zeroed in place
        torch.testing.assert_close(unet(x, t, h), x)
    assert {n: b.data_ptr() for n, b in buf.items()} == pointers
    assert all(not buf[n].any() for n in unet.residual_inputs)
    torch.testing.assert_close(unet(x, t, h, residuals=(down, mid)), x + down[0] + mid.mean() + down[1].sum())
    with pytest.raises(ValueError, match="takes 2 down residuals, got 1"):
        unet(x, t, h, residuals=(down[:1], mid))


def test_plain_unet_engine_refuses_residuals(fake_trt, fake_cuda):
    engine = engine_of(fake_trt, [["sample", [2, 4, 8, 8], "float32"], ["timestep", [2], "float32"],
                                  ["encoder_hidden_states", [2, 77, 32], "float32"]],
                       [["noise_pred", [2, 4, 8, 8], "float32"]], "unet")
    unet = TrtUnet(engine)
    assert unet.residual_inputs == []
    with pytest.raises(ValueError, match="takes no ControlNet residuals"):
        unet(torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 77, 32),
             residuals=([torch.zeros(2, 4, 8, 8)], torch.zeros(2, 8, 4, 4)))
    with pytest.raises(ConfigError, match="not a streamvj UNet engine"):  # a down residual without the mid one
        TrtUnet(engine_of(fake_trt, [["sample", [2, 4, 8, 8], "float32"], ["timestep", [2], "float32"],
                                     ["encoder_hidden_states", [2, 77, 32], "float32"],
                                     ["down_residual_0", [2, 4, 8, 8], "float32"]],
                          [["noise_pred", [2, 4, 8, 8], "float32"]], "unet"))


@pytest.mark.parametrize("sdxl", [False, True])
def test_controlnet_engine_routes_inputs_by_name_and_returns_its_residual_buffers(fake_trt, fake_cuda, sdxl):
    inputs = [["controlnet_cond", [2, 3, 64, 64], "float32"], ["sample", [2, 4, 8, 8], "float32"],
              ["encoder_hidden_states", [2, 77, 32], "float32"], ["timestep", [2], "float32"]]
    if sdxl:
        inputs = [["time_ids", [2, 6], "float32"], *inputs, ["text_embeds", [2, 32], "float32"]]
    engine = engine_of(fake_trt, inputs, RESIDUAL_IO, "controlnet_0")
    buf = engine.buffers

    def kernel():
        buf["down_residual_0"].copy_(buf["sample"])
        buf["down_residual_1"].fill_(float(buf["controlnet_cond"].mean()))
        buf["mid_residual"].fill_(float(buf["timestep"][0]) + (float(buf["time_ids"].sum()) if sdxl else 0.0))

    fake_trt.on_execute = kernel
    controlnet = TrtControlNet(engine)
    x, t, h, maps = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 32), torch.rand(2, 3, 64, 64)
    pooled, time_ids = (torch.randn(2, 32), torch.ones(2, 6)) if sdxl else (None, None)
    down, mid = controlnet(x, t, h, maps, pooled, time_ids)
    assert [d.data_ptr() for d in down] == [buf["down_residual_0"].data_ptr(), buf["down_residual_1"].data_ptr()]
    torch.testing.assert_close(down[0], x)
    torch.testing.assert_close(down[1], torch.full((2, 8, 4, 4), float(maps.mean())))
    assert float(mid[0, 0, 0, 0]) == 999 + (12 if sdxl else 0)
    torch.testing.assert_close(buf["encoder_hidden_states"], h)
    if sdxl:
        torch.testing.assert_close(buf["text_embeds"], pooled)
        with pytest.raises(ValueError, match="pooled"):
            controlnet(x, t, h, maps, None, None)


def test_what_is_not_a_controlnet_engine_is_refused(fake_trt, fake_cuda):
    unet_io = [["sample", [2, 4, 8, 8], "float32"], ["timestep", [2], "float32"],
               ["encoder_hidden_states", [2, 77, 32], "float32"]]
    with pytest.raises(ConfigError, match="not a streamvj ControlNet engine"):  # no control map
        TrtControlNet(engine_of(fake_trt, unet_io, RESIDUAL_IO, "controlnet_0"))
    with pytest.raises(ConfigError, match="not a streamvj ControlNet engine"):  # no residuals out
        TrtControlNet(engine_of(fake_trt, [*unet_io, ["controlnet_cond", [2, 3, 64, 64], "float32"]],
                                [["noise_pred", [2, 4, 8, 8], "float32"]], "controlnet_0"))


# ---- GPU + TensorRT only ------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def gpu_engines(tmp_path_factory):
    pytest.importorskip("tensorrt")
    from engine.models.load import load_model

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
    with caplog.at_level(logging.INFO, logger="streamvj.trt_components"):
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
    from engine.accel.cuda_graphs import GraphedStep

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


@pytest.mark.cuda
@needs_gpu
def test_trt_controlnet_and_residual_unet_match_pytorch(tmp_path):
    pytest.importorskip("tensorrt")
    from engine.accel.backend import torch_calls
    from engine.models.controlnet import build_random_controlnet
    from engine.models.load import load_model

    parts = load_model("tiny", device="cuda", dtype=torch.float32)
    controlnet = build_random_controlnet(parts.unet).to("cuda")
    components = build_trt_components(parts, width=64, height=64, unet_batch=2, frame_buffer_size=1, device="cuda",
                                      dtype=torch.float32, cache=TrtCache(tmp_path), controlnets=[controlnet])
    eager = torch_calls(parts, "none", [controlnet])
    x, t = torch.randn(2, 4, 8, 8, device="cuda"), torch.tensor([999, 400], device="cuda")
    h, maps = torch.randn(2, 77, 32, device="cuda"), torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        down, mid = components.controlnets[0](x, t, h, maps, None, None)
        want_down, want_mid = eager.controlnets[0](x, t, h, maps, None, None)
        for got, want in zip([*down, mid], [*want_down, want_mid], strict=True):
            torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
        residuals = ([d.clone() for d in down], mid.clone())
        torch.testing.assert_close(components.unet(x, t, h, None, None, residuals=residuals),
                                   eager.unet(x, t, h, None, None, residuals=residuals), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(components.unet(x, t, h), eager.unet(x, t, h, None, None), atol=1e-2, rtol=1e-2)
