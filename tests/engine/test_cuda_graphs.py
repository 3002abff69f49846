"""GraphedStep: CPU fallback is the same code path; CUDA capture/replay tests run only with a GPU."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.cuda_graphs import GraphedStep
from engine.pipeline import StreamPipeline, StreamSettings

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
    settings = dict(width=SIZE, height=SIZE, t_index_list=[20, 40], cfg_type="self")
    return StreamPipeline(parts, StreamSettings(**{**settings, **kwargs}), device=device, rng=random.Random(0))


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8) for _ in range(n)]


def run_pipeline(pipe: StreamPipeline, inputs: list[np.ndarray]) -> list[torch.Tensor]:
    outs = []
    for i, f in enumerate(inputs):
        if i == 2:
            pipe.set_guidance(2.5, 0.7)
        if i == 3:
            pipe.set_prompt("a different prompt")
        if i == 4:
            pipe.set_t_index_list([10, 35])
            pipe.set_seed(9)
        outs.append(pipe(f).clone().cpu())
    return outs


def graph_pipeline(pipe: StreamPipeline) -> GraphedStep:
    """What pipeline.py does for acceleration with graphs: wrap the frame step, watch the prompt buffers."""
    s = pipe.stream
    step = GraphedStep(pipe._frame_step, [pipe.input_u8, pipe.txt_noise],
                       watch=lambda: (s.cond, s.uncond, s.cond_pooled, s.uncond_pooled))
    pipe._step = step
    return step


def test_graphed_pipeline_on_cpu_equals_eager(tiny_parts):
    inputs = frames(6)
    want = run_pipeline(make(tiny_parts), inputs)
    pipe = make(tiny_parts)
    graph_pipeline(pipe)
    got = run_pipeline(pipe, inputs)
    for a, b in zip(want, got):
        assert torch.equal(a, b)


# ---- CUDA only --------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
def test_capture_replays_with_live_updates_like_eager():
    eager_model, graphed_model = Affine("cuda"), Affine("cuda")
    graphed = GraphedStep(graphed_model, [torch.zeros(4, device="cuda")], warmup=2)
    graphed.capture()
    assert graphed.captured and graphed_model.calls == 3  # 2 warm-ups + the (recording) capture call
    graphed_model.state.zero_()  # warm-up advanced the state: reset it like the pipeline does
    x = torch.ones(4, device="cuda")
    want = drive(eager_model, eager_model, x)
    got = drive(graphed, graphed_model, x)
    assert graphed_model.calls == 3  # replays do not call Python
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@cuda
def test_replaced_watched_buffer_triggers_recapture():
    class Holder:
        bias = torch.zeros(4, device="cuda")

    step = GraphedStep(lambda x: x + Holder.bias, [torch.ones(4, device="cuda")], warmup=1,
                       watch=lambda: (Holder.bias,))
    torch.testing.assert_close(step(), torch.ones(4, device="cuda"))
    Holder.bias.fill_(1.0)  # written into: the same graph sees it
    torch.testing.assert_close(step(), torch.full((4,), 2.0, device="cuda"))
    assert step.captures == 1
    Holder.bias = torch.full((4,), 5.0, device="cuda")  # replaced: the old graph would read stale memory
    torch.testing.assert_close(step(), torch.full((4,), 6.0, device="cuda"))
    assert step.captures == 2


@pytest.mark.cuda
@cuda
def test_one_graph_per_mode():
    x = torch.ones(3, device="cuda")
    scale = torch.full((), 3.0, device="cuda")
    step = GraphedStep(lambda t, double: t * scale * (2 if double else 1), [x], warmup=1)
    torch.testing.assert_close(step(x, True), torch.full((3,), 6.0, device="cuda"))
    torch.testing.assert_close(step(x, False), torch.full((3,), 3.0, device="cuda"))
    scale.fill_(5.0)
    torch.testing.assert_close(step(x, True), torch.full((3,), 10.0, device="cuda"))
    torch.testing.assert_close(step(x, False), torch.full((3,), 5.0, device="cuda"))
    assert step.captures == 2


@pytest.mark.cuda
@cuda
def test_capture_failure_falls_back_to_eager(caplog):
    def syncs(x):
        return x * float(x.sum().item())  # a host sync: not capturable

    step = GraphedStep(syncs, [torch.ones(2, device="cuda")], warmup=1)
    with caplog.at_level("WARNING", logger="streamvj.cuda_graphs"):
        out = step()
    assert not step.captured and "capture failed" in (step.fallback_reason or "")
    torch.testing.assert_close(out, torch.full((2,), 2.0, device="cuda"))


@pytest.mark.cuda
@cuda
def test_graphed_pipeline_on_cuda_equals_eager():
    from engine.models import load_model

    parts = load_model("tiny", device="cuda", dtype=torch.float32)
    inputs = frames(6)
    want = run_pipeline(make(parts, "cuda"), inputs)
    pipe = make(parts, "cuda")
    step = graph_pipeline(pipe)
    got = run_pipeline(pipe, inputs)
    assert step.captured
    for a, b in zip(want, got):
        assert (a.int() - b.int()).abs().max() <= 1  # kernel choice may differ by one rounding step


@pytest.mark.cuda
@cuda
def test_preserved_state_advances_once_per_call_despite_the_warm_up():
    model = Affine("cuda")
    x = torch.ones(4, device="cuda")
    eager = Affine("cuda")
    want = [eager(x).clone() for _ in range(3)]
    step = GraphedStep(model, [x], warmup=3, preserve=lambda: (model.state,))
    got = [step(x).clone() for _ in range(3)]
    assert step.captured
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)
