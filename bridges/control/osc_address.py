"""The OSC address space: every address the server answers, generated, never listed by hand.

Live parameters come from `LIVE_SPECS` (flat snake_case under one prefix, what
TouchDesigner and Resolume send best), smoothing from `SMOOTHABLE`, commands from the
`Command` enum. The server, OSCQuery and docs/osc.md all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from engine.config.schema import LIVE_SPECS, SMOOTHABLE, LiveParams
from engine.live.commands import Arg, Command

Role = Literal["param", "smoothing", "command"]

# OSC type tag per live-parameter kind; "…" = repeat the group.
_KIND_TAG = {
    "float": "f",
    "int": "i",
    "bool": "T",
    "str": "s",
    "enum": "s",
    "prompt_blend": "sf…",
    "seed_blend": "if…",
    "int_list": "i…",
}
_ARG_TAG = {str: "s", float: "f", int: "i"}


@dataclass(frozen=True)
class OscAddress:
    path: str
    name: str  # live parameter name, smoothed parameter name, or the command's address suffix
    role: Role
    typetag: str  # OSC type tags expected; "…" = repeat the group, "[x]" = optional, "N" = trigger
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    unit: str = ""
    doc: str = ""
    command: Command | None = None


def _smoothing_bounds() -> tuple[float | None, float | None]:
    # The schema bounds each slew time on the dict's value type: read it there, not retyped.
    (_, value_type) = get_args(LiveParams.model_fields["smoothing"].annotation)
    lo = hi = None
    for meta in (m for a in get_args(value_type)[1:] for m in getattr(a, "metadata", [a])):
        lo = lo if getattr(meta, "ge", None) is None else meta.ge
        hi = hi if getattr(meta, "le", None) is None else meta.le
    return lo, hi


def command_typetag(args: tuple[Arg, ...]) -> str:
    if not args:
        return "N"
    return "".join(f"[{_ARG_TAG[a.type]}]" if a.optional else _ARG_TAG[a.type] for a in args)


def address_table(prefix: str = "/streamvj", steps: int | None = None) -> list[OscAddress]:
    """Every address the server answers; `steps` spells out t_index_list's tags (OSCQuery)."""
    prefix = prefix.rstrip("/")
    out: list[OscAddress] = []
    for spec in LIVE_SPECS.values():
        if spec.kind == "smoothing":
            lo, hi = _smoothing_bounds()
            for p in SMOOTHABLE:
                doc = f"Slew time for {p} in seconds (0 = jump to new values)"
                out.append(OscAddress(f"{prefix}/smoothing/{p}", p, "smoothing", "f", lo, hi, (), 0.0, "s", doc))
            continue
        tag = "i" * steps if spec.kind == "int_list" and steps else _KIND_TAG[spec.kind]
        out.append(
            OscAddress(
                f"{prefix}/{spec.name}",
                spec.name,
                "param",
                tag,
                spec.min,
                spec.max,
                spec.choices,
                spec.default,
                spec.unit,
                spec.doc,
            )
        )
    for command in Command:
        out.append(
            OscAddress(
                f"{prefix}/{command.address}",
                command.address,
                "command",
                command_typetag(command.args),
                doc=command.doc,
                command=command,
            )
        )
    return out
