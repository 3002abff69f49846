"""ParamSpec: one live parameter as OSC, OSCQuery, docs, MIDI and the ParamStore see it,
derived from a pydantic model's fields (engine/config/schema.py applies it to LiveParams)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel


@dataclass(frozen=True)
class ParamSpec:
    """One live parameter, as OSC, OSCQuery, docs, MIDI and the ParamStore see it.

    kind: float | int | bool | str | enum | prompt_blend | seed_blend | int_list | smoothing.
    """

    name: str
    kind: str
    min: float | None
    max: float | None
    choices: tuple[str, ...]
    default: Any
    unit: str
    doc: str


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Le):
            hi = m.le
    return lo, hi


def _element_bounds(annotation: Any) -> tuple[float | None, float | None]:
    # list[Annotated[int, Field(ge, le)]]: bounds live on the element type.
    (elem,) = get_args(annotation)
    return _bounds([m for a in get_args(elem)[1:] for m in getattr(a, "metadata", [a])])


def live_specs(model: type[BaseModel]) -> dict[str, ParamSpec]:
    """A ParamSpec for each field of `model` (LiveParams), from its type and field metadata."""
    specs: dict[str, ParamSpec] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        ann = field.annotation
        lo, hi = _bounds(field.metadata)
        choices: tuple[str, ...] = ()
        if get_origin(ann) is Literal:
            kind, choices = "enum", tuple(get_args(ann))
        elif "kind" in extra:
            kind = str(extra["kind"])
            if kind == "int_list":
                lo, hi = _element_bounds(ann)
        else:
            kind = {float: "float", int: "int", bool: "bool", str: "str"}[ann]
        default = field.get_default(call_default_factory=True)
        specs[name] = ParamSpec(
            name, kind, lo, hi, choices, default, str(extra.get("unit", "")), field.description or ""
        )
    return specs
