"""Frame bridges by short kind name: a checked spec ("kind" or "kind:argument") -> a bridge object.

The syntax rules of every kind (which kinds exist in which direction, what argument each
takes, valid shm names, pattern sizes, paths) live in engine/config/transport_specs.py,
the same rules the preset schema applies at load time; this module maps each kind to its
class and builds it from a spec those rules accepted. The shared-memory bridge is imported
only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridges.video.files import ImageFileSource, NullSink, PngSequenceSink, VideoFileSource
from bridges.video.ndi import NdiSink, NdiSource
from bridges.video.pattern import PatternSource
from bridges.video.spout import SpoutSink, SpoutSource
from bridges.video.syphon import SyphonSink, SyphonSource
from engine.config.transport_specs import (
    SINK,
    SINK_KINDS,
    SOURCE,
    SOURCE_KINDS,
    TransportSpec,
    UnknownTransportError,
    check_transports,
    parse_spec,
    pattern_args,
    split_spec,
)
from engine.errors import BridgeUnavailable
from engine.realtime.frames import FrameSink, FrameSource

__all__ = [
    "SINK_KINDS", "SOURCE_KINDS", "UnknownBridgeError", "bridge_status", "make_sink", "make_source",
    "preflight", "sink_class", "source_class", "split_spec",
]

UnknownBridgeError = UnknownTransportError  # the name callers and tests know


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
    build: Callable[[type, str], Any]  # (class, checked argument) -> bridge


def _pattern(cls: type, arg: str) -> Any:
    w, h, fps = pattern_args(arg)
    return cls(w, h, fps=fps)


def _named(cls: type, arg: str) -> Any:
    """Optional name: the class's own default when the spec has none."""
    return cls(arg) if arg else cls()


# Keys must be exactly transport_specs' kinds (tests/bridges/video/test_registry.py checks it).
_SOURCES: dict[str, _Kind] = {
    "pattern": _Kind(_fixed(PatternSource), _pattern),
    "image": _Kind(_fixed(ImageFileSource), lambda c, a: c(a)),
    "video": _Kind(_fixed(VideoFileSource), lambda c, a: c(a)),
    "shm": _Kind(_shm_class("ShmSource"), lambda c, a: c(a)),
    "spout": _Kind(_fixed(SpoutSource), lambda c, a: c(a)),
    "ndi": _Kind(_fixed(NdiSource), lambda c, a: c(a)),
    "syphon": _Kind(_fixed(SyphonSource), lambda c, a: c(a)),
}

_SINKS: dict[str, _Kind] = {
    "png": _Kind(_fixed(PngSequenceSink), lambda c, a: c(a)),
    "null": _Kind(_fixed(NullSink), lambda c, a: c()),
    "shm": _Kind(_shm_class("ShmSink"), lambda c, a: c(a)),
    "spout": _Kind(_fixed(SpoutSink), _named),
    "ndi": _Kind(_fixed(NdiSink), _named),
    "syphon": _Kind(_fixed(SyphonSink), _named),
}
_TABLES = {SOURCE: _SOURCES, SINK: _SINKS}


def _available_class(checked: TransportSpec) -> type:
    cls = _TABLES[checked.role][checked.kind].load()
    ok, message = cls.is_available()
    if not ok:
        raise BridgeUnavailable(message)
    return cls


def _make(spec: str, role: str) -> Any:
    checked = parse_spec(spec, role)
    cls = _available_class(checked)
    return _TABLES[role][checked.kind].build(cls, checked.arg)


def _class_of(kind: str, role: str) -> type:
    entry = _TABLES[role].get(kind.strip().lower())
    if entry is None:
        parse_spec(kind, role)  # raises UnknownTransportError listing the kinds
        raise AssertionError(f"{kind!r} passed transport_specs but has no bridge")
    return entry.load()


def source_class(kind: str) -> type:
    """The FrameSource class for `kind` (the shm one imported on demand)."""
    return _class_of(kind, SOURCE)


def sink_class(kind: str) -> type:
    """The FrameSink class for `kind` (the shm one imported on demand)."""
    return _class_of(kind, SINK)


def make_source(spec: str) -> FrameSource:
    """A FrameSource (not yet opened) from a CLI spec such as "spout:TDSyphonSpoutOut"."""
    return _make(spec, SOURCE)


def make_sink(spec: str) -> FrameSink:
    """A FrameSink (not yet opened) from a CLI spec such as "png:out/frames"."""
    return _make(spec, SINK)


def preflight(source: str | None, sinks: Sequence[str]) -> None:
    """Check every spec before anything heavy happens (model loading takes seconds to minutes).

    Syntax (transport_specs' rules) and whether each kind's platform library is installed;
    nothing is opened or created. `source` None: txt2img, no source. Raises ConfigError or
    BridgeUnavailable naming every problem at once.
    """
    checked = check_transports(source, sinks)
    missing: list[str] = []
    for spec in checked:
        try:
            _available_class(spec)
        except BridgeUnavailable as exc:
            missing.append(f"{spec.role} {spec.spec!r}: {exc}")
    if missing:
        raise BridgeUnavailable("\n".join(missing))


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
