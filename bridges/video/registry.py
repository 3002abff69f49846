"""Frame bridges by short kind name, and the CLI spec parser: "kind" or "kind:argument".

    pattern | pattern:640x360 | pattern:640x360@60      image:path.png     video:clip.mp4
    shm:streamvj_in    spout | spout:TDSyphonSpoutOut    ndi:MY-PC (TouchDesigner)
    syphon | syphon:Name    png:out/frames    null

The spec splits at the first ':' only, so arguments keep theirs ("image:C:\\img.png",
"ndi:MY-PC (TD)"). The shared-memory bridge is imported only when asked for.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridges.video.files import ImageFileSource, NullSink, PngSequenceSink, VideoFileSource
from bridges.video.ndi import NdiSink, NdiSource
from bridges.video.pattern import PatternSource
from bridges.video.spout import SpoutSink, SpoutSource
from bridges.video.syphon import SyphonSink, SyphonSource
from engine.errors import BridgeUnavailable, ConfigError
from engine.realtime.frames import FrameSink, FrameSource

DEFAULT_PATTERN_SIZE = (512, 512)
DEFAULT_PATTERN_FPS = 30.0
_PATTERN_ARG = re.compile(r"^(\d+)x(\d+)(?:@(\d+(?:\.\d+)?))?$")


class UnknownBridgeError(ConfigError):
    """A frame bridge spec names a kind that does not exist (or not in that direction)."""


def _shm_class(attr: str) -> Callable[[], type]:
    def load() -> type:
        try:
            module = importlib.import_module("bridges.video.shm")
        except ImportError as exc:
            raise BridgeUnavailable(
                f"the shared-memory bridge (bridges/video/shm.py) failed to import: {exc}"
            ) from exc
        return getattr(module, attr)

    return load


def _fixed(cls: type) -> Callable[[], type]:
    return lambda: cls


@dataclass(frozen=True)
class _Kind:
    load: Callable[[], type]
    build: Callable[[type, str, str], Any]  # (class, argument, full spec) -> bridge
    usage: str


def _require(arg: str, spec: str, what: str) -> str:
    if not arg:
        raise ConfigError(f"frame bridge spec {spec!r} needs {what} after the ':'")
    return arg


def _pattern(cls: type, arg: str, spec: str) -> Any:
    if not arg:
        return cls(*DEFAULT_PATTERN_SIZE, fps=DEFAULT_PATTERN_FPS)
    match = _PATTERN_ARG.match(arg)
    if match is None:
        raise ConfigError(f"pattern spec {spec!r}: expected 'pattern', 'pattern:WxH' or 'pattern:WxH@FPS'")
    fps = float(match.group(3)) if match.group(3) else DEFAULT_PATTERN_FPS
    return cls(int(match.group(1)), int(match.group(2)), fps=fps)


_SOURCES: dict[str, _Kind] = {
    "pattern": _Kind(_fixed(PatternSource), _pattern, "pattern[:WxH[@FPS]]"),
    "image": _Kind(_fixed(ImageFileSource), lambda c, a, s: c(_require(a, s, "a file path")), "image:PATH"),
    "video": _Kind(_fixed(VideoFileSource), lambda c, a, s: c(_require(a, s, "a file path")), "video:PATH"),
    "shm": _Kind(
        _shm_class("ShmSource"), lambda c, a, s: c(_require(a, s, "a shared-memory name")), "shm:NAME"
    ),
    "spout": _Kind(_fixed(SpoutSource), lambda c, a, s: c(a), "spout[:SENDER]"),
    "ndi": _Kind(_fixed(NdiSource), lambda c, a, s: c(_require(a, s, "an NDI source name")), "ndi:SOURCE"),
    "syphon": _Kind(_fixed(SyphonSource), lambda c, a, s: c(a), "syphon[:SERVER]"),
}

_SINKS: dict[str, _Kind] = {
    "png": _Kind(
        _fixed(PngSequenceSink), lambda c, a, s: c(_require(a, s, "an output folder")), "png:FOLDER"
    ),
    "null": _Kind(_fixed(NullSink), lambda c, a, s: c(), "null"),
    "shm": _Kind(
        _shm_class("ShmSink"), lambda c, a, s: c(_require(a, s, "a shared-memory name")), "shm:NAME"
    ),
    "spout": _Kind(_fixed(SpoutSink), lambda c, a, s: c(a) if a else c(), "spout[:SENDER]"),
    "ndi": _Kind(_fixed(NdiSink), lambda c, a, s: c(a) if a else c(), "ndi[:NAME]"),
    "syphon": _Kind(_fixed(SyphonSink), lambda c, a, s: c(a) if a else c(), "syphon[:SERVER]"),
}

SOURCE_KINDS: tuple[str, ...] = tuple(_SOURCES)
SINK_KINDS: tuple[str, ...] = tuple(_SINKS)


def split_spec(spec: str) -> tuple[str, str]:
    """("kind", "argument") from "kind:argument"; the kind is case-insensitive."""
    kind, _, arg = spec.strip().partition(":")
    return kind.strip().lower(), arg.strip()


def _entry(table: dict[str, _Kind], other: dict[str, _Kind], kind: str, spec: str, role: str) -> _Kind:
    entry = table.get(kind)
    if entry is None:
        usages = ", ".join(k.usage for k in table.values())
        if kind in other:
            raise UnknownBridgeError(f"{kind!r} cannot be a frame {role} (spec {spec!r}); {role}s: {usages}")
        raise UnknownBridgeError(f"unknown frame {role} kind {kind!r} in spec {spec!r}; {role}s: {usages}")
    return entry


def _lookup_class(table: dict[str, _Kind], other: dict[str, _Kind], kind: str, role: str) -> type:
    return _entry(table, other, kind.strip().lower(), kind, role).load()


def _lookup(
    table: dict[str, _Kind], other: dict[str, _Kind], spec: str, role: str
) -> tuple[_Kind, type, str]:
    kind, arg = split_spec(spec)
    entry = _entry(table, other, kind, spec, role)
    cls = entry.load()
    ok, message = cls.is_available()
    if not ok:
        raise BridgeUnavailable(message)
    return entry, cls, arg


def source_class(kind: str) -> type:
    """The FrameSource class for `kind` (the shm one imported on demand)."""
    return _lookup_class(_SOURCES, _SINKS, kind, "source")


def sink_class(kind: str) -> type:
    """The FrameSink class for `kind` (the shm one imported on demand)."""
    return _lookup_class(_SINKS, _SOURCES, kind, "sink")


def make_source(spec: str) -> FrameSource:
    """A FrameSource (not yet opened) from a CLI spec such as "spout:TDSyphonSpoutOut"."""
    entry, cls, arg = _lookup(_SOURCES, _SINKS, spec, "source")
    return entry.build(cls, arg, spec)


def make_sink(spec: str) -> FrameSink:
    """A FrameSink (not yet opened) from a CLI spec such as "png:out/frames"."""
    entry, cls, arg = _lookup(_SINKS, _SOURCES, spec, "sink")
    return entry.build(cls, arg, spec)


def bridge_status() -> list[tuple[str, str, bool, str]]:
    """(role, kind, available, message) for every bridge: what `--list-bridges` would print."""
    rows: list[tuple[str, str, bool, str]] = []
    for role, table in (("source", _SOURCES), ("sink", _SINKS)):
        for kind, entry in table.items():
            try:
                ok, message = entry.load().is_available()
            except BridgeUnavailable as exc:
                ok, message = False, str(exc)
            rows.append((role, kind, ok, message))
    return rows
