from __future__ import annotations

from typing import Any

import pytest

from bridges.control.osc_args import is_press, shape_args, shape_value
from engine.errors import ConfigError
from engine.live.commands import Command


@pytest.mark.parametrize(
    "kind, args, value",
    [
        ("float", (2,), 2),  # int -> float is the schema's call (it accepts ints)
        ("int", (12.0,), 12),  # a TouchDesigner CHOP sends every channel as a float
        ("bool", (1.0,), True),
        ("bool", (False,), False),
        ("enum", ("slerp",), "slerp"),
        ("int_list", ([10, 20],), [10, 20]),  # an OSC array is flattened
        ("int_list", (), []),  # the count is the schema's to check
        ("prompt_blend", ("a", 1.0, "b", 2), [("a", 1.0), ("b", 2)]),
        ("seed_blend", (5, 0.5), [(5, 0.5)]),
        ("seed_blend", (), []),
    ],
)
def test_shape_value_converts_osc_types(kind: str, args: tuple[Any, ...], value: Any) -> None:
    assert shape_value(kind, args) == value


def test_shape_value_checks_no_ranges() -> None:
    # Ranges are the schema's (ParamStore.validate): shaping passes any well-typed value on.
    assert shape_value("float", (1e9,)) == 1e9
    assert shape_value("int_list", tuple(range(60))) == list(range(60))
    assert shape_value("enum", ("cubic",)) == "cubic"


@pytest.mark.parametrize(
    "kind, args, reason",
    [
        ("float", ("abc",), "expected a number, got string 'abc'"),
        ("int", (1.5,), "expected an integer, got float 1.5"),
        ("bool", (2,), "expected true/false"),
        ("str", (3,), "expected a string, got int 3"),
        ("float", (), "expects 1 argument(s) (float), got 0"),
        ("prompt_blend", ("a",), "expects pairs"),
    ],
)
def test_shape_value_refuses_wrong_types(kind: str, args: tuple[Any, ...], reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        shape_value(kind, args)
    assert reason in str(exc.value)


def test_a_huge_wrong_value_is_quoted_short() -> None:
    with pytest.raises(ConfigError) as exc:
        shape_value("float", ("x" * 60_000,))
    assert len(str(exc.value)) < 200 and "60002 chars" in str(exc.value)


def test_shape_args_by_command() -> None:
    spec = Command.PROMPT_TRANSITION_BEATS.args
    assert shape_args(spec, ("text", 4)) == ("text", 4.0)
    assert shape_args(spec, ("text", 4.0, "bar")) == ("text", 4.0, "bar")
    assert shape_args(Command.SEED_TRANSITION.args, (7.0, 1)) == (7, 1.0)
    with pytest.raises(ConfigError, match=r"expects 2-3 argument\(s\) \(text, beats, \[quantum\]\), got 1"):
        shape_args(spec, ("text",))
    with pytest.raises(ConfigError, match="expected a string"):
        shape_args(spec, ("text", 4.0, 1))


@pytest.mark.parametrize(
    "args, pressed", [((), True), ((None,), True), ((1.0,), True), ((True,), True), ((0,), False), ((False,), False)]
)
def test_is_press(args: tuple[Any, ...], pressed: bool) -> None:
    assert is_press(args) is pressed


def test_a_trigger_takes_at_most_one_value() -> None:
    with pytest.raises(ConfigError, match="expects 0-1 argument"):
        is_press((1, 1))
