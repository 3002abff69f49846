"""The settings schema: typed, strict models for a look, and the LIVE_SPECS table.

A preset has two halves. `load` needs a pipeline rebuild when it changes (model,
resolution, acceleration…); `live` is applied on the next frame (prompt, guidance,
seed, filter, FX). The *length* of `live.t_index_list` is the step count, so it is
load-time too; its values are live. `LIVE_SPECS` is generated from `LiveParams`'
field metadata and is the one source for OSC addresses, OSCQuery, docs and the
ParamStore's validation.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, field_validator, model_validator

from engine.config.live_specs import ParamSpec, live_specs
from engine.config.osc_settings import OscSettings
from engine.config.scalars import (
    CONTROL_FROM_INPUT,
    LCM_STEPS,
    MAX_BANK,
    MAX_BLEND,
    MAX_CONTROL_SOURCES,
    MAX_CONTROLNETS,
    Acceleration,
    Bool,
    CfgType,
    CompileMode,
    ControlSource,
    DtypeName,
    FamilyName,
    Flt,
    Int,
    Mode,
    Preprocessor,
    PromptInterp,
    Seed,
    SinkSpec,
    SourceSpec,
    Str,
    StrictModel,
    Text,
    TIndex,
    Weight,
    unit_extra,
)


def _controlnet_scale(k: int) -> Any:
    return Field(1.0, ge=0.0, le=3.0, description=f"ControlNet {k}'s conditioning scale (0 = no effect; "
                 f"ignored when the preset has fewer ControlNets)")


def _controlnet_enabled(k: int) -> Any:
    return Field(True, description=f"ControlNet {k} on; off = neither it nor its preprocessor runs")


def _controlnet_preprocessor(k: int) -> Any:
    return Field("passthrough", description=f"ControlNet {k}'s preprocessor, among the preset's choices "
                 f"(load.controlnets[{k}].preprocessor; the first unless live sets it)")


def _controlnet_source(k: int) -> Any:
    return Field(CONTROL_FROM_INPUT, description=f"ControlNet {k}'s map source, among the preset's choices "
                 f"(load.controlnets[{k}].source; the first unless live sets it); any other is refused, never opened")


class LiveParams(StrictModel):
    """Everything the render loop reads per frame; any change applies on the next frame."""

    prompt: Text = Field("", description="Text prompt (used when prompt_blend is empty)")
    negative_prompt: Text = Field("", description="Negative prompt (cfg_type full/initialize)")
    prompt_blend: list[tuple[Text, Weight]] = Field(
        default_factory=list,
        max_length=MAX_BLEND,
        description="Weighted prompts [[text, weight], ...]; weights are relative; empty = use prompt",
        json_schema_extra=unit_extra("", "prompt_blend"),
    )
    prompt_interp: PromptInterp = Field(
        "linear", description="How prompt_blend embeddings are mixed"
    )
    guidance_scale: Flt = Field(1.2, ge=0.0, le=20.0, description="Classifier-free guidance scale")
    delta: Flt = Field(1.0, ge=0.0, le=5.0, description="RCFG self-negative strength (<1 softens contrast)")
    t_index_list: list[TIndex] = Field(
        default_factory=lambda: [32, 45],
        min_length=1,
        max_length=50,
        description="Denoising timestep indices into the 50-step schedule, strictly increasing; "
        "lower first index = more change. Length is fixed at load time (the step count)",
        json_schema_extra=unit_extra("", "int_list"),
    )
    seed: Seed = Field(2, description="Noise seed")
    seed_blend: list[tuple[Seed, Weight]] = Field(
        default_factory=list,
        max_length=MAX_BLEND,
        description="Weighted seeds [[seed, weight], ...] mixed into the noise; empty = use seed",
        json_schema_extra=unit_extra("", "seed_blend"),
    )
    similarity_enabled: Bool = Field(
        False, description="Skip frames that barely changed (stochastic similarity filter)"
    )
    similarity_threshold: Flt = Field(
        0.98, ge=0.0, le=1.0, description="Cosine similarity above which frames may be skipped"
    )
    similarity_max_skip: Int = Field(
        10, ge=0, le=1000, description="Force a refresh after this many skipped frames"
    )
    # Temporal consistency (docs/temporal.md): the feature bank needs load.bank_max >= bank_frames.
    bank_frames: Int = Field(
        0, ge=0, le=MAX_BANK, description="Feature bank: earlier frames each self-attention layer also attends to "
        "(0 = off; at most load.bank_max)"
    )
    bank_refresh: Int = Field(1, ge=1, le=120, description="Feature bank: store a frame's features every N frames")
    bank_strength: Flt = Field(
        1.0, ge=0.0, le=1.0, description="Feature bank: blend from plain (0) to extended self-attention (1)"
    )
    fusion_strength: Flt = Field(
        0.0, ge=0.0, le=1.0, description="Feature fusion: pull of each deep self-attention output toward its most "
        "similar banked one (0 = off; needs bank_frames > 0 and load.bank_fusion)"
    )
    fusion_threshold: Flt = Field(
        0.98, ge=0.0, le=1.0, description="Feature fusion: the cosine similarity a banked output needs to be used"
    )
    latent_feedback: Flt = Field(
        0.0, ge=0.0, le=0.95, description="Fraction of the previous output latent blended into the next input latent"
    )
    cut_threshold: Flt = Field(
        0.8, ge=0.0, le=1.0, description="Scene cut: below this cosine similarity between consecutive input frames "
        "the feature bank and latent feedback forget the past (0 = never)"
    )
    fx_feedback: Flt = Field(0.0, ge=0.0, le=1.0, description="Mix of the last output into the next input")
    fx_blend: Flt = Field(0.0, ge=0.0, le=1.0, description="Temporal blend of outputs (anti-flicker)")
    fx_brightness: Flt = Field(0.0, ge=-1.0, le=1.0, description="Output brightness offset")
    fx_contrast: Flt = Field(1.0, ge=0.0, le=4.0, description="Output contrast (1 = unchanged)")
    fx_saturation: Flt = Field(1.0, ge=0.0, le=4.0, description="Output saturation (1 = unchanged)")
    fx_hue: Flt = Field(
        0.0, ge=-180.0, le=180.0, description="Output hue rotation", json_schema_extra=unit_extra("deg")
    )
    # One scale and one on/off per ControlNet slot k < MAX_CONTROLNETS (plain floats and bools, so
    # OSC, MIDI, presets and smoothing treat them like any other live value).
    controlnet_0_scale: Flt = _controlnet_scale(0)
    controlnet_0_enabled: Bool = _controlnet_enabled(0)
    controlnet_1_scale: Flt = _controlnet_scale(1)
    controlnet_1_enabled: Bool = _controlnet_enabled(1)
    controlnet_2_scale: Flt = _controlnet_scale(2)
    controlnet_2_enabled: Bool = _controlnet_enabled(2)
    controlnet_3_scale: Flt = _controlnet_scale(3)
    controlnet_3_enabled: Bool = _controlnet_enabled(3)
    # Which of the preset's listed choices each ControlNet uses (load.controlnets[k]: all of them are
    # loaded and warmed up at build time, so a switch never loads, compiles or captures).
    controlnet_0_preprocessor: Preprocessor = _controlnet_preprocessor(0)
    controlnet_0_source: ControlSource = _controlnet_source(0)
    controlnet_1_preprocessor: Preprocessor = _controlnet_preprocessor(1)
    controlnet_1_source: ControlSource = _controlnet_source(1)
    controlnet_2_preprocessor: Preprocessor = _controlnet_preprocessor(2)
    controlnet_2_source: ControlSource = _controlnet_source(2)
    controlnet_3_preprocessor: Preprocessor = _controlnet_preprocessor(3)
    controlnet_3_source: ControlSource = _controlnet_source(3)
    canny_low: Flt = Field(0.08, ge=0.0, le=1.0, description="Canny preprocessor: weak-edge threshold "
                           "(gradient of 0..1 luminance)")
    canny_high: Flt = Field(0.2, ge=0.0, le=1.0, description="Canny preprocessor: strong-edge threshold "
                            "(the larger of canny_low/canny_high is the strong one)")
    smoothing: dict[Str, Annotated[float, Strict(), Field(ge=0.0, le=60.0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Per-parameter slew time in seconds for float parameters, e.g. {guidance_scale: 0.5}",
        json_schema_extra=unit_extra("s", "smoothing"),
    )

    @field_validator("t_index_list")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in pairwise(v)):
            raise ValueError("must be strictly increasing, e.g. [32, 45]")
        return v

    @field_validator("prompt_blend", "seed_blend")
    @classmethod
    def _some_weight(cls, v: list[tuple[Any, float]]) -> list[tuple[Any, float]]:
        if v and sum(w for _, w in v) <= 0.0:
            raise ValueError("weights must not all be zero")
        return v

    @field_validator("smoothing")
    @classmethod
    def _smoothable(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in SMOOTHABLE]
        if bad:
            raise ValueError(f"cannot smooth {', '.join(bad)}; smoothable: {', '.join(SMOOTHABLE)}")
        return v


class LoraSpec(StrictModel):
    path: Annotated[str, Strict(), Field(min_length=1, max_length=1000)] = Field(
        description="Hugging Face id, local folder or .safetensors file"
    )
    scale: Flt = Field(1.0, ge=-4.0, le=4.0, description="LoRA weight")
    weight_name: Annotated[str, Strict(), Field(min_length=1, max_length=256)] | None = Field(
        None, description="File inside a Hugging Face repo holding several LoRAs"
    )


ModelSpec = Annotated[str, Strict(), Field(min_length=1, max_length=1000)]
# One choice, or a list of them to switch between live (the first is the one a preset starts with).
ControlSources = ControlSource | Annotated[list[ControlSource], Field(min_length=1, max_length=MAX_CONTROL_SOURCES)]
Preprocessors = Preprocessor | Annotated[list[Preprocessor], Field(min_length=1)]


class ControlNetSpec(StrictModel):
    """One ControlNet: the network, where its control map comes from, when in the steps it acts."""

    model: ModelSpec = Field(
        description='"random" (shaped like the model, random weights), a Hugging Face id, a local diffusers '
        "ControlNet folder or a .safetensors file; trained for the model's family"
    )
    source: ControlSources = Field(
        "input", description='"input" (the main input frame) or a source spec of its own, e.g. "spout:TDDepth", '
        '"shm:streamvj_depth" (a second live source, latest wins); or a list of these to switch between live '
        "(controlnet_<k>_source), the first used at start"
    )
    preprocessor: Preprocessors = Field(
        "passthrough", description="canny (edges), depth (a depth network) or passthrough (the map as sent); or a "
        "list of these to switch between live (controlnet_<k>_preprocessor), the first used at start"
    )
    depth_model: ModelSpec = Field(
        "depth-anything/Depth-Anything-V2-Small-hf",
        description='Depth network for preprocessor depth: a Hugging Face id or folder, or "random" (tests)',
    )
    depth_resolution: Int = Field(518, ge=56, le=1022, multiple_of=14,
                                  description="Side of the square the depth network sees (a multiple of 14)")
    guidance_start: Flt = Field(0.0, ge=0.0, le=1.0, description="Acts from this fraction of the steps on")
    guidance_end: Flt = Field(1.0, ge=0.0, le=1.0, description="Acts up to this fraction of the steps")

    @property
    def sources(self) -> tuple[str, ...]:
        """The source choices, the start one first (all of them are opened when the preset loads)."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @property
    def preprocessors(self) -> tuple[str, ...]:
        """The preprocessor choices, the start one first (all of them are loaded and warmed up)."""
        return (self.preprocessor,) if isinstance(self.preprocessor, str) else tuple(self.preprocessor)

    @model_validator(mode="after")
    def _window(self) -> ControlNetSpec:
        if self.guidance_start >= self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) must be below guidance_end "
                             f"({self.guidance_end})")
        for name, choices in (("source", self.sources), ("preprocessor", self.preprocessors)):
            if len(set(choices)) != len(choices):
                raise ValueError(f"{name} lists {', '.join(choices)}: each choice once")
        return self


class LoadSettings(StrictModel):
    """Fields that need a pipeline rebuild when they change."""

    model: Annotated[str, Strict(), Field(min_length=1, max_length=1000)] = Field(
        description='"tiny" (the small trained model shipped in the repo), "tiny-random", "tiny-sdxl", "sd-turbo-random" '
                    '(random weights, for tests), a Hugging Face id, a local diffusers folder or a .safetensors file'
    )
    family: FamilyName | None = Field(
        None, description="Model family; absent = from the model's config"
    )
    vae: Annotated[str, Strict(), Field(min_length=1, max_length=1000)] | None = Field(
        None, description="VAE id or folder, e.g. madebyollin/taesd"
    )
    lora: list[LoraSpec] = Field(default_factory=list, max_length=8)
    width: Int = Field(512, ge=64, le=2048, multiple_of=8)
    height: Int = Field(512, ge=64, le=2048, multiple_of=8)
    frame_buffer_size: Int = Field(1, ge=1, le=8)
    bank_max: Int = Field(
        0, ge=0, le=MAX_BANK, description="Feature bank frames allocated at load (the most live bank_frames can "
        "use); 0 = no bank installed, no cost"
    )
    bank_fusion: Bool = Field(
        False, description="Also allocate feature fusion with the bank (a ring of the deep layers' outputs and a "
        "frame-step variant of its own); off = live fusion_strength has no effect, and the bank costs less"
    )
    cfg_type: CfgType = "self"
    mode: Mode = "img2img"
    acceleration: Acceleration = "auto"
    compile_mode: CompileMode = "default"
    device: Annotated[str, Strict(), Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$")] = "auto"
    dtype: DtypeName = "auto"
    source: SourceSpec = Field(
        "pattern", description='Frame source spec, e.g. "pattern", "shm:streamvj_in", "spout:TDOut"'
    )
    sinks: list[SinkSpec] = Field(default_factory=lambda: ["shm:streamvj_out"], max_length=8)
    target_fps: Annotated[float, Strict(), Field(gt=0.0, le=240.0, allow_inf_nan=False)] | None = None
    controlnets: list[ControlNetSpec] = Field(
        default_factory=list, max_length=MAX_CONTROLNETS,
        description="ControlNets, in slot order (live: controlnet_<k>_scale, controlnet_<k>_enabled)",
    )

    @property
    def live_choices(self) -> dict[str, tuple[str, ...]]:
        """Live parameter -> the values it may take with this load: each ControlNet's listed sources and
        preprocessors (all opened and warmed up at build time; nothing else can be switched to live)."""
        return {f"controlnet_{k}_{what}": choices for k, spec in enumerate(self.controlnets)
                for what, choices in (("source", spec.sources), ("preprocessor", spec.preprocessors))}

    @model_validator(mode="after")
    def _controls_have_maps(self) -> LoadSettings:
        if self.mode == "txt2img":
            bad = [k for k, c in enumerate(self.controlnets) if CONTROL_FROM_INPUT in c.sources]
            if bad:
                raise ValueError(f"controlnets {bad}: txt2img has no input frame; give each a source of its own "
                                 f"(e.g. source: shm:streamvj_depth)")
        return self


class MidiMapping(StrictModel):
    param: Str = Field(description="Live parameter to drive (float, int or bool)")
    channel: Int = Field(1, ge=1, le=16, description="MIDI channel as printed on the controller (1-16)")
    cc: Int = Field(ge=0, le=127, description="Controller number (MSB for 14-bit, 0-31)")
    bits: Literal[7, 14] = Field(7, description="14 = MSB on cc, LSB on cc+32")
    min: Flt | None = Field(None, description="Value at CC 0; absent = the parameter's minimum")
    max: Flt | None = Field(None, description="Value at CC max; absent = the parameter's maximum")
    curve: Literal["linear", "exp", "log"] = "linear"
    index: Int | None = Field(None, ge=0, le=LCM_STEPS - 1, description="For t_index_list: which step the knob drives")

    @model_validator(mode="after")
    def _check(self) -> MidiMapping:
        spec = LIVE_SPECS.get(self.param)
        if spec is None or spec.kind not in ("float", "int", "bool", "int_list"):
            raise ValueError(
                f"param {self.param!r} cannot be driven by a CC; mappable: {', '.join(MIDI_MAPPABLE)}"
            )
        if spec.kind == "int_list" and self.index is None:
            raise ValueError("t_index_list needs `index` (which step the knob drives)")
        if spec.kind != "int_list" and self.index is not None:
            raise ValueError("`index` is only for t_index_list")
        if self.bits == 14 and self.cc > 31:
            raise ValueError("14-bit mappings use the MSB controller 0-31 (LSB is cc+32)")
        for bound in (self.min, self.max):
            if bound is not None and spec.min is not None and spec.max is not None:
                if not spec.min <= bound <= spec.max:
                    raise ValueError(f"min/max {bound} outside {self.param}'s range {spec.min}..{spec.max}")
        return self


class MidiSettings(StrictModel):
    port: Annotated[str, Strict(), Field(min_length=1, max_length=256)] | None = Field(
        None, description="Input port name or a part of it; absent = MIDI off"
    )
    clock: Bool = Field(True, description="Follow MIDI clock (24 ppqn) for tempo")
    mappings: list[MidiMapping] = Field(default_factory=list, max_length=256)


class Preset(StrictModel):
    name: Annotated[str, Strict(), Field(min_length=1, max_length=64)]
    description: Annotated[str, Strict(), Field(max_length=4000)] = ""
    load: LoadSettings
    live: LiveParams = Field(default_factory=LiveParams)
    midi: MidiSettings = Field(default_factory=MidiSettings)
    osc: OscSettings = Field(default_factory=OscSettings)

    @property
    def steps(self) -> int:
        return len(self.live.t_index_list)

    @model_validator(mode="after")
    def _controlnet_choices(self) -> Preset:
        """A live choice the preset sets must be one it lists; one it leaves out is its first choice."""
        for name, choices in self.load.live_choices.items():
            if name not in self.live.model_fields_set:
                setattr(self.live, name, choices[0])
            elif getattr(self.live, name) not in choices:
                k, what = name.removeprefix("controlnet_").split("_", 1)
                raise ValueError(f"live.{name} {getattr(self.live, name)!r} is not among load.controlnets[{k}]"
                                 f".{what}'s choices ({', '.join(choices)})")
        return self

    @model_validator(mode="after")
    def _bank_allocated(self) -> Preset:
        if self.live.bank_frames > self.load.bank_max:
            raise ValueError(f"live.bank_frames {self.live.bank_frames} needs load.bank_max >= "
                             f"{self.live.bank_frames} (the bank's memory is allocated when the pipeline is built)")
        if self.live.fusion_strength > 0 and not self.load.bank_fusion:
            raise ValueError(f"live.fusion_strength {self.live.fusion_strength} needs load.bank_fusion: true (fusion's "
                             "memory and frame-step variant are made when the pipeline is built)")
        return self


# One ParamSpec per LiveParams field (engine/config/live_specs.py).
LIVE_SPECS: dict[str, ParamSpec] = live_specs(LiveParams)
SMOOTHABLE: tuple[str, ...] = tuple(n for n, s in LIVE_SPECS.items() if s.kind == "float")
MIDI_MAPPABLE: tuple[str, ...] = tuple(
    n for n, s in LIVE_SPECS.items() if s.kind in ("float", "int", "bool", "int_list")
)

