from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bridges.control.osc_address import address_table
from bridges.control.recent_errors import RecentErrors
from bridges.control.web_page import READ_ONLY, PageControl, page_status
from engine.config.schema import LiveParams
from engine.errors import ConfigError
from engine.live.commands import Command
from engine.live.params import ParamStore
from engine.live.tempo import Tempo
from tests.paths import PRESETS


class Commands:
    def __init__(self) -> None:
        self.got: list[tuple[Command, tuple]] = []

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None:
        self.got.append((command, args))


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat", prompt_blend=[("a cat", 1.0), ("a dog", 0.5)]), tempo=Tempo())


def control(store: ParamStore, commands: Commands | None = None, **kw: Any) -> PageControl:
    return PageControl(store, commands or Commands(), presets_dir=PRESETS, **kw)


def test_values_cover_every_readable_address_by_path(store: ParamStore) -> None:
    store.set_smoothing("fx_hue", 2.0)
    values = control(store).values()
    expected = {a.path for a in address_table() if a.role != "command"}
    assert set(values) == expected
    assert values["/streamvj/prompt"] == "a cat" and values["/streamvj/t_index_list"] == [32, 45]
    assert values["/streamvj/prompt_blend"] == [("a cat", 1.0), ("a dog", 0.5)]
    assert values["/streamvj/smoothing/fx_hue"] == 2.0 and values["/streamvj/smoothing/delta"] == 0.0


def test_hello(store: ParamStore) -> None:
    errors = RecentErrors()
    errors.emit(logging.LogRecord("streamvj.show", logging.ERROR, __file__, 1, "preset 'x' not loaded", (), None))
    page = control(store, status=lambda: {"type": "status", "preset": "tiny", "fps": 30.0}, errors=errors)
    hello = json.loads(page.hello(writable=False))
    assert hello["type"] == "hello" and hello["writable"] is False and hello["prefix"] == "/streamvj"
    shipped = sorted(path.stem for path in PRESETS.glob("*.yaml"))
    assert "tiny" in shipped and "sd-turbo" in shipped
    assert hello["presets"] == {"type": "presets", "names": shipped, "current": "tiny"}
    assert hello["status"]["fps"] == 30.0 and hello["errors"][0]["text"] == "preset 'x' not loaded"
    assert hello["values"]["/streamvj/prompt_blend"] == [["a cat", 1.0], ["a dog", 0.5]]


def test_tick_sends_status_always_and_presets_and_errors_when_changed(store: ParamStore, tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: one\nload: {model: tiny}\n")
    errors = RecentErrors()
    preset = {"name": "one"}
    page = control(store, status=lambda: {"type": "status", "preset": preset["name"]}, errors=errors)
    page.presets_dir = tmp_path
    first = dict(page.tick())
    assert set(first) == {"status", "presets", "errors"}
    assert json.loads(first["presets"]) == {"type": "presets", "names": ["one"], "current": "one"}
    assert [k for k, _ in page.tick()] == ["status"]  # nothing else changed
    (tmp_path / "two.yaml").write_text("name: two\nload: {model: tiny}\n")
    errors.emit(logging.LogRecord("streamvj", logging.WARNING, __file__, 1, "sink gone", (), None))
    preset["name"] = "two"
    again = dict(page.tick())
    assert json.loads(again["presets"])["names"] == ["one", "two"] and json.loads(again["presets"])["current"] == "two"
    assert json.loads(again["errors"])["errors"][-1]["text"] == "sink gone"


def test_page_status_picks_the_fields() -> None:
    payload = {"state": "running", "preset": "tiny", "fps": 29.5, "latency_ms": 40.0, "skip_ratio": 0.1, "error": "",
               "backend": "eager", "vram_mb": 812.0}
    stats = {"fps_in": 30.0, "frames_received": 10, "frames_rendered": 9, "dropped_input": 1, "stages": {}}
    status = page_status(payload, stats)
    assert status == {"type": "status", **payload, "fps_in": 30.0, "frames_received": 10, "frames_rendered": 9,
                      "dropped_input": 1}


@pytest.mark.parametrize(("message", "reason"), [
    (b"\x00binary", "JSON text, not binary"),
    ("{not json", "not JSON"),
    ('{"osc": "/streamvj/seed"}', "expected"),
    ('{"osc": 5, "args": []}', "expected"),
    ('{"preview": "yes"}', "expected"),
    ('{"osc": "/streamvj/seed", "args": [1], "x": 1}', "expected"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
])
def test_parse_refuses_what_is_not_a_page_message(message: str | bytes, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        PageControl.parse(message)


def test_parse_accepts_the_two_forms() -> None:
    assert PageControl.parse('{"preview": true}') == {"preview": True}
    assert PageControl.parse('{"osc": "/streamvj/seed", "args": [7]}') == {"osc": "/streamvj/seed", "args": [7]}


def test_apply_goes_through_osc_routes(store: ParamStore) -> None:
    commands = Commands()
    page = control(store, commands)
    page.apply("/streamvj/guidance_scale", [2], writable=True)  # an int for a float: OSC's shaping
    page.apply("/streamvj/t_index_list", [10, 40], writable=True)
    page.apply("/streamvj/similarity_enabled", [True], writable=True)
    page.apply("/streamvj/prompt_blend", ["a bird", 1, "a fish", 0.5], writable=True)
    page.apply("/streamvj/smoothing/fx_hue", [1.5], writable=True)
    page.apply("/streamvj/preset/load", ["tiny"], writable=True)
    page.apply("/streamvj/reset", [], writable=True)
    page.apply("/streamvj/tempo/bpm", [128], writable=True)
    assert store.get("guidance_scale") == 2.0 and store.get("t_index_list") == [10, 40]
    assert store.get("similarity_enabled") is True and store.get("prompt_blend")[1] == ("a fish", 0.5)
    assert store.values()["smoothing"]["fx_hue"] == 1.5 and store.tempo.bpm == 128
    assert commands.got == [(Command.PRESET_LOAD, ("tiny",)), (Command.RESET, ())]


@pytest.mark.parametrize(("address", "args", "reason"), [
    ("/streamvj/guidance_scale", [35], "less than or equal to 20"),
    ("/streamvj/t_index_list", [1, 2, 3], "exactly 2 entries"),
    ("/streamvj/seed", [1.5], "expected an integer"),
    ("/streamvj/nope", [], "unknown address"),
    ("/streamvj/seed", [[[[[[1]]]]]], None),  # nested lists flatten as OSC arrays do: accepted
    ("/streamvj/seed", [{"a": 1}], "expected an integer"),
    ("/streamvj/prompt", ["a" * 5000], "at most 4000 characters"),
])
def test_apply_refuses_with_the_reason(store: ParamStore, address: str, args: list, reason: str | None) -> None:
    page = control(store)
    if reason is None:
        page.apply(address, args, writable=True)
        return
    with pytest.raises(ConfigError, match=reason):
        page.apply(address, args, writable=True)


def test_apply_refuses_everything_when_read_only(store: ParamStore) -> None:
    commands = Commands()
    page = control(store, commands)
    for address, args in (("/streamvj/guidance_scale", [2.0]), ("/streamvj/pause", [])):
        with pytest.raises(ConfigError, match=READ_ONLY.split(":")[0]):
            page.apply(address, args, writable=False)
    assert store.get("guidance_scale") == 1.2 and commands.got == []


def test_messages_are_compact_json() -> None:
    assert PageControl.value_message("/streamvj/seed", 7) == '{"type":"value","path":"/streamvj/seed","value":7}'
    assert json.loads(PageControl.refused("/x", "why")) == {"type": "refused", "address": "/x", "reason": "why"}
