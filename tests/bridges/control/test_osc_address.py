from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridges.control.osc_address import address_table
from engine.config.schema import LIVE_SPECS, SMOOTHABLE, LiveParams
from engine.live.commands import Command


def test_every_parameter_smoothing_and_command_has_one_address() -> None:
    table = address_table("/vj/")
    paths = [a.path for a in table]
    assert len(set(paths)) == len(paths) and all(p.startswith("/vj/") and "//" not in p for p in paths)
    assert {a.name for a in table if a.role == "param"} == set(LIVE_SPECS) - {"smoothing"}
    assert {a.name for a in table if a.role == "smoothing"} == set(SMOOTHABLE)
    assert [a.command for a in table if a.role == "command"] == list(Command)


def test_typetags_derive_from_kinds_and_arguments() -> None:
    tags = {a.name: a.typetag for a in address_table()}
    assert (tags["guidance_scale"], tags["seed"], tags["similarity_enabled"]) == ("f", "i", "T")
    assert tags["prompt_blend"] == "sf…"
    assert tags[Command.PAUSE.address] == "N"
    assert tags[Command.PROMPT_TRANSITION_BEATS.address] == "sf[s]"
    assert tags[Command.SEED_TRANSITION.address] == "if"
    assert {a.name: a.typetag for a in address_table(steps=3)}["t_index_list"] == "iii"


def test_smoothing_range_is_the_schemas() -> None:
    (lo, hi), = {(a.min, a.max) for a in address_table() if a.role == "smoothing"}
    name = SMOOTHABLE[0]
    for ok in (lo, hi):
        LiveParams.model_validate({"smoothing": {name: ok}})
    for bad in (lo - 0.001, hi + 0.001):
        with pytest.raises(ValidationError):
            LiveParams.model_validate({"smoothing": {name: bad}})
