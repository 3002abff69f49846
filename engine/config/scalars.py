"""The settings schema's vocabulary: limits, choices, strict scalar types and the strict model base.

engine/config/schema.py builds the models of a preset from these; other modules import them
from there (it re-exports them), so each fact still has one home.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

from engine.config.transport_specs import check_sink_spec, check_source_spec

MAX_TEXT = 4000  # chars per prompt: far above CLIP's 77 tokens, small enough to bound a datagram
MAX_BLEND = 16  # prompt/seed blend entries
SEED_MAX = 2**32 - 1
MAX_BANK = 8  # feature bank frames (engine/core/feature_bank.py): each costs a copy of every self-attention K/V

# Every list of allowed values, once. Argparse choices, the stream batch, backend selection,
# OSCQuery and docs derive from these (`CFG_TYPES`, ...), never retype them.
CfgType = Literal["none", "full", "self", "initialize"]
Mode = Literal["img2img", "txt2img"]
Acceleration = Literal["auto", "none", "compile", "tensorrt"]  # auto: engine/accel/backend.py picks
CompileMode = Literal["default", "max-autotune"]
FamilyName = Literal["sd15", "sd21", "sdxl"]
DtypeName = Literal["auto", "float16", "float32", "bfloat16"]
PromptInterp = Literal["linear", "slerp"]
Quantum = Literal["beat", "bar"]  # what a preset switch can wait for (engine/live/quantise.py)
Preprocessor = Literal["canny", "depth", "passthrough"]  # how a ControlNet's map is made (engine/core/preprocess/)
CFG_TYPES: tuple[str, ...] = get_args(CfgType)
MODES: tuple[str, ...] = get_args(Mode)
ACCELERATIONS: tuple[str, ...] = get_args(Acceleration)
BACKENDS: tuple[str, ...] = tuple(a for a in ACCELERATIONS if a != "auto")  # what "auto" resolves to
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
FAMILIES: tuple[str, ...] = get_args(FamilyName)
DTYPES: tuple[str, ...] = get_args(DtypeName)
QUANTA: tuple[str, ...] = get_args(Quantum)
PREPROCESSORS: tuple[str, ...] = get_args(Preprocessor)
MAX_CONTROLNETS = 4  # each has its own live scale and on/off below (controlnet_<k>_scale, _enabled)
CONTROL_FROM_INPUT = "input"  # a ControlNet source: the main input frame, through its preprocessor
MAX_CONTROL_SOURCES = 4  # source choices per ControlNet (each listed own source runs while the preset is on air)

# Strict scalars: YAML and OSC both deliver typed values, so "1.5" for a float or
# `true` for a number is a mistake to report, not to coerce. int -> float is allowed.
Flt = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Text = Annotated[str, Strict(), Field(max_length=MAX_TEXT)]
Weight = Annotated[float, Strict(), Field(ge=0.0, le=1000.0, allow_inf_nan=False)]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
LCM_STEPS = 50  # t_index_list indexes LCM's 50-step schedule (engine/core/schedule.py)
TIndex = Annotated[int, Strict(), Field(ge=0, le=LCM_STEPS - 1)]
# Frame transport specs: the rules of each kind live in engine/config/transport_specs.py, the
# same ones the bridge registry applies, so a preset is refused at load time for a spec the
# engine would refuse later.
SourceSpec = Annotated[str, Strict(), AfterValidator(check_source_spec)]
SinkSpec = Annotated[str, Strict(), AfterValidator(check_sink_spec)]


def _check_control_source(spec: str) -> str:
    if spec == CONTROL_FROM_INPUT:
        return spec
    try:
        return check_source_spec(spec)
    except ValueError as exc:
        raise ValueError(f'{exc}; or "{CONTROL_FROM_INPUT}" for the main input frame') from None


ControlSource = Annotated[str, Strict(), AfterValidator(_check_control_source)]


def unit_extra(unit: str, kind: str | None = None) -> dict[str, str]:
    extra = {"unit": unit}
    if kind:
        extra["kind"] = kind
    return extra


class StrictModel(BaseModel):
    """Unknown keys are errors, defaults are validated: a typo in a preset is said, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)
