"""Preset files: reading YAML safely, validating it into `Preset`, and naming every problem.

An error names the file, the line, the key path, the bad value and what is allowed.
Preset names that arrive over the network are plain ids resolved inside the presets
folder, never paths.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from engine.config.schema import LoadSettings, Preset
from engine.errors import ConfigError

PRESET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _yaml_positions(text: str) -> tuple[dict[tuple[Any, ...], int], list[str]]:
    """Line of every key path, and duplicate keys (PyYAML silently keeps the last one)."""
    lines: dict[tuple[Any, ...], int] = {}
    dups: list[str] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                key = k.value
                if key in seen:
                    dups.append(f"{k.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key")
                seen.add(key)
                walk(v, path + (key,))
                lines[path + (key,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines, dups


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Preset
    for part in loc:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        )
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) in (list, Union, types.UnionType):
        for arg in get_args(ann):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def format_validation_error(
    err: ValidationError, source: str, lines: dict[tuple[Any, ...], int] | None = None
) -> str:
    """One line per problem: file:line: key.path: what is wrong (got value)."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        line = next(
            ((lines or {})[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in (lines or {})), None
        )
        where = f"{source}:{line}" if line else source
        path = _dotted(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            msg += f"; allowed: {', '.join(allowed)}" if allowed else ""
            out.append(f"{where}: {path}: {msg}")
        elif e["type"] == "missing":
            out.append(f"{where}: {path}: required key is missing")
        else:
            reason = e["msg"].removeprefix("Value error, ")
            out.append(f"{where}: {path}: {reason} (got {_short(e.get('input'))})")
    return "\n".join(out)


def parse_preset(text: str, source_name: str) -> Preset:
    """Parse and validate preset YAML; every problem raises ConfigError naming file, key path and value."""
    try:
        lines, dups = _yaml_positions(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source_name}:{mark.line + 1}:{mark.column + 1}" if mark else source_name
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if dups:
        raise ConfigError("\n".join(f"{source_name}:{d}" for d in dups))
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source_name}: a preset must be a mapping with name, load, live… (got {type(data).__name__})"
        )
    try:
        return Preset.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source_name, lines)) from None


def load_preset(path: str | Path) -> Preset:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset: {exc}") from None
    return parse_preset(text, str(path))


def resolve_preset(presets_dir: str | Path, name: str) -> Path:
    """The file for preset `name` inside `presets_dir`; names are plain ids, never paths."""
    if not isinstance(name, str) or not PRESET_NAME_RE.fullmatch(name):
        raise ConfigError(f"preset name {_short(name)}: use 1-64 letters, digits, '_' or '-'")
    root = Path(presets_dir).resolve()
    for ext in (".yaml", ".yml"):
        candidate = (root / f"{name}{ext}").resolve()
        if candidate.parent == root and candidate.is_file():
            return candidate
    raise ConfigError(
        f"preset {name!r}: no {name}.yaml in {root}; available: {', '.join(list_presets(root)) or 'none'}"
    )


def list_presets(presets_dir: str | Path) -> list[str]:
    root = Path(presets_dir)
    names = {
        p.stem
        for p in root.glob("*.y*ml")
        if p.suffix in (".yaml", ".yml") and PRESET_NAME_RE.fullmatch(p.stem)
    }
    return sorted(names)


def diff_load_time(a: Preset, b: Preset) -> list[str]:
    """Load-time fields that differ between two presets; empty = switch without a rebuild.

    Returns "load.<field>" names, plus "steps" when len(live.t_index_list) changes.
    """
    changed = [f"load.{k}" for k in LoadSettings.model_fields if getattr(a.load, k) != getattr(b.load, k)]
    if a.steps != b.steps:
        changed.append("steps")
    return changed
