from __future__ import annotations

from typing import Any

import pytest

from bridges.control.osc_routes import OscRoutes
from engine.config.schema import LiveParams
from engine.errors import ConfigError
from engine.live.commands import Command
from engine.live.params import ParamStore
from engine.live.tempo import Tempo


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[Command, tuple[Any, ...]]] = []

    def on_command(self, command: Command, args: tuple[Any, ...]) -> None:
        self.calls.append((command, args))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def routes(sink: Sink) -> OscRoutes:
    store = ParamStore(LiveParams(), tempo=Tempo(120.0))
    return OscRoutes("/vj", store, sink, store.tempo)


def apply(routes: OscRoutes, path: str, *args: Any) -> None:
    addr = routes.get(path)
    assert addr is not None, path
    routes.apply(addr, args)


def test_exact_addresses_only(routes: OscRoutes) -> None:
    assert routes.get("/vj/guidance_scale") is not None
    assert routes.get("/vj/guidance_scale/") is None and routes.get("/streamvj/guidance_scale") is None


def test_parameters_and_smoothing_go_to_the_store(routes: OscRoutes) -> None:
    apply(routes, "/vj/seed", 12.0)
    apply(routes, "/vj/smoothing/fx_hue", 1)
    assert routes.store.get("seed") == 12 and routes.store.get("smoothing") == {"fx_hue": 1.0}


def test_show_commands_go_to_the_sink_live_ones_do_not(routes: OscRoutes, sink: Sink) -> None:
    apply(routes, "/vj/preset/load", "tiny")
    apply(routes, "/vj/pause", 1.0)
    apply(routes, "/vj/pause", 0.0)  # a button's release
    apply(routes, "/vj/tempo/bpm", 90)
    apply(routes, "/vj/prompt/transition", "x", 1)
    assert sink.calls == [(Command.PRESET_LOAD, ("tiny",)), (Command.PAUSE, ())]
    assert routes.tempo is not None and routes.tempo.bpm == 90.0 and routes.store.get("prompt") == "x"


def test_validation_is_the_schemas(routes: OscRoutes) -> None:
    with pytest.raises(ConfigError, match="less than or equal to 20"):
        apply(routes, "/vj/guidance_scale", 25.0)
    with pytest.raises(ConfigError, match="needs exactly 2 entries"):
        apply(routes, "/vj/t_index_list", 1, 2, 3)
