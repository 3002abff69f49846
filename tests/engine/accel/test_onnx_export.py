"""Exported graphs run in onnxruntime (CPU) and match PyTorch: tiny UNets (SD1.5 and SDXL shaped), VAEs,
ControlNets and the UNet that takes their residuals."""

from __future__ import annotations

import pytest
import torch

from engine.accel.onnx_export import (
    MID_RESIDUAL,
    ControlNetExport,
    OnnxExportError,
    UnetExport,
    UnetResidualsExport,
    VaeDecoderExport,
    VaeEncoderExport,
    export_controlnet,
    export_unet,
    export_vae_decoder,
    export_vae_encoder,
    residual_specs,
    unet_input_specs,
)
from engine.models.controlnet import build_random_controlnet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 64  # 8x8 latents


def run_onnx(graph) -> tuple[dict, torch.Tensor]:
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(graph.inputs)
    assert [o.name for o in session.get_outputs()] == list(graph.outputs)
    for i in session.get_inputs():  # static: every dimension is a number
        assert tuple(i.shape) == graph.inputs[i.name].shape
    feeds = graph.sample_inputs(seed=3)
    out = session.run(None, {name: t.numpy() for name, t in feeds.items()})[0]
    return feeds, torch.from_numpy(out)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, scale), rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_parts", "tiny_sdxl_parts"])
def test_unet_matches_pytorch(request, tmp_path, fixture):
    parts = request.getfixturevalue(fixture)
    batch = 3  # e.g. a 3-step stream batch
    graph = export_unet(parts.unet, tmp_path / "unet.onnx", batch=batch, height=SIZE, width=SIZE)
    onnx.checker.check_model(str(graph.path))
    assert graph.path.stat().st_size < 20_000_000  # tiny model, tiny file
    expected_inputs = ["sample", "timestep", "encoder_hidden_states"]
    if fixture == "tiny_sdxl_parts":
        expected_inputs += ["text_embeds", "time_ids"]
    assert list(graph.inputs) == expected_inputs
    assert graph.inputs["sample"].shape == (batch, 4, 8, 8)
    assert graph.outputs["noise_pred"].shape == (batch, 4, 8, 8)
    feeds, got = run_onnx(graph)
    with torch.no_grad():
        want = UnetExport(parts.unet)(*feeds.values())
    assert_close(got, want)


def test_sdxl_unet_shapes_come_from_its_config(tiny_sdxl_parts):
    specs = unet_input_specs(tiny_sdxl_parts.unet, batch=2, height=128, width=64)
    assert specs["sample"].shape == (2, 4, 16, 8)
    assert specs["encoder_hidden_states"].shape == (2, 77, 64)
    assert specs["text_embeds"].shape == (2, 32) and specs["time_ids"].shape == (2, 6)
    assert specs["timestep"].dtype == torch.float32


def test_unet_wrapper_matches_the_pipeline_call(tiny_parts):
    """Float timesteps through the wrapper give what the pipeline's int64 timesteps give."""
    unet = tiny_parts.unet
    x, hidden = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    steps = torch.tensor([999, 459])
    with torch.no_grad():
        want = unet(x, steps, encoder_hidden_states=hidden, return_dict=False)[0]
        got = UnetExport(unet)(x, steps.float(), hidden)
    torch.testing.assert_close(got, want)


def tiny_kl_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval().requires_grad_(False)


@pytest.mark.parametrize("kind", ["tiny", "kl"])
def test_vae_encoder_and_decoder_match_pytorch(tiny_parts, tmp_path, kind):
    vae = tiny_parts.vae if kind == "tiny" else tiny_kl_vae()
    enc = export_vae_encoder(vae, tmp_path / "enc.onnx", batch=2, height=SIZE, width=SIZE)
    assert enc.outputs["latents"].shape == (2, 4, 8, 8)
    feeds, got = run_onnx(enc)
    with torch.no_grad():
        want = VaeEncoderExport(vae)(feeds["images"])
    assert_close(got, want)

    dec = export_vae_decoder(vae, tmp_path / "dec.onnx", batch=2, height=SIZE, width=SIZE)
    assert dec.inputs["latents"].shape == (2, 4, 8, 8) and dec.outputs["images"].shape == (2, 3, SIZE, SIZE)
    feeds, got = run_onnx(dec)
    with torch.no_grad():
        want = VaeDecoderExport(vae)(feeds["latents"])
    assert_close(got, want)


def test_encoder_wrapper_is_what_the_pipeline_encodes(tiny_parts):
    from tests.engine.core.pipelines import make_pipeline

    pipe = make_pipeline(tiny_parts, width=SIZE, height=SIZE, t_index_list=[30])
    images = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(pipe.encode(images), VaeEncoderExport(tiny_parts.vae)(images) * pipe._vae_scale)
        latents = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(pipe.decode(latents), VaeDecoderExport(tiny_parts.vae)(latents / pipe._vae_scale))


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"height": 60}, ValueError), ({"batch": 0}, ValueError), ({"opset": 13}, ValueError),
    ({"exporter": "magic"}, ValueError),
])
def test_bad_arguments(tiny_parts, tmp_path, kwargs, error):
    args = {"batch": 1, "height": SIZE, "width": SIZE, **kwargs}
    with pytest.raises(error):
        export_unet(tiny_parts.unet, tmp_path / "u.onnx", **args)


def test_export_failures_are_one_clear_error(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def encode(self, images):
            raise RuntimeError("boom\nlong traceback text")

    with pytest.raises(OnnxExportError, match="ONNX export of vae_encoder failed: boom$"):
        export_vae_encoder(Broken(), tmp_path / "e.onnx", batch=1, height=SIZE, width=SIZE)


# ---- ControlNets and the UNet that takes their residuals ----------------------------------------------


def run_all(graph, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(graph.inputs)
    assert [o.name for o in session.get_outputs()] == list(graph.outputs)
    outs = session.run(None, {name: feeds[name].numpy() for name in graph.inputs})
    return {name: torch.from_numpy(out) for name, out in zip(graph.outputs, outs)}


@pytest.mark.parametrize("fixture", ["tiny_parts", "tiny_sdxl_parts"])
def test_controlnet_and_residual_unet_match_pytorch(request, tmp_path, fixture):
    """The ControlNet graph's residuals, fed into the residual-taking UNet graph, give what the
    eager UNet gives with the eager ControlNet's residuals (conditioning scale 1)."""
    parts = request.getfixturevalue(fixture)
    controlnet = build_random_controlnet(parts.unet, seed=1)
    batch = 2
    cn = export_controlnet(controlnet, tmp_path / "cn.onnx", batch=batch, height=SIZE, width=SIZE)
    unet = export_unet(parts.unet, tmp_path / "unet.onnx", batch=batch, height=SIZE, width=SIZE, residuals=True)
    onnx.checker.check_model(str(cn.path))
    onnx.checker.check_model(str(unet.path))
    residuals = residual_specs(parts.unet, batch, SIZE, SIZE)
    assert cn.outputs == residuals and list(unet.inputs)[-len(residuals):] == list(residuals)
    assert list(cn.inputs)[:4] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    assert cn.inputs["controlnet_cond"].shape == (batch, 3, SIZE, SIZE)

    feeds = cn.sample_inputs(seed=5)
    assert 0 <= float(feeds["controlnet_cond"].min()) and float(feeds["controlnet_cond"].max()) <= 1  # maps: 0..1
    got_residuals = run_all(cn, feeds)
    with torch.no_grad():
        want_residuals = ControlNetExport(controlnet)(*feeds.values())
    for got, want in zip(got_residuals.values(), want_residuals, strict=True):
        assert_close(got, want)

    unet_feeds = {name: feeds[name] for name in unet.inputs if name in feeds} | got_residuals
    got = run_all(unet, unet_feeds)["noise_pred"]
    with torch.no_grad():
        sdxl = "text_embeds" in feeds
        added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]} if sdxl else None
        want = parts.unet(feeds["sample"], feeds["timestep"], encoder_hidden_states=feeds["encoder_hidden_states"],
                          added_cond_kwargs=added, down_block_additional_residuals=list(want_residuals[:-1]),
                          mid_block_additional_residual=want_residuals[-1], return_dict=False)[0]
        plain = UnetExport(parts.unet)(*(feeds[n] for n in unet_input_specs(parts.unet, batch, SIZE, SIZE)))
    assert_close(got, want)
    assert not torch.allclose(want, plain, atol=1e-3)  # the residuals do change the noise prediction


def test_residual_unet_with_zero_residuals_is_the_plain_unet(tiny_parts):
    """What the pipeline feeds when no ControlNet runs: zeros, i.e. the plain UNet."""
    specs = residual_specs(tiny_parts.unet, 2, SIZE, SIZE)
    plain = unet_input_specs(tiny_parts.unet, 2, SIZE, SIZE)
    wrapper = UnetResidualsExport(tiny_parts.unet, [*plain, *specs])
    gen = torch.Generator().manual_seed(0)
    x, hidden = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(plain["encoder_hidden_states"].shape, generator=gen)
    t = torch.tensor([999.0, 400.0])
    zeros = [torch.zeros(s.shape) for s in specs.values()]
    with torch.no_grad():
        assert torch.equal(wrapper(x, t, hidden, *zeros), UnetExport(tiny_parts.unet)(x, t, hidden))


def test_residual_specs_are_what_a_controlnet_returns():
    """Three blocks of two layers (SD-like), at a size whose latents halve to odd sides (9x11 -> 5x6 -> 3x3)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")).eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8)).eval()
    height, width = 72, 88
    specs = residual_specs(unet, 1, height, width)
    assert len(specs) == 1 + 3 * 2 + 2 + 1 and list(specs)[-1] == MID_RESIDUAL
    with torch.no_grad():
        down, mid = controlnet(torch.randn(1, 4, 9, 11), torch.tensor([10.0]), torch.randn(1, 77, 16),
                               torch.rand(1, 3, height, width), return_dict=False)
    assert [s.shape for s in specs.values()] == [tuple(r.shape) for r in (*down, mid)]
