from __future__ import annotations

import pytest
import torch

from engine.config.schema import LiveParams
from engine.core.fx import (
    LUMA_B,
    LUMA_G,
    LUMA_R,
    UNIFORMS,
    FxUniforms,
    feedback_mix,
    grade,
    post_fx,
    temporal_blend,
)
from engine.core.pixels import rgba_u8_to_img_pm1


def t(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def graded(img: torch.Tensor, brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0) -> torch.Tensor:
    return grade(img, t(brightness), t(contrast), t(saturation), t(hue))


def random_img(frames: int = 2, size: int = 8, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(frames, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def pixel(r: float, g: float, b: float) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32).view(1, 3, 1, 1)


def luma(img: torch.Tensor) -> torch.Tensor:
    return img[:, 0] * LUMA_R + img[:, 1] * LUMA_G + img[:, 2] * LUMA_B


# ---- identity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_neutral_values_are_bit_exact(dtype):
    img, other = random_img(dtype=dtype), random_img(dtype=dtype, seed=1)
    u = FxUniforms()
    assert torch.equal(grade(img, u.brightness, u.contrast, u.saturation, u.hue), img)
    assert torch.equal(feedback_mix(img, other, u.feedback), img)
    assert torch.equal(temporal_blend(img, other, u.blend), img)
    assert torch.equal(post_fx(img, other, u), img)


def test_neutral_grade_is_exact_on_every_u8_level():
    levels = torch.arange(256, dtype=torch.uint8)
    rgba = torch.stack([levels, levels.flip(0), levels.roll(77), levels], dim=-1).view(1, 16, 16, 4)
    img = rgba_u8_to_img_pm1(rgba, torch.float32)
    assert torch.equal(graded(img), img)


# ---- each operation ---------------------------------------------------------------------------------

def test_saturation_zero_gives_grey_at_rec709_luma():
    img = random_img() * 0.5
    out = graded(img, saturation=0.0)
    expected = luma(img).unsqueeze(1).expand_as(img)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_saturation_keeps_luma_and_scales_chroma():
    img = random_img() * 0.2
    out = graded(img, saturation=2.0)
    torch.testing.assert_close(luma(out), luma(img), atol=1e-6, rtol=0)
    torch.testing.assert_close(out - luma(out).unsqueeze(1), 2 * (img - luma(img).unsqueeze(1)),
                               atol=1e-6, rtol=0)


def test_contrast_zero_gives_mid_grey_and_two_doubles_around_it():
    img = random_img()
    assert torch.equal(graded(img, contrast=0.0), torch.zeros_like(img))
    torch.testing.assert_close(graded(img * 0.4, contrast=2.0), img * 0.8)


def test_brightness_offsets_in_display_units_and_clamps():
    img = random_img() * 0.5
    torch.testing.assert_close(graded(img, brightness=0.25), (img + 0.5).clamp(-1, 1))
    assert torch.equal(graded(img, brightness=1.0), torch.ones_like(img))
    assert torch.equal(graded(img, brightness=-1.0), -torch.ones_like(img))
    big = graded(random_img(), contrast=4.0, brightness=0.5)
    assert big.min() >= -1 and big.max() <= 1


def test_contrast_applies_before_brightness():
    img = pixel(0.2, 0.2, 0.2)
    # contrast then offset: 0.2 * 2 + 2 * 0.1 = 0.6 (the other order would give 0.8)
    torch.testing.assert_close(graded(img, brightness=0.1, contrast=2.0), pixel(0.6, 0.6, 0.6))


def test_hue_full_turn_is_identity_and_half_turns_agree():
    img = random_img()
    torch.testing.assert_close(graded(img, hue=360.0), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(graded(img, hue=-180.0), graded(img, hue=180.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(graded(graded(img * 0.1, hue=50.0), hue=-50.0), img * 0.1, atol=1e-5, rtol=0)


def test_hue_120_turns_red_towards_green():
    red = pixel(1.0, -1.0, -1.0)
    out = graded(red, hue=120.0).flatten()
    assert out[1] > out[0] and out[1] > out[2]
    back = graded(red, hue=-120.0).flatten()
    assert back[2] > back[0] and back[2] > back[1]  # and the other way towards blue


def test_hue_keeps_grey_and_luma():
    grey = pixel(0.3, 0.3, 0.3)
    torch.testing.assert_close(graded(grey, hue=77.0), grey)
    img = random_img() * 0.1  # low chroma: no clamping, so luma must be exact
    torch.testing.assert_close(luma(graded(img, hue=77.0)), luma(img), atol=1e-6, rtol=0)


def test_feedback_one_returns_last_output_and_half_is_the_mean():
    img, last = random_img(), random_img(seed=1)
    assert torch.equal(feedback_mix(img, last, t(1.0)), last)
    torch.testing.assert_close(feedback_mix(img, last, t(0.5)), (img + last) / 2)


def test_temporal_blend_half_is_the_mean_and_one_holds_the_previous_frame():
    out, prev = random_img(), random_img(seed=1)
    torch.testing.assert_close(temporal_blend(out, prev, t(0.5)), (out + prev) / 2)
    assert torch.equal(temporal_blend(out, prev, t(1.0)), prev)


def test_post_fx_grades_then_blends():
    out, prev = random_img() * 0.5, random_img(seed=1)
    u = FxUniforms()
    u.update({**neutral_fields(), "fx_blend": 0.25, "fx_brightness": 0.1})
    expected = torch.lerp(graded(out, brightness=0.1), prev, 0.25)
    torch.testing.assert_close(post_fx(out, prev, u), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_shapes_and_dtypes_are_kept(dtype):
    img, last = random_img(frames=3, size=5, dtype=dtype), random_img(frames=3, size=5, dtype=dtype, seed=1)
    amount, u = t(0.3), FxUniforms()
    u.update({**neutral_fields(), "fx_contrast": 1.5, "fx_hue": 30.0, "fx_saturation": 0.5, "fx_blend": 0.2})
    for out in (feedback_mix(img, last, amount), temporal_blend(img, last, amount), post_fx(img, last, u),
                grade(img, u.brightness, u.contrast, u.saturation, u.hue)):
        assert out.shape == img.shape and out.dtype == dtype


def test_fp16_tiny_frame_matches_fp32():
    img32 = random_img(frames=1, size=4)
    last32 = random_img(frames=1, size=4, seed=1)
    img16, last16 = img32.half(), last32.half()
    u = FxUniforms()  # float32 uniforms on fp16 images: the functions cast
    u.update({"fx_feedback": 0.3, "fx_blend": 0.4, "fx_brightness": -0.1, "fx_contrast": 1.3,
              "fx_saturation": 1.7, "fx_hue": 45.0})
    got16 = post_fx(feedback_mix(img16, last16, u.feedback), last16, u)
    got32 = post_fx(feedback_mix(img32, last32, u.feedback), last32, u)
    assert got16.dtype == torch.float16 and torch.isfinite(got16).all()
    torch.testing.assert_close(got16.float(), got32, atol=1e-2, rtol=0)


# ---- FxUniforms -------------------------------------------------------------------------------------

def neutral_fields() -> dict[str, float]:
    return {field: neutral for field, neutral in UNIFORMS.values()}


def test_uniforms_are_0d_tensors_with_neutral_defaults():
    u = FxUniforms(dtype=torch.float64)
    for name, (_, neutral) in UNIFORMS.items():
        value = getattr(u, name)
        assert value.dim() == 0 and value.dtype == torch.float64 and value.item() == neutral
    assert u.is_identity()


def test_neutral_values_are_the_preset_schemas_defaults():
    for field, neutral in UNIFORMS.values():
        assert LiveParams.model_fields[field].default == neutral, field


def test_update_reads_live_params_and_decides_identity_on_the_host():
    u = FxUniforms()
    u.update(LiveParams())
    assert u.is_identity()
    u.update(LiveParams(fx_hue=10.0))
    assert not u.is_identity() and u.hue.item() == 10.0 and u.values["hue"] == 10.0
    u.update(LiveParams())
    assert u.is_identity() and u.hue.item() == 0.0


def test_a_built_closure_sees_updates_through_the_same_tensors():
    u = FxUniforms()
    tensors = {name: getattr(u, name) for name in UNIFORMS}
    pointers = {name: tensor.data_ptr() for name, tensor in tensors.items()}
    img, last = random_img() * 0.5, random_img(seed=1)

    def step(x: torch.Tensor) -> torch.Tensor:
        return post_fx(feedback_mix(x, last, u.feedback), last, u)

    before = step(img)
    assert torch.equal(before, img)
    u.update({"fx_feedback": 0.5, "fx_blend": 0.0, "fx_brightness": 0.0, "fx_contrast": 0.0,
              "fx_saturation": 1.0, "fx_hue": 0.0})
    assert torch.equal(step(img), torch.zeros_like(img))  # contrast 0 after the mix: mid-grey
    u.update({**neutral_fields(), "fx_feedback": 1.0})
    assert torch.equal(step(img), last)
    for name, tensor in tensors.items():
        assert getattr(u, name) is tensor and tensor.data_ptr() == pointers[name]


@pytest.mark.compile
def test_compiled_step_follows_updates_without_recompiling():
    u = FxUniforms()
    img, last = random_img() * 0.5, random_img(seed=1)

    def step(x: torch.Tensor) -> torch.Tensor:
        return post_fx(feedback_mix(x, last, u.feedback), last, u)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True, dynamic=False)
    compiled(img)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for values in ({"fx_hue": 90.0}, {"fx_hue": -30.0, "fx_contrast": 2.0}, {"fx_feedback": 0.7}):
            u.update({**neutral_fields(), **values})
            torch.testing.assert_close(compiled(img), step(img))


def test_missing_field_is_an_error():
    with pytest.raises(KeyError):
        FxUniforms().update({"fx_hue": 1.0})
