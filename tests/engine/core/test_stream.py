"""The stream batch must compute exactly what running each frame's N steps in sequence computes.

Its owner primes an empty batch by running N steps on the first frame (engine/core/pipeline.py);
the tests here do the same with `step` directly."""

from __future__ import annotations

import pytest
import torch

from engine.config.scalars import CFG_TYPES
from engine.core.schedule import slot_coefficients
from engine.core.stream import StreamBatch
from engine.errors import ConfigError
from engine.models.load import load_model
from engine.models.tiny import TINY_SCHEDULER_CONFIG

LATENT = (4, 8, 8)
GUIDANCE, DELTA = 1.6, 0.8


@pytest.fixture(scope="module")
def tiny_parts():
    """The random tiny model (these tests feed it 32-wide random prompt embeddings, its shape);
    it replaces the session's trained `tiny` here."""
    return load_model("tiny-random")


def make_unet_fn(unet):
    def unet_fn(x, t, hidden, pooled, time_ids):
        added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
        return unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
    return unet_fn


def sequential_reference(unet_fn, scheduler_config, t_index_list, z, noise_rows, cond, uncond, cfg, txt2img,
                         pooled=None, time_ids=None):
    """The textbook loop for one frame: N UNet steps one after another (the oracle)."""
    c = slot_coefficients(t_index_list, scheduler_config)
    v_pred = scheduler_config.get("prediction_type") == "v_prediction"

    def coef(values, i):
        return float(values[i])

    def run(x, i, hidden, pool):
        t = c.timesteps[i:i + 1]
        ids = None if time_ids is None else time_ids[None]
        out = unet_fn(x, t, hidden, pool, ids)
        return coef(c.alpha, i) * out + coef(c.beta, i) * x if v_pred else out

    cond_h, cond_p = cond
    uncond_h, uncond_p = uncond
    x = z if txt2img else coef(c.alpha, 0) * z + coef(c.beta, 0) * noise_rows[0]
    anchor = z
    for i in range(len(t_index_list)):
        a, b = coef(c.alpha, i), coef(c.beta, i)
        eps_c = run(x, i, cond_h, cond_p)
        if cfg == "full":
            eps_u = run(x, i, uncond_h, uncond_p)
        if cfg == "initialize" and i == 0:
            anchor = (x - b * run(x, 0, uncond_h, uncond_p)) / a
        if cfg in ("self", "initialize"):
            eps_u = DELTA * (x - a * anchor) / b
        eps = eps_c if cfg == "none" else eps_u + GUIDANCE * (eps_c - eps_u)
        x0 = coef(c.c_out, i) * (x - b * eps) / a + coef(c.c_skip, i) * x
        if i + 1 < len(t_index_list):
            x = coef(c.alpha, i + 1) * x0 + coef(c.beta, i + 1) * noise_rows[i + 1]
    return x0


def run_equivalence(unet, n, f, cfg, txt2img=False, scheduler=TINY_SCHEDULER_CONFIG, sdxl=False):
    torch.manual_seed(n * 100 + f * 10 + CFG_TYPES.index(cfg))
    t_index_list = [0, 16, 32, 45][-n:] if n < 4 else [0, 16, 32, 45]
    width = unet.config.cross_attention_dim
    cond_h, uncond_h = torch.randn(1, 77, width), torch.randn(1, 77, width)
    cond_p, uncond_p = (torch.randn(1, 32), torch.randn(1, 32)) if sdxl else (None, None)
    time_ids = torch.tensor([64.0, 64, 0, 0, 64, 64]) if sdxl else None
    unet_fn = make_unet_fn(unet)
    stream = StreamBatch(unet_fn, scheduler, t_index_list, LATENT, frame_buffer_size=f, cfg_type=cfg,
                         txt2img=txt2img, pooled=sdxl, time_ids=None if time_ids is None else tuple(time_ids.tolist()))
    noise = torch.randn(n * f, *LATENT)
    stream.set_noise(noise)
    stream.set_conditioning(cond_h, uncond_h, cond_p, uncond_p)
    stream.set_guidance(GUIDANCE, DELTA)
    calls = n + 2
    frames = torch.randn(calls, f, *LATENT)
    with torch.no_grad():
        outputs = []
        for k in range(calls):
            for _ in range(n if k == 0 else 1):  # priming: every slot holds the first frame
                out = stream.step(frames[k])
            outputs.append(out.clone())
        for k, out in enumerate(outputs):
            source = max(0, k - (n - 1))  # latency N-1; the first outputs are the primed first frame
            for j in range(f):
                rows = [noise[i * f + j:i * f + j + 1] for i in range(n)]
                expected = sequential_reference(unet_fn, scheduler, t_index_list, frames[source, j:j + 1], rows,
                                                (cond_h, cond_p), (uncond_h, uncond_p), cfg, txt2img,
                                                time_ids=time_ids)
                # Random tiny weights push latents to ~1e2 at t=999; float32 rounding scales with them.
                scale = float(expected.abs().max())
                torch.testing.assert_close(out[j:j + 1], expected, atol=2e-6 * scale, rtol=1e-5,
                                           msg=f"call {k} frame {j} (N={n} F={f} cfg={cfg})")


@pytest.mark.parametrize("cfg", CFG_TYPES)
@pytest.mark.parametrize("f", [1, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_stream_batch_equals_sequential_steps(tiny_parts, n, f, cfg):
    run_equivalence(tiny_parts.unet, n, f, cfg)


@pytest.mark.parametrize("cfg", ["none", "full", "initialize"])
def test_txt2img_stream_equals_sequential(tiny_parts, cfg):
    run_equivalence(tiny_parts.unet, 3, 2, cfg, txt2img=True)


def test_v_prediction_models_convert_to_eps(tiny_parts):
    run_equivalence(tiny_parts.unet, 2, 2, "self", scheduler={**TINY_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})


@pytest.mark.parametrize("cfg", ["self", "full"])
def test_sdxl_shaped_unet_gets_pooled_embeddings_and_time_ids(tiny_sdxl_parts, cfg):
    run_equivalence(tiny_sdxl_parts.unet, 2, 2, cfg, sdxl=True)


def test_full_cfg_is_the_classic_formula_with_two_unet_calls(tiny_parts):
    unet_fn = make_unet_fn(tiny_parts.unet)
    stream = StreamBatch(unet_fn, TINY_SCHEDULER_CONFIG, [35], LATENT, cfg_type="full")
    cond, uncond = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    noise = torch.randn(1, *LATENT)
    stream.set_noise(noise)
    stream.set_conditioning(cond, uncond)
    stream.set_guidance(3.0, 1.0)
    z = torch.randn(1, *LATENT)
    c = slot_coefficients([35], TINY_SCHEDULER_CONFIG)
    a, b, c_out, c_skip = (float(v[0]) for v in (c.alpha, c.beta, c.c_out, c.c_skip))
    with torch.no_grad():
        out = stream.step(z)
        x = a * z + b * noise
        eps_u = unet_fn(x, c.timesteps, uncond, None, None)
        eps_c = unet_fn(x, c.timesteps, cond, None, None)
    eps = eps_u + 3.0 * (eps_c - eps_u)
    torch.testing.assert_close(out, c_out * (x - b * eps) / a + c_skip * x, atol=1e-5, rtol=1e-5)


def test_unet_batch_sizes_follow_the_cfg_type(tiny_parts):
    sizes = {cfg: StreamBatch(make_unet_fn(tiny_parts.unet), TINY_SCHEDULER_CONFIG, [16, 32, 45], LATENT,
                              frame_buffer_size=2, cfg_type=cfg).unet_batch_size() for cfg in CFG_TYPES}
    assert sizes == {"none": 6, "self": 6, "initialize": 8, "full": 12}


def test_live_t_index_change_keeps_the_step_count(tiny_parts):
    stream = StreamBatch(make_unet_fn(tiny_parts.unet), TINY_SCHEDULER_CONFIG, [32, 45], LATENT)
    stream.set_t_index_list([20, 40])
    assert stream.timesteps.tolist() == [599, 199]
    with pytest.raises(ConfigError, match="needs a rebuild"):
        stream.set_t_index_list([10, 20, 30])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"t_index_list": []}, "empty"),
    ({"t_index_list": [50]}, "out of range"),
    ({"t_index_list": [-1]}, "out of range"),
    ({"t_index_list": [30, 20]}, "strictly increasing"),
    ({"t_index_list": [1.5]}, "integers"),
    ({"frame_buffer_size": 0}, "frame_buffer_size"),
    ({"txt2img": True, "cfg_type": "self"}, "needs an input image"),
])
def test_bad_settings_raise_specific_errors(tiny_parts, kwargs, message):
    args = {"t_index_list": [32, 45], **kwargs}
    with pytest.raises(ConfigError, match=message):
        StreamBatch(make_unet_fn(tiny_parts.unet), TINY_SCHEDULER_CONFIG, latent_shape=LATENT, **args)
