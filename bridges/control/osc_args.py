"""Argument shaping: OSC arguments -> the Python values the engine checks.

This converts OSC wire types only (arrays flattened, a TouchDesigner float that is an
exact integer taken as an int, T/F or 0/1 as a bool, a button's press vs release) and
counts arguments. Ranges, lengths and choices are not checked here: the schema
(ParamStore.validate) and the code running a command check them, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError, shown
from engine.live.commands import Arg


def flat(args: tuple[Any, ...] | list[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        out.extend(flat(a) if isinstance(a, list) else [a])
    return out


def _tname(x: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", bytes: "blob", type(None): "nil"}.get(
        type(x), type(x).__name__
    )


def _got(x: Any) -> str:
    return f"got {_tname(x)} {shown(x)}"


def _number(x: Any) -> float | int:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"expected a number, {_got(x)}")
    return x


def _float(x: Any) -> float:
    return float(_number(x))


def _integer(x: Any) -> int:
    # TouchDesigner CHOPs send every channel as a float: accept exact integers.
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ConfigError(f"expected an integer, {_got(x)}")
    return x


def _boolean(x: Any) -> bool:
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float)) and x in (0, 1):
        return bool(x)
    raise ConfigError(f"expected true/false (T/F or 0/1), {_got(x)}")


def _string(x: Any) -> str:
    if not isinstance(x, str):
        raise ConfigError(f"expected a string, {_got(x)}")
    return x


def _arity(args: list[Any], lo: int, hi: int, what: str) -> None:
    if not lo <= len(args) <= hi:
        n = f"{lo}" if lo == hi else f"{lo}-{hi}"
        raise ConfigError(f"expects {n} argument(s) ({what}), got {len(args)}")


def _pairs(args: list[Any], first: Callable[[Any], Any]) -> list[tuple[Any, float]]:
    if len(args) % 2:
        raise ConfigError(f"expects pairs (item, weight), got {len(args)} arguments")
    return [(first(args[i]), _number(args[i + 1])) for i in range(0, len(args), 2)]


_SCALAR: dict[str, Callable[[Any], Any]] = {
    "float": _number,
    "int": _integer,
    "bool": _boolean,
    "str": _string,
    "enum": _string,
}
_BY_TYPE: dict[type, Callable[[Any], Any]] = {str: _string, float: _float, int: _integer}


def shape_value(kind: str, args: tuple[Any, ...]) -> Any:
    """OSC arguments -> the Python value the ParamStore validates, for a live parameter of `kind`."""
    values = flat(args)
    if kind in _SCALAR:
        _arity(values, 1, 1, kind)
        return _SCALAR[kind](values[0])
    if kind == "int_list":
        return [_integer(x) for x in values]
    if kind == "prompt_blend":
        return _pairs(values, _string)
    if kind == "seed_blend":
        return _pairs(values, _integer)
    raise ConfigError(f"parameter kind {kind!r} is not settable over OSC")


def shape_args(spec: tuple[Arg, ...], args: tuple[Any, ...]) -> tuple[Any, ...]:
    """OSC arguments -> a command's positional arguments, each of its Arg's Python type."""
    values = flat(args)
    required = sum(not a.optional for a in spec)
    what = ", ".join(f"[{a.name}]" if a.optional else a.name for a in spec)
    _arity(values, required, len(spec), what)
    return tuple(_BY_TYPE[a.type](v) for a, v in zip(spec, values, strict=False))


def is_press(args: tuple[Any, ...]) -> bool:
    """A trigger fires on no argument or a non-zero value; 0/False is a button's release."""
    values = flat(args)
    _arity(values, 0, 1, "none, or a button value")
    if not values or values[0] is None:
        return True
    if isinstance(values[0], bool):
        return values[0]
    return _number(values[0]) != 0
