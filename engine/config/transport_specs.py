"""Frame transport specs ("kind" or "kind:argument"): the syntax rules of every source and sink kind.

    pattern | pattern:640x360 | pattern:640x360@60      image:path.png     video:clip.mp4
    shm:streamvj_in    spout | spout:TDSyphonSpoutOut    ndi:MY-PC (TouchDesigner)
    syphon | syphon:Name    png:out/frames    null

These are the one set of rules: the preset schema checks `load.source` / `load.sinks` with
them when a preset loads (so a bad spec is refused with its reason before anything is
built), and bridges/video/registry.py checks every spec with them before it maps the kind
to a bridge class. Pure string rules: nothing is opened, imported or touched on disk
(engine/ never imports bridges/).

A spec splits at the first ':' only, so arguments keep theirs ("image:C:\\img.png",
"ndi:MY-PC (TD)"); the kind is case-insensitive and surrounding spaces are ignored.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.errors import ConfigError, shown

# Shared-memory block names (docs/shared-memory.md "Block names"): one POSIX path component,
# portable to Windows' named mappings, never "." / ".." or anything with a separator.
SHM_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
SHM_MACOS_MAX_NAME = 30  # macOS PSHMNAMLEN is 31 bytes including the leading "/"

MAX_PATH_CHARS = 1024  # image:/video:/png: paths
MAX_SPEC_CHARS = MAX_PATH_CHARS + 16  # a whole spec: the longest argument plus its kind
MAX_PEER_NAME_CHARS = 256  # Spout sender, NDI and Syphon names (Spout's own limit is 256)

DEFAULT_PATTERN_SIZE = (512, 512)
DEFAULT_PATTERN_FPS = 30.0
PATTERN_SIDES = (8, 8192)  # the test pattern draws bars and a square: below 8 px there is nothing to see
PATTERN_MAX_FPS = 240.0  # the highest output rate the engine paces (load.target_fps)
_PATTERN_ARG = re.compile(r"^(\d{1,5})x(\d{1,5})(?:@(\d{1,4}(?:\.\d{1,3})?))?$")

SOURCE, SINK = "source", "sink"


class TransportSpecError(ConfigError):
    """A spec broke its kind's rules; `reason` says how without repeating the spec (for
    messages that show the value anyway, like the preset schema's)."""

    def __init__(self, role: str, spec: object, reason: str) -> None:
        super().__init__(f"frame {role} spec {shown(spec)}: {reason}")
        self.reason = reason


class UnknownTransportError(TransportSpecError):
    """A spec names a kind that does not exist (or not in that direction)."""


@dataclass(frozen=True)
class TransportSpec:
    """A spec that passed its kind's rules: `arg` is "" when the kind takes none."""

    role: str
    kind: str
    arg: str
    spec: str


@dataclass(frozen=True)
class KindRule:
    usage: str
    arg: str  # "none" | "optional" | "required"
    what: str  # what the argument is, for messages ("a shared-memory name")
    check: Callable[[str], str | None]  # the argument's problem, or None


def shm_name_problem(name: str, platform: str = sys.platform) -> str | None:
    """Why `name` is not a valid shared-memory block name on `platform`, or None."""
    if not isinstance(name, str) or not SHM_NAME_RE.match(name):
        return (
            f"shared-memory name {name!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter, digit or underscore"
        )
    if platform == "darwin" and len(name) > SHM_MACOS_MAX_NAME:
        return (
            f"shared-memory name {name!r} is {len(name)} characters; macOS allows at most "
            f"{SHM_MACOS_MAX_NAME} (its POSIX shm names are limited to 31 bytes including the '/')"
        )
    return None


def _controls(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _path_problem(arg: str) -> str | None:
    if len(arg) > MAX_PATH_CHARS:
        return f"path is {len(arg)} characters; at most {MAX_PATH_CHARS}"
    if _controls(arg):
        return "path contains a control character (newline, tab, NUL…)"
    return None


def _peer_name_problem(arg: str) -> str | None:
    if len(arg) > MAX_PEER_NAME_CHARS:
        return f"name is {len(arg)} characters; at most {MAX_PEER_NAME_CHARS}"
    if _controls(arg):
        return "name contains a control character (newline, tab, NUL…)"
    return None


def pattern_args(arg: str) -> tuple[int, int, float]:
    """(width, height, fps) of a pattern spec's argument ("" = the defaults); raises ConfigError."""
    if not arg:
        return (*DEFAULT_PATTERN_SIZE, DEFAULT_PATTERN_FPS)
    match = _PATTERN_ARG.match(arg)
    if match is None:
        raise ConfigError(f"pattern argument {arg!r}: expected WxH or WxH@FPS, e.g. 640x360@60")
    w, h = int(match.group(1)), int(match.group(2))
    fps = float(match.group(3)) if match.group(3) else DEFAULT_PATTERN_FPS
    lo, hi = PATTERN_SIDES
    if not (lo <= w <= hi and lo <= h <= hi):
        raise ConfigError(f"pattern size {w}x{h} is out of range (each side {lo}..{hi})")
    if not 0.0 < fps <= PATTERN_MAX_FPS:
        raise ConfigError(f"pattern fps {fps:g} is out of range (above 0, at most {PATTERN_MAX_FPS:g})")
    return w, h, fps


def _pattern_problem(arg: str) -> str | None:
    try:
        pattern_args(arg)
    except ConfigError as exc:
        return str(exc)
    return None


def _shm_problem(arg: str) -> str | None:
    return shm_name_problem(arg)


def _nothing(arg: str) -> str | None:
    return None


_PATH, _NAME = "a file path", "a name"
SOURCE_RULES: dict[str, KindRule] = {
    "pattern": KindRule("pattern[:WxH[@FPS]]", "optional", "a size", _pattern_problem),
    "image": KindRule("image:PATH", "required", _PATH, _path_problem),
    "video": KindRule("video:PATH", "required", _PATH, _path_problem),
    "shm": KindRule("shm:NAME", "required", "a shared-memory name", _shm_problem),
    "spout": KindRule("spout[:SENDER]", "optional", "a sender name", _peer_name_problem),
    "ndi": KindRule("ndi:SOURCE", "required", "an NDI source name", _peer_name_problem),
    "syphon": KindRule("syphon[:SERVER]", "optional", "a server name", _peer_name_problem),
}
SINK_RULES: dict[str, KindRule] = {
    "png": KindRule("png:FOLDER", "required", "an output folder", _path_problem),
    "null": KindRule("null", "none", "nothing", _nothing),
    "shm": KindRule("shm:NAME", "required", "a shared-memory name", _shm_problem),
    "spout": KindRule("spout[:SENDER]", "optional", "a sender name", _peer_name_problem),
    "ndi": KindRule("ndi[:NAME]", "optional", _NAME, _peer_name_problem),
    "syphon": KindRule("syphon[:SERVER]", "optional", "a server name", _peer_name_problem),
}
SOURCE_KINDS: tuple[str, ...] = tuple(SOURCE_RULES)
SINK_KINDS: tuple[str, ...] = tuple(SINK_RULES)
_TABLES = {SOURCE: (SOURCE_RULES, SINK_RULES, SINK), SINK: (SINK_RULES, SOURCE_RULES, SOURCE)}


def split_spec(spec: str) -> tuple[str, str]:
    """("kind", "argument") from "kind:argument"; the kind is case-insensitive."""
    kind, _, arg = spec.strip().partition(":")
    return kind.strip().lower(), arg.strip()


def parse_spec(spec: str, role: str) -> TransportSpec:
    """Check `spec` against its kind's rules for `role` ("source" or "sink"); raises TransportSpecError."""
    if not isinstance(spec, str):
        raise TransportSpecError(role, spec, "must be a string like 'shm:NAME'")
    if len(spec) > MAX_SPEC_CHARS:
        raise TransportSpecError(role, spec, f"is {len(spec)} characters; at most {MAX_SPEC_CHARS}")
    table, other, other_role = _TABLES[role]
    kind, arg = split_spec(spec)
    rule = table.get(kind)
    if rule is None:
        usages = ", ".join(r.usage for r in table.values())
        if kind in other:
            raise UnknownTransportError(role, spec, f"{kind!r} cannot be a frame {role}, only a {other_role}; "
                                                    f"{role}s: {usages}")
        raise UnknownTransportError(role, spec, f"unknown frame {role} kind {kind!r}; {role}s: {usages}")
    if rule.arg == "required" and not arg:
        raise TransportSpecError(role, spec, f"needs {rule.what} after the ':' ({rule.usage})")
    if rule.arg == "none" and arg:
        raise TransportSpecError(role, spec, f"{kind!r} takes no argument ({rule.usage})")
    problem = rule.check(arg) if arg else None
    if problem:
        raise TransportSpecError(role, spec, problem)
    return TransportSpec(role, kind, arg, spec)


def check_source_spec(spec: str) -> str:
    """`spec` unchanged if it is a valid source spec (the schema's validator); else ValueError.

    ValueError, not ConfigError, because pydantic turns only ValueError into a located
    message; that message shows the value, so the reason alone is raised.
    """
    try:
        parse_spec(spec, SOURCE)
    except TransportSpecError as exc:
        raise ValueError(exc.reason) from None
    return spec


def check_sink_spec(spec: str) -> str:
    """`spec` unchanged if it is a valid sink spec (the schema's validator); else ValueError."""
    try:
        parse_spec(spec, SINK)
    except TransportSpecError as exc:
        raise ValueError(exc.reason) from None
    return spec


def check_transports(source: str | None, sinks: Sequence[str]) -> list[TransportSpec]:
    """Every spec checked (source None = txt2img, no source); raises one ConfigError naming all problems."""
    checked: list[TransportSpec] = []
    problems: list[str] = []
    for role, spec in ([(SOURCE, source)] if source is not None else []) + [(SINK, s) for s in sinks]:
        try:
            checked.append(parse_spec(spec, role))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return checked
