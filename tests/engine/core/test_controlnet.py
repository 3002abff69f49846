"""ControlNets in the stream batch: each slot is guided by the map of the frame it holds, so the
batch equals running each frame's N steps one after another with its own maps; scale 0 (or a
slot outside the guidance window) equals no ControlNet, bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.accel.backend import torch_calls
from engine.config.scalars import CFG_TYPES
from engine.core.controlnet import ControlBatch, keep_per_slot
from engine.core.schedule import slot_coefficients
from engine.core.stream import StreamBatch
from engine.models.controlnet import build_random_controlnet
from engine.models.load import load_model
from engine.models.tiny import TINY_SCHEDULER_CONFIG
from tests.engine.core.test_stream import DELTA, GUIDANCE, LATENT, sequential_reference

MAP = (3, LATENT[1] * 8, LATENT[2] * 8)
SCALES = (0.7, 1.3)
WINDOWS = ((0.0, 1.0), (0.0, 0.5))  # the second acts on the first half of the steps only

@pytest.fixture(scope="module")
def random_parts():
    """The random-weight tiny model (its UNet is what these ControlNets are shaped after)."""
    return load_model("tiny-random")



@pytest.fixture(scope="module")
def controlnets(random_parts):
    return [build_random_controlnet(random_parts.unet, seed=k) for k in range(2)]


@pytest.fixture(scope="module")
def sdxl_controlnets(tiny_sdxl_parts):
    return [build_random_controlnet(tiny_sdxl_parts.unet, seed=k) for k in range(2)]


def make_stream(parts, controlnets, t_index_list, f, cfg, txt2img=False, sdxl=False, scales=SCALES):
    calls = torch_calls(parts, "none", controlnets)
    control = ControlBatch(calls.controlnets, WINDOWS[:len(controlnets)], len(t_index_list), f, MAP)
    for k, scale in enumerate(scales[:len(controlnets)]):
        control.set_scale(k, scale)
    stream = StreamBatch(calls.unet, TINY_SCHEDULER_CONFIG, t_index_list, LATENT, frame_buffer_size=f, cfg_type=cfg,
                         txt2img=txt2img, pooled=sdxl, time_ids=(64.0, 64, 0, 0, 64, 64) if sdxl else None,
                         control=control)
    return stream, calls


def guided_unet(calls, t_index_list, maps, scales):
    """The plain UNet call plus the ControlNets' residuals for one frame's maps at step i (found from t)."""
    timesteps = slot_coefficients(t_index_list, TINY_SCHEDULER_CONFIG).timesteps.tolist()
    n = len(t_index_list)

    def unet_fn(x, t, hidden, pooled, time_ids):
        i = timesteps.index(int(t[0]))
        down = mid = None
        for k, (cn, window) in enumerate(zip(calls.controlnets, WINDOWS)):
            scale = scales[k] * keep_per_slot(n, *window)[i]
            d, m = cn(x, t, hidden, maps[k], pooled, time_ids)
            d, m = [r * scale for r in d], m * scale
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return calls.unet(x, t, hidden, pooled, time_ids, residuals=(down, mid))

    return unet_fn


def run_equivalence(parts, controlnets, n, f, cfg, txt2img=False, sdxl=False):
    torch.manual_seed(n * 100 + f * 10 + CFG_TYPES.index(cfg))
    t_index_list = [0, 16, 32, 45][-n:]
    width = parts.unet.config.cross_attention_dim
    cond_h, uncond_h = torch.randn(1, 77, width), torch.randn(1, 77, width)
    cond_p, uncond_p = (torch.randn(1, 32), torch.randn(1, 32)) if sdxl else (None, None)
    time_ids = torch.tensor([64.0, 64, 0, 0, 64, 64]) if sdxl else None
    stream, calls = make_stream(parts, controlnets, t_index_list, f, cfg, txt2img, sdxl)
    noise = torch.randn(n * f, *LATENT)
    stream.set_noise(noise)
    stream.set_conditioning(cond_h, uncond_h, cond_p, uncond_p)
    stream.set_guidance(GUIDANCE, DELTA)
    count = n + 2
    frames = torch.randn(count, f, *LATENT)
    maps = torch.rand(len(controlnets), count, f, *MAP)  # every frame its own map, per ControlNet
    with torch.no_grad():
        outputs = []
        for k in range(count):
            for _ in range(n if k == 0 else 1):  # priming: every slot holds the first frame (and its maps)
                out = stream.step(frames[k], {c: maps[c, k] for c in range(len(controlnets))})
            outputs.append(out.clone())
        for k, out in enumerate(outputs):
            source = max(0, k - (n - 1))
            for j in range(f):
                unet_fn = guided_unet(calls, t_index_list, [maps[c, source, j:j + 1] for c in range(len(controlnets))],
                                      SCALES)
                rows = [noise[i * f + j:i * f + j + 1] for i in range(n)]
                expected = sequential_reference(unet_fn, TINY_SCHEDULER_CONFIG, t_index_list, frames[source, j:j + 1],
                                                rows, (cond_h, cond_p), (uncond_h, uncond_p), cfg, txt2img,
                                                time_ids=time_ids)
                scale = float(expected.abs().max())
                torch.testing.assert_close(out[j:j + 1], expected, atol=2e-6 * scale, rtol=1e-5,
                                           msg=f"call {k} frame {j} (N={n} F={f} cfg={cfg})")


@pytest.mark.parametrize("cfg", CFG_TYPES)
@pytest.mark.parametrize("f", [1, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_stream_batch_with_controlnets_equals_sequential_steps_with_each_frames_maps(random_parts, controlnets,
                                                                                    n, f, cfg):
    run_equivalence(random_parts, controlnets, n, f, cfg)


def test_txt2img_with_controlnets_equals_sequential(random_parts, controlnets):
    run_equivalence(random_parts, controlnets, 3, 2, "full", txt2img=True)


@pytest.mark.parametrize("cfg", ["self", "full"])
def test_sdxl_controlnets_get_pooled_embeddings_and_time_ids(tiny_sdxl_parts, sdxl_controlnets, cfg):
    run_equivalence(tiny_sdxl_parts, sdxl_controlnets, 2, 2, cfg, sdxl=True)


def _outputs(stream, frames, maps):
    with torch.no_grad():
        return [stream.step(frames[k], None if maps is None else {0: maps[k]}).clone() for k in range(len(frames))]


@pytest.mark.parametrize("cfg", CFG_TYPES)
def test_scale_zero_equals_no_controlnet_bit_for_bit(random_parts, controlnets, cfg):
    torch.manual_seed(5)
    cond, uncond, noise = torch.randn(1, 77, 32), torch.randn(1, 77, 32), torch.randn(3, *LATENT)
    frames, maps = torch.randn(4, 1, *LATENT), torch.rand(4, 1, *MAP)

    def outputs(scale, with_maps):
        stream, _ = make_stream(random_parts, controlnets[:1], [10, 30, 45], 1, cfg, scales=(scale,))
        stream.set_noise(noise)
        stream.set_conditioning(cond, uncond)
        stream.set_guidance(GUIDANCE, DELTA)
        return _outputs(stream, frames, maps if with_maps else None)

    plain = outputs(1.0, with_maps=False)  # the ControlNet is not run at all
    for zero, reference in zip(outputs(0.0, with_maps=True), plain, strict=True):
        assert torch.equal(zero, reference)
    guided = outputs(1.0, with_maps=True)
    assert not torch.equal(guided[-1], plain[-1])  # the ControlNet does act (the test can fail)


def test_live_scale_copies_into_the_row_buffer_and_the_window_zeroes_slots(random_parts, controlnets):
    stream, _ = make_stream(random_parts, controlnets, [10, 20, 30, 45], 2, "self")
    scale_rows = stream.control.scale_rows
    before = [row.data_ptr() for row in scale_rows]
    stream.control.set_scale(1, 2.5)
    assert [row.data_ptr() for row in scale_rows] == before  # same storage: compiled / captured steps see it
    assert scale_rows[1].flatten().tolist() == [2.5, 2.5, 2.5, 2.5, 0.0, 0.0, 0.0, 0.0]  # window (0, 0.5) of 4
    assert scale_rows[0].flatten().tolist() == [0.7] * 8 or torch.allclose(scale_rows[0], torch.tensor(0.7))


def test_maps_travel_with_their_frames(random_parts, controlnets):
    stream, _ = make_stream(random_parts, controlnets[:1], [10, 30, 45], 1, "self")
    stream.set_conditioning(torch.randn(1, 77, 32), None)
    maps = [torch.full((1, *MAP), float(k) / 10) for k in range(5)]
    with torch.no_grad():
        for k in range(5):
            stream.step(torch.randn(1, *LATENT), {0: maps[k]})
            held = stream.control.map_buf[0][:, 0, 0, 0].tolist()  # slots 1 and 2 after the call
            assert held == pytest.approx([k / 10, max(k - 1, 0) / 10])


@pytest.mark.parametrize(("n", "window", "keep"), [
    (4, (0.0, 1.0), [1, 1, 1, 1]),
    (4, (0.0, 0.5), [1, 1, 0, 0]),
    (4, (0.25, 1.0), [0, 1, 1, 1]),
    (2, (0.0, 0.6), [1, 0]),
    (1, (0.0, 0.5), [0]),
])
def test_guidance_window_follows_diffusers_rule(n, window, keep):
    assert keep_per_slot(n, *window) == keep
