"""GraphedStep: CPU fallback is the same code path; CUDA capture/replay tests run only with a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.accel.cuda_graphs import CUDA_GRAPHS, GraphedStep
from engine.core.pipeline import StreamPipeline
from tests.engine.accel.graph_emulator import EmulatedGraphs
from tests.engine.core.pipelines import make_pipeline

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
SIZE = 64


class Affine:
    """A stateful step like the stream batch: reads live buffers, updates its own state in place."""

    def __init__(self, device: str = "cpu"):
        self.scale = torch.ones((), device=device)
        self.bias = torch.zeros(4, device=device)
        self.state = torch.zeros(4, device=device)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = x * self.scale + self.bias + self.state
        self.state.copy_(out * 0.5)
        return out * 2


def drive(step, model: Affine, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for i in range(6):
        if i == 2:
            model.scale.fill_(3.0)  # a live update: written into the buffer
        if i == 4:
            model.bias.copy_(torch.arange(4.0, device=x.device))
        outs.append(step(x + i).clone())
    return outs


def test_cpu_falls_back_to_calling_fn_with_the_same_results():
    eager, graphed_model = Affine(), Affine()
    x_static = torch.zeros(4)
    graphed = GraphedStep(graphed_model, [x_static])
    assert not graphed.enabled and graphed.fallback_reason == "device is cpu"
    want = drive(eager, eager, torch.ones(4))
    got = drive(graphed, graphed_model, torch.ones(4))
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)
    assert graphed_model.calls == 6  # no warm-up calls off CUDA
    torch.testing.assert_close(x_static, torch.ones(4) + 5)  # inputs were copied into the static buffer
    graphed.recapture()  # a no-op off CUDA
    assert not graphed.captured


def test_inputs_that_are_the_static_tensors_are_not_copied(monkeypatch):
    x = torch.ones(4)
    step = GraphedStep(lambda t: t * 2, [x])
    monkeypatch.setattr(torch.Tensor, "copy_", lambda *a, **k: pytest.fail("copied a static input onto itself"))
    torch.testing.assert_close(step(x), torch.full((4,), 2.0))
    torch.testing.assert_close(step(), torch.full((4,), 2.0))


def test_bad_arguments():
    with pytest.raises(ValueError):
        GraphedStep(lambda: None, [])
    with pytest.raises(ValueError):
        GraphedStep(lambda x: x, [torch.zeros(1)], warmup=0)
    step = GraphedStep(lambda x: x, [torch.zeros(2)])
    with pytest.raises(ValueError, match="shape"):
        step(torch.zeros(3))
    with pytest.raises(TypeError, match="must not be tensors"):
        step(torch.zeros(2), torch.zeros(2))
    with pytest.raises(TypeError, match="takes 2 input tensors"):
        GraphedStep(lambda x, y: x, [torch.zeros(1), torch.zeros(1)])(torch.zeros(1))


def test_mode_arguments_pass_through_on_cpu():
    x = torch.ones(3)
    step = GraphedStep(lambda t, double=False: t * (2 if double else 1), [x])
    torch.testing.assert_close(step(x, True), torch.full((3,), 2.0))
    torch.testing.assert_close(step(x, False), torch.ones(3))
    torch.testing.assert_close(step(), torch.ones(3))


def make(parts, device: str = "cpu", **kwargs) -> StreamPipeline:
    return make_pipeline(parts, device=device, **kwargs)


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8) for _ in range(n)]


def graph_pipeline(pipe: StreamPipeline, backend=None) -> GraphedStep:
    """What acceleration != none does on CUDA (here on any device, given a backend)."""
    return pipe.step.use_graphs(backend or CUDA_GRAPHS)


def test_graphed_pipeline_on_cpu_equals_eager(tiny_parts):
    inputs = frames(6)
    want = run_show(make(tiny_parts), inputs)
    pipe = make(tiny_parts)
    step = graph_pipeline(pipe)
    got = run_show(pipe, inputs)
    assert not step.captured and step.fallback_reason == "device is cpu"
    for a, b in zip(want, got):
        assert torch.equal(a, b)


# ---- capture and replay: emulated on the CPU (tests/engine/accel/graph_emulator.py), real on CUDA -----------

GRAPHS = [pytest.param("cpu", id="emulated"),
          pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, cuda])]


def backend_for(device: str):
    return EmulatedGraphs() if device == "cpu" else CUDA_GRAPHS


@pytest.mark.parametrize("device", GRAPHS)
def test_capture_replays_with_live_updates_like_eager(device):
    eager_model, graphed_model = Affine(device), Affine(device)
    graphed = GraphedStep(graphed_model, [torch.zeros(4, device=device)], warmup=2, backend=backend_for(device))
    graphed.capture()
    assert graphed.captured and graphed_model.calls == 3  # 2 warm-ups + the (recording) capture call
    graphed_model.state.zero_()  # warm-up advanced the state: reset it like the pipeline does
    x = torch.ones(4, device=device)
    want = drive(eager_model, eager_model, x)
    got = drive(graphed, graphed_model, x)
    assert graphed_model.calls == 3  # replays do not call Python
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", GRAPHS)
def test_replaced_watched_buffer_triggers_recapture(device):
    class Holder:
        bias = torch.zeros(4, device=device)

    step = GraphedStep(lambda x: x + Holder.bias, [torch.ones(4, device=device)], warmup=1,
                       watch=lambda: (Holder.bias,), backend=backend_for(device))
    torch.testing.assert_close(step(), torch.ones(4, device=device))
    Holder.bias.fill_(1.0)  # written into: the same graph sees it
    torch.testing.assert_close(step(), torch.full((4,), 2.0, device=device))
    assert step.captures == 1
    Holder.bias = torch.full((4,), 5.0, device=device)  # replaced: the old graph would read stale memory
    torch.testing.assert_close(step(), torch.full((4,), 6.0, device=device))
    assert step.captures == 2


@pytest.mark.parametrize("device", GRAPHS)
def test_one_graph_per_mode(device):
    x = torch.ones(3, device=device)
    scale = torch.full((), 3.0, device=device)
    step = GraphedStep(lambda t, double: t * scale * (2 if double else 1), [x], warmup=1, backend=backend_for(device))
    torch.testing.assert_close(step(x, True), torch.full((3,), 6.0, device=device))
    torch.testing.assert_close(step(x, False), torch.full((3,), 3.0, device=device))
    scale.fill_(5.0)
    torch.testing.assert_close(step(x, True), torch.full((3,), 10.0, device=device))
    torch.testing.assert_close(step(x, False), torch.full((3,), 5.0, device=device))
    assert step.captures == 2


@pytest.mark.parametrize("device", GRAPHS)
def test_capture_failure_falls_back_to_eager(device, caplog):
    def syncs(x):
        return x * float(x.sum().item())  # a host sync: not capturable

    step = GraphedStep(syncs, [torch.ones(2, device=device)], warmup=1, backend=backend_for(device))
    with caplog.at_level("WARNING", logger="streamvj.cuda_graphs"):
        out = step()
    assert not step.captured and "capture failed" in (step.fallback_reason or "")
    assert "capture failed" in caplog.text
    torch.testing.assert_close(out, torch.full((2,), 2.0, device=device))
    step.recapture()  # a load-time change gives capture another chance
    assert step.enabled and step.fallback_reason is None


@pytest.mark.parametrize("device", GRAPHS)
def test_preserved_state_advances_once_per_call_despite_the_warm_up(device):
    model = Affine(device)
    x = torch.ones(4, device=device)
    eager = Affine(device)
    want = [eager(x).clone() for _ in range(3)]
    step = GraphedStep(model, [x], warmup=3, preserve=lambda: (model.state,), backend=backend_for(device))
    got = [step(x).clone() for _ in range(3)]
    assert step.captured
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)


def pipeline_parts(device: str, model: str, tiny_parts):
    if device == "cpu" and model == "tiny":
        return tiny_parts
    from engine.models.load import load_model

    return load_model(model, device=device, dtype=torch.float32)


def run_show(pipe: StreamPipeline, inputs: list[np.ndarray]) -> list[torch.Tensor]:
    """Every live control a VJ has, between frames: each must reach a captured step as in eager."""
    outs = []
    for i, f in enumerate(inputs):
        if i == 2:
            pipe.set_guidance(2.5, 0.7)
        if i == 3:
            pipe.set_prompt("a different prompt")
        if i == 4:
            pipe.set_t_index_list([10, 35] if pipe.stream.n == 2 else [25])
            pipe.set_seed(9)
        if i == 5:
            pipe.fx.update({"fx_feedback": 0.4, "fx_blend": 0.3, "fx_brightness": 0.1, "fx_contrast": 1.2,
                            "fx_saturation": 0.5, "fx_hue": 30.0})  # FX on: the second graph (mode)
        if i == 6:
            pipe.fx.update({"fx_feedback": 0.1, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 1.0,
                            "fx_saturation": 1.5, "fx_hue": -90.0})
        if i == 7:
            pipe.set_seed_blend([(9, 0.5), (3, 0.5)])
            pipe.set_prompt_blend([("a different prompt", 0.3), ("neon", 0.7)], method="slerp")
        if i == 8:
            pipe.fx.update({"fx_feedback": 0.0, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 1.0,
                            "fx_saturation": 1.0, "fx_hue": 0.0})  # FX off: back to the first graph
        if i == 9:
            pipe.reset()  # re-primes from this frame: the captured graphs replay N times
        outs.append(pipe(f).clone().cpu())
    return outs


SHOWS = [
    pytest.param("tiny", "img2img", "self", [20, 40], id="self-2"),
    pytest.param("tiny", "img2img", "full", [20, 40], id="full-2"),
    pytest.param("tiny", "img2img", "initialize", [30], id="initialize-1"),
    pytest.param("tiny", "img2img", "none", [20, 40], id="none-2"),
    pytest.param("tiny", "txt2img", "full", [20, 40], id="txt2img-full"),
    pytest.param("tiny-sdxl", "img2img", "self", [20, 40], id="sdxl-self"),
]


@pytest.mark.parametrize("model,mode,cfg,t_index", SHOWS)
@pytest.mark.parametrize("device", GRAPHS)
def test_graphed_pipeline_equals_eager_through_a_show(device, model, mode, cfg, t_index, tiny_parts):
    """The whole frame step (u8 -> encode -> stream batch -> decode -> FX -> u8) captures with no host
    sync, and every live control reaches the replayed graph exactly as it reaches the eager step."""
    parts = pipeline_parts(device, model, tiny_parts)
    inputs = frames(10)
    kwargs = dict(t_index_list=t_index, cfg_type=cfg, mode=mode, negative_prompt="blurry")
    eager = make(parts, device, **kwargs)
    want = run_show(eager, inputs)
    pipe = make(parts, device, **kwargs)
    step = graph_pipeline(pipe, backend_for(device))
    got = run_show(pipe, inputs)
    assert step.fallback_reason is None, step.fallback_reason
    assert step.captures == 2  # FX off and FX on; live changes never recapture
    for i, (a, b) in enumerate(zip(want, got)):
        tolerance = 0 if device == "cpu" else 1  # CUDA kernel choice may differ by one rounding step
        assert (a.int() - b.int()).abs().max() <= tolerance, f"frame {i} differs"


@pytest.mark.parametrize("device", GRAPHS)
def test_prompt_of_another_width_recaptures(device, tiny_parts):
    parts = pipeline_parts(device, "tiny", tiny_parts)
    inputs = frames(3)
    pipe = make(parts, device)
    step = graph_pipeline(pipe, backend_for(device))
    eager = make(parts, device)
    for p in (pipe, eager):
        p(inputs[0])
    assert step.captures == 1
    hidden = pipe.stream.cond
    wider = torch.cat([hidden, hidden], dim=1)[:1]  # a text encoder with more tokens replaces the buffer
    for p in (pipe, eager):
        p.stream.set_conditioning(wider, None)
    assert pipe.stream.cond is not hidden
    a, b = pipe(inputs[1]).clone(), eager(inputs[1]).clone()
    assert step.captures == 2
    assert (a.int() - b.int()).abs().max() <= (0 if device == "cpu" else 1)


# ---- the emulator itself: it must show the failures a real graph would have --------------------------


def test_emulator_bakes_python_numbers_like_a_real_graph():
    holder = {"scale": 2.0}
    x = torch.ones(3)
    step = GraphedStep(lambda t: t * holder["scale"], [x], warmup=1, backend=EmulatedGraphs())
    torch.testing.assert_close(step(), torch.full((3,), 2.0))
    holder["scale"] = 5.0  # a Python float is a kernel argument: the graph keeps 2.0
    torch.testing.assert_close(step(), torch.full((3,), 2.0))


def test_emulator_capture_runs_nothing():
    graphs = EmulatedGraphs()
    state = torch.zeros(2)

    def fn(x):
        state.add_(x)
        return state * 1.0

    step = GraphedStep(fn, [torch.ones(2)], warmup=1, backend=graphs, preserve=lambda: (state,))
    step.capture()
    torch.testing.assert_close(state, torch.zeros(2))  # neither the warm-up nor the capture left a trace
    out = step._graphs[()].output
    assert out.abs().min() > 1e15  # the capture's own output is garbage until a replay
    torch.testing.assert_close(step(), torch.ones(2))
    torch.testing.assert_close(step(), torch.full((2,), 2.0))
    assert graphs.graphs[0].replays == 2


def test_emulator_rejects_a_branch_on_a_tensor():
    def branches(x):
        return x * 2 if x.sum() > 0 else x  # bool(tensor): a host sync

    step = GraphedStep(branches, [torch.ones(2)], warmup=1, backend=EmulatedGraphs())
    step()
    assert "capture failed" in (step.fallback_reason or "")


def test_emulator_keeps_reading_a_replaced_buffer_without_watch():
    class Holder:
        bias = torch.zeros(2)

    step = GraphedStep(lambda x: x + Holder.bias, [torch.ones(2)], warmup=1, backend=EmulatedGraphs())
    step()
    Holder.bias = torch.full((2,), 7.0)
    torch.testing.assert_close(step(), torch.ones(2))  # the stale buffer: why the pipeline watches its own
