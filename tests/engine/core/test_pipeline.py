from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.pipeline import StreamPipeline
from engine.errors import FrameError
from tests.engine.core.pipelines import SIZE, make_pipeline


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)


def make(parts, **kwargs) -> StreamPipeline:
    return make_pipeline(parts, **kwargs)


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((SIZE * 2, SIZE, 4), np.uint8), "this pipeline takes"),
    (np.zeros((SIZE, SIZE, 3), np.uint8), "this pipeline takes"),
    (np.zeros((SIZE, SIZE, 4), np.float32), "uint8"),
    (torch.zeros(SIZE, SIZE, 4), "uint8"),
    ([[0, 0, 0, 0]], "numpy array or torch tensor"),
])
def test_bad_frames_raise_frame_errors(tiny_parts, bad, message):
    pipe = make(tiny_parts)
    with pytest.raises(FrameError, match=message):
        pipe(bad)
    assert pipe(frame(0)).shape == (SIZE, SIZE, 4)  # still usable afterwards


def test_output_is_rgba_u8_with_opaque_alpha(tiny_parts):
    out = make(tiny_parts)(frame(1))
    assert out.dtype == torch.uint8 and out.shape == (SIZE, SIZE, 4)
    assert bool((out[..., 3] == 255).all())


def test_reset_reprimes_instead_of_showing_the_empty_buffer(tiny_parts):
    pipe = make(tiny_parts, t_index_list=[10, 25, 40])
    first = pipe(frame(2)).clone()
    pipe(frame(3))
    pipe.reset()
    assert not pipe.primed
    calls = pipe.counters.unet_calls
    assert torch.equal(pipe(frame(2)), first)  # frame 2 again fills every slot: the same finished image
    assert pipe.counters.unet_calls == calls + 3 and pipe.primed


def test_first_outputs_are_finished_frames_not_the_empty_buffer(tiny_parts):
    pipe = make(tiny_parts, t_index_list=[10, 25, 40])
    first = pipe(frame(2)).clone()
    steady = [pipe(frame(2)).clone() for _ in range(3)][-1]
    assert torch.equal(first, steady)  # the first output is already frame 0, fully denoised
    with torch.no_grad():
        empty = pipe.decode(torch.zeros(1, 4, SIZE // 8, SIZE // 8))
    brown = ((empty.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    assert not torch.equal(first[..., :3], brown)


def test_prompt_change_encodes_only_new_text_and_applies_next_frame(tiny_parts):
    pipe = make(tiny_parts, prompt="red", negative_prompt="")
    calls = pipe.prompts.encode_calls
    a = pipe(frame(3)).clone()
    pipe.set_prompt("blue")
    b = pipe(frame(3)).clone()
    assert pipe.prompts.encode_calls == calls + 1
    assert not torch.equal(a, b)
    pipe.set_prompt("red")
    assert pipe.prompts.encode_calls == calls + 1  # cached
    assert pipe.primed  # no re-prepare, so no grey frame


def test_prompt_blend_weights_move_between_prompts(tiny_parts):
    pipe = make(tiny_parts)
    red, blue = pipe.prompts.encode("red"), pipe.prompts.encode("blue")
    pipe.set_prompt_blend([("red", 1.0), ("blue", 0.0)], "slerp")
    torch.testing.assert_close(pipe.stream.cond[0:1], red.hidden)
    pipe.set_prompt_blend([("red", 1.0), ("blue", 1.0)], "linear")
    torch.testing.assert_close(pipe.stream.cond[0:1], (red.hidden + blue.hidden) / 2)


def test_seed_controls_the_output(tiny_parts):
    a = make(tiny_parts, seed=1)(frame(4)).clone()
    b = make(tiny_parts, seed=1)(frame(4)).clone()
    c = make(tiny_parts, seed=2)(frame(4)).clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_similarity_filter_skips_the_unet_on_static_input(tiny_parts):
    pipe = make(tiny_parts, similarity_enabled=True, similarity_threshold=0.5, similarity_max_skip=4)
    first = pipe(frame(5)).clone()
    calls = pipe.counters.unet_calls
    outs = [pipe(frame(5)).clone() for _ in range(4)]
    assert pipe.counters.unet_calls == calls  # four skips, no UNet call
    assert all(torch.equal(o, first) for o in outs)
    pipe(frame(5))
    assert pipe.counters.unet_calls == calls + 1  # max_skip reached: forced refresh
    assert pipe.counters.skipped == 4 and pipe.counters.frames_in == 6


def test_txt2img_needs_no_input_and_moves(tiny_parts):
    pipe = make(tiny_parts, mode="txt2img", cfg_type="none")
    a, b, c = pipe().clone(), pipe().clone(), pipe().clone()
    assert torch.equal(a, b)  # latency N-1 = 1: call 1 still shows the primed first frame
    assert a.shape == (SIZE, SIZE, 4) and not torch.equal(b, c)  # fresh noise every frame
    again = make(tiny_parts, mode="txt2img", cfg_type="none")
    assert torch.equal(again(), a)  # seeded


def test_frame_buffer_size_two_takes_and_returns_frame_pairs(tiny_parts):
    pipe = make(tiny_parts, frame_buffer_size=2)
    out = pipe(np.stack([frame(6), frame(7)]))
    assert out.shape == (2, SIZE, SIZE, 4)
    with pytest.raises(FrameError, match="x 2 frames"):
        pipe(frame(6))


def test_sdxl_shaped_model_runs_every_cfg(tiny_sdxl_parts):
    for cfg in ("none", "self", "full", "initialize"):
        out = make(tiny_sdxl_parts, cfg_type=cfg, negative_prompt="")(frame(8))
        assert out.shape == (SIZE, SIZE, 4)


@pytest.mark.compile
def test_compiled_step_matches_eager_including_live_updates(tiny_parts):
    eager, compiled = make(tiny_parts), make(tiny_parts, backend="compile")

    def drive(pipe):
        outs = [pipe(frame(10)).clone(), pipe(frame(11)).clone()]
        pipe.set_guidance(2.0, 0.5)
        pipe.set_prompt("a different prompt")
        pipe.set_t_index_list([15, 35])
        pipe.set_seed(9)
        outs += [pipe(frame(12)).clone(), pipe(frame(13)).clone()]
        return outs

    from torch._dynamo.utils import counters

    expected = drive(eager)
    graphs_before = counters["stats"]["unique_graphs"]
    got = drive(compiled)
    assert compiled.step.compile_error is None
    assert counters["stats"]["unique_graphs"] - graphs_before == 1  # live updates never recompile
    for e, g in zip(expected, got, strict=True):
        assert (e.int() - g.int()).abs().max() <= 1  # inductor may reorder float sums: at most 1 LSB
    assert not torch.equal(expected[1], expected[3])  # the live updates did change the image


def test_neutral_fx_leave_the_output_bit_identical(tiny_parts):
    plain, graded = make(tiny_parts), make(tiny_parts)
    graded.fx.update({"fx_feedback": 0.0, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 1.0,
                      "fx_saturation": 1.0, "fx_hue": 0.0})
    for i in range(3):
        assert torch.equal(plain(frame(20 + i)), graded(frame(20 + i)))


def test_fx_grade_and_feedback_apply_on_the_next_frame(tiny_parts):
    pipe = make(tiny_parts)
    before = pipe(frame(30)).clone()
    neutral = {"fx_feedback": 0.0, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 1.0,
               "fx_saturation": 1.0, "fx_hue": 0.0}
    pipe.fx.update({**neutral, "fx_saturation": 0.0})
    grey = pipe(frame(31)).int()
    assert (grey[..., 0] - grey[..., 1]).abs().max() <= 1 and (grey[..., 1] - grey[..., 2]).abs().max() <= 1
    pipe.fx.update({**neutral, "fx_blend": 1.0})  # full temporal blend: holds the last shown frame
    held = pipe(frame(32))
    assert torch.equal(held[..., :3].int(), grey[..., :3])
    assert not torch.equal(before, held)


def test_fit_input_takes_any_size_and_fits_it_like_the_host_fit(tiny_parts):
    from engine.core.fit import fit_rgba_u8

    fitted, plain = make(tiny_parts, fit_input=True), make(tiny_parts)
    big = np.random.default_rng(40).integers(0, 256, (120, 200, 4), dtype=np.uint8)
    out = fitted(big)
    assert out.shape == (SIZE, SIZE, 4)
    assert torch.equal(fitted.input_u8[0], torch.from_numpy(fit_rgba_u8(big, SIZE, SIZE)))
    assert torch.equal(out, plain(fit_rgba_u8(big, SIZE, SIZE)))
    assert fitted(frame(41)).shape == (SIZE, SIZE, 4)  # and the model's own size still passes straight
    with pytest.raises(FrameError, match="this pipeline takes"):
        fitted(np.zeros((SIZE, SIZE, 3), np.uint8))


def test_seed_blend_reuses_each_seeds_noise_and_hits_its_endpoints(tiny_parts):
    pipe = make(tiny_parts)
    pipe.set_seed(11)
    only_11 = pipe.stream.noise.clone()
    for w in (0.0, 0.3, 0.7, 1.0):
        pipe.set_seed_blend([(11, 1.0 - w), (12, w)])
    cached = dict(pipe.seeds.cache)
    pipe.set_seed_blend([(11, 1.0), (12, 0.0)])
    torch.testing.assert_close(pipe.stream.noise, only_11)
    assert all(pipe.seeds.cache[k] is v for k, v in cached.items())  # drawn once, reused


def test_outputs_alternate_between_two_buffers_so_a_download_can_overlap_the_next_frame(tiny_parts):
    pipe = make(tiny_parts, similarity_enabled=True, similarity_threshold=0.5, similarity_max_skip=100)
    first = pipe(frame(1))
    kept = first.clone()
    second = pipe(frame(2))
    assert second.data_ptr() != first.data_ptr()
    assert torch.equal(first, kept)  # the next frame did not touch the buffer a reader may still hold
    assert bool((second[..., 3] == 255).all())
    third = pipe(frame(3))
    assert third.data_ptr() == first.data_ptr()  # the ring comes round
    skipped = pipe(frame(3))  # the similarity filter repeats the last result: the same buffer
    assert pipe.counters.skipped == 1 and skipped.data_ptr() == third.data_ptr()
    # A reader on another stream registers its event per buffer; foreign tensors are refused.
    assert pipe.output_read(third, "event") and pipe._output_read[pipe._out_index] == "event"
    assert pipe.output_read(pipe.output_u8, "whole") and not pipe.output_read(third.clone(), "other")
    pipe.set_similarity(False, 0.5, 100)  # every call renders from here
    pipe(frame(4))
    pipe(frame(5))  # rewrites the registered buffer: on a CPU there is no stream to order, the reader is dropped
    assert pipe._output_read == [None, None]


FX_ON = {"fx_feedback": 0.3, "fx_blend": 0.2, "fx_brightness": 0.1, "fx_contrast": 1.1, "fx_saturation": 0.8,
         "fx_hue": 20.0}
FX_OFF = {"fx_feedback": 0.0, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 1.0, "fx_saturation": 1.0,
          "fx_hue": 0.0}


def play(pipe: StreamPipeline) -> list[torch.Tensor]:
    outs = []
    for i in range(5):
        if i == 2:
            pipe.fx.update(FX_ON)
        if i == 4:
            pipe.fx.update(FX_OFF)
        outs.append(pipe(frame(20 + i)).clone())
    return outs


def test_warm_up_leaves_no_trace(tiny_parts):
    """Warm-up runs the real frame step (priming, FX off and on), then forgets every frame of it."""
    warmed = make(tiny_parts, similarity_enabled=True, similarity_threshold=0.99)
    run, fx_modes = warmed.step.run, []
    warmed.step.run = lambda *args: (fx_modes.append(args[2]), run(*args))[1]
    warmed.warm_up()
    warmed.step.run = run
    assert fx_modes == [False, False, True]  # N=2 priming runs without FX, one with FX
    assert warmed.counters.unet_calls == 0 and not warmed.primed  # no frames in flight
    assert warmed.counters.frames_in == warmed.counters.frames_out == 0
    assert not bool(warmed.fx_last.any())  # no FX history
    fresh = make(tiny_parts, similarity_enabled=True, similarity_threshold=0.99)
    for a, b in zip(play(fresh), play(warmed), strict=True):
        assert torch.equal(a, b)


def test_warm_up_compiles_both_fx_variants_before_the_show(tiny_parts):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs compiled by earlier tests for this shape would be reused
    pipe = make(tiny_parts, backend="compile")
    before = counters["stats"]["unique_graphs"]
    pipe.warm_up()
    compiled = counters["stats"]["unique_graphs"] - before
    assert pipe.step.compile_error is None and compiled >= 2  # at least FX off and FX on
    play(pipe)
    assert counters["stats"]["unique_graphs"] - before == compiled  # nothing compiles on air


def test_warm_up_captures_both_fx_graphs_before_the_show(tiny_parts):
    from tests.engine.accel.graph_emulator import EmulatedGraphs

    warmed = make(tiny_parts)
    step = warmed.step.use_graphs(EmulatedGraphs())
    warmed.warm_up()
    assert step.captures == 2
    fresh = make(tiny_parts)
    for a, b in zip(play(fresh), play(warmed), strict=True):
        assert torch.equal(a, b)
    assert step.captures == 2  # no capture on the render thread


def test_fp16_pipeline_stays_finite_and_close_to_fp32():
    """CUDA runs fp16 by default: the whole frame step (RCFG division by beta included) must
    neither overflow nor drift. Checked here on the CPU's fp16 kernels at a tiny size."""
    from engine.models.load import load_model

    half = load_model("tiny", dtype=torch.float16)
    full = load_model("tiny", dtype=torch.float32)
    p16 = make_pipeline(half, dtype=torch.float16)
    p32 = make_pipeline(full)
    for i in range(3):
        a, b = p16(frame(30 + i)), p32(frame(30 + i))
        assert bool(torch.isfinite(p16.stream.x_buf).all())
        assert (a.int() - b.int()).abs().max() <= 4
