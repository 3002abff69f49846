"""Preset files: reading YAML safely, validating it into `Preset`, and naming every problem.

An error names the file, the line, the key path, the bad value and what is allowed.
Preset names that arrive over the network are plain ids resolved inside the presets
folder, never paths.

Hostile files are refused cheaply, before anything is built from them: a preset is at most
MAX_PRESET_BYTES, and its YAML may nest at most MAX_YAML_DEPTH deep and expand (aliases
counted as often as they are used) to at most MAX_YAML_NODES nodes, checked on PyYAML's
event stream with a counter per anchor, so a 500-byte "billion laughs" costs a few kB.
Preset files are regular files: a symbolic link is refused, never followed (a preset name
sent over OSC could otherwise read any file the link points at, and echo parts of it back
in validation errors).

Windows paths in presets: in a double-quoted YAML string a backslash starts an escape, so
"C:\\temp\\new.mp4" silently holds a tab and a newline and "C:\\Users\\vj" is a syntax error.
Both are refused with the fix (single quotes or forward slashes), never "corrected".
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from engine.config.schema import LoadSettings, Preset
from engine.errors import ConfigError, shown

PRESET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PRESET_EXTENSIONS = (".yaml", ".yml")
MAX_PRESET_BYTES = 64 * 1024  # the shipped presets are ~1 kB; a large MIDI map stays far below
MAX_YAML_NODES = 20_000  # after alias expansion; 256 MIDI mappings of 8 keys are ~4,500
MAX_YAML_DEPTH = 32  # presets nest 4 deep; PyYAML's composer recurses once per level

# A drive letter and one backslash inside a double-quoted scalar's source text: a Windows path
# whose backslashes YAML reads as escapes ("C:\\clips" with the backslash doubled is fine).
_QUOTED_WINDOWS_PATH = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]:\\(?!\\)")
_WINDOWS_PATH_FIX = ("write Windows paths in single quotes ('C:\\clips\\loop.mp4'), unquoted, or with "
                     "forward slashes (C:/clips/loop.mp4): in double quotes YAML reads a backslash as an escape")
_COLLECTION_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_yaml_bounds(text: str, source_name: str) -> None:
    """Refuse YAML that nests too deep or expands (through aliases) to too many nodes.

    Walks the event stream once (PyYAML's parser keeps an explicit stack, it does not
    recurse): each anchor's expanded size is recorded when its node ends, and an alias adds
    that size, so nested aliases are counted without expanding anything.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded node count
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, expanded count when it started)
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        where = f"{source_name}:{event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in open_nodes):
                raise ConfigError(f"{where}: alias *{event.anchor} refers to a node that contains it")
            total += sizes.get(event.anchor, 0)  # undefined: the composer reports it with its position
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if event.style == '"':
                _check_quoted_path(text[event.start_mark.index:event.end_mark.index], where)
        elif isinstance(event, _COLLECTION_START):
            total += 1
            open_nodes.append((event.anchor, total - 1))
            sizes.pop(event.anchor, None)  # a re-used anchor names this node from here on
            if len(open_nodes) > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}: YAML nests deeper than {MAX_YAML_DEPTH} levels; a preset needs 4")
        elif isinstance(event, _COLLECTION_END):
            anchor, started = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = total - started
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: YAML expands to more than {MAX_YAML_NODES} values (aliases counted each time "
                "they are used); refusing it"
            )


def _check_quoted_path(source: str, where: str) -> None:
    """Refuse a double-quoted scalar holding a Windows path with single backslashes."""
    if _QUOTED_WINDOWS_PATH.search(source):
        raise ConfigError(f"{where}: {source} is a Windows path in double quotes; {_WINDOWS_PATH_FIX}")


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
            out.append(f"{where}: {path}: {reason} (got {shown(e.get('input'))})")
    return "\n".join(out)


def parse_preset(text: str, source_name: str) -> Preset:
    """Parse and validate preset YAML; every problem raises ConfigError naming file, key path and value."""
    if len(text) > MAX_PRESET_BYTES:
        raise ConfigError(f"{source_name}: preset is {len(text)} characters; at most {MAX_PRESET_BYTES}")
    try:
        _check_yaml_bounds(text, source_name)
        lines, dups = _yaml_positions(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source_name}:{mark.line + 1}:{mark.column + 1}" if mark else source_name
        problem = getattr(exc, "problem", None) or str(exc)
        if "escape" in problem:  # "found unknown escape character", "expected escape sequence of 8 ..."
            problem += f"; {_WINDOWS_PATH_FIX}"
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


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be a preset file (a link, not a regular file, too large), or None."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"cannot read preset: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return (
            "is a symbolic link; presets must be regular files (a link would let a preset name "
            "read any file it points at): copy the file here instead"
        )
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size > MAX_PRESET_BYTES:
        return f"is {st.st_size} bytes; a preset file is at most {MAX_PRESET_BYTES} bytes"
    return None


def _read_text(path: Path) -> str:
    # O_NOFOLLOW: the file cannot be swapped for a link between the check and the read.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    problem = _file_problem(path)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        problem = _file_problem(path) or f"cannot read preset: {exc}"
        raise ConfigError(f"{path}: {problem}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_PRESET_BYTES + 1)
    if len(data) > MAX_PRESET_BYTES:
        raise ConfigError(f"{path}: a preset file is at most {MAX_PRESET_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read preset: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_preset(path: str | Path) -> Preset:
    """Read and validate one preset file (a regular file, never a symbolic link)."""
    path = Path(path)
    return parse_preset(_read_text(path), str(path))


def preset_file(value: str, presets_dir: str | Path) -> Path:
    """The file a `--preset` argument means: a .yaml/.yml path, or a preset name in `presets_dir`.

    The extension is matched in any case (Windows' file names are case-insensitive and
    Explorer shows "Neon.YAML" as it was saved); spaces and backslashes are the shell's and
    Path's business, not ours."""
    path = Path(value)
    if path.suffix.lower() in PRESET_EXTENSIONS:
        if not os.path.lexists(path):
            raise ConfigError(f"preset file {value!r} does not exist (relative paths start at {Path.cwd()})")
        return path
    return resolve_preset(presets_dir, value)


def resolve_preset(presets_dir: str | Path, name: str) -> Path:
    """The file for preset `name` inside `presets_dir`; names are plain ids, never paths."""
    if not isinstance(name, str) or not PRESET_NAME_RE.fullmatch(name):
        looks_like_path = isinstance(name, str) and any(c in name for c in "/\\:")
        hint = "; a preset file is given by its path ending in .yaml" if looks_like_path else ""
        raise ConfigError(f"preset name {shown(name)}: use 1-64 letters, digits, '_' or '-'{hint}")
    root = Path(presets_dir).resolve()
    problems = []
    for ext in PRESET_EXTENSIONS:
        candidate = root / f"{name}{ext}"
        if not os.path.lexists(candidate):
            continue
        problem = _file_problem(candidate)
        if problem is None:
            return candidate
        problems.append(f"{candidate.name} {problem}")
    if problems:
        raise ConfigError(f"preset {name!r} in {root}: {'; '.join(problems)}")
    raise ConfigError(
        f"preset {name!r}: no {name}.yaml in {root}; available: {', '.join(list_presets(root)) or 'none'}"
    )


def list_presets(presets_dir: str | Path) -> list[str]:
    """Names `resolve_preset` accepts: regular files (no links), valid names, not too large.

    Whether their contents validate is `load_preset`'s answer (the `presets` command shows it).
    """
    root = Path(presets_dir)
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return sorted({
        p.stem for p in entries
        if p.suffix in PRESET_EXTENSIONS and PRESET_NAME_RE.fullmatch(p.stem) and _file_problem(p) is None
    })


def diff_load_time(a: Preset, b: Preset) -> list[str]:
    """Load-time fields that differ between two presets; empty = switch without a rebuild.

    Returns "load.<field>" names, plus "steps" when len(live.t_index_list) changes.
    """
    changed = [f"load.{k}" for k in LoadSettings.model_fields if getattr(a.load, k) != getattr(b.load, k)]
    if a.steps != b.steps:
        changed.append("steps")
    return changed
