"""The command line's flags: parsing helpers and how run's flags override a preset."""

from __future__ import annotations

import argparse

import pytest

from engine.config.cli import apply_overrides, build_parser, int_list
from engine.config.preset_files import load_preset
from engine.errors import ConfigError
from tests.paths import PRESETS


def _run_args(*argv: str) -> argparse.Namespace:
    commands = dict.fromkeys(("run", "presets", "bridges", "osc", "bench"), lambda args: 0)
    return build_parser(commands, PRESETS).parse_args(["run", *argv])


def test_int_list_reads_commas_and_refuses_words():
    assert int_list("32,45") == [32, 45]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        int_list("32,x")


def test_run_flags_override_the_preset_through_the_schema():
    preset = apply_overrides(load_preset(PRESETS / "tiny.yaml"),
                             _run_args("--width", "64", "--sink", "null", "--osc-feedback", "127.0.0.1:9002"))
    assert (preset.load.width, preset.load.sinks) == (64, ["null"])
    assert (preset.osc.feedback.host, preset.osc.feedback.port) == ("127.0.0.1", 9002)


@pytest.mark.parametrize(("argv", "message"), [
    (["--width", "100"], "command line: load.width: Input should be a multiple of 8"),
    (["--osc-feedback", "nowhere"], "--osc-feedback must be HOST:PORT"),
    (["--sink", "image:x.png"], "load.sinks[0]"),
])
def test_bad_flags_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        apply_overrides(load_preset(PRESETS / "tiny.yaml"), _run_args(*argv))
