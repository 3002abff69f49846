from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridges.osc import address_table
from bridges.oscquery import ACCESS_RW, ACCESS_WRITE, OscQueryServer
from engine.params import ParamStore
from engine.preset_schema import LiveParams

PRESETS = Path(__file__).resolve().parents[2] / "presets"


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat"))


@pytest.fixture
def query(store: ParamStore) -> Iterator[OscQueryServer]:
    with OscQueryServer(store, osc_port=9000, presets_dir=PRESETS) as srv:
        yield srv


def get(srv: OscQueryServer, path: str) -> tuple[int, Any]:
    host, port = srv.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_host_info(query: OscQueryServer) -> None:
    status, info = get(query, "/?HOST_INFO")
    assert status == 200
    assert (info["OSC_PORT"], info["OSC_TRANSPORT"], info["OSC_IP"]) == (9000, "UDP", "127.0.0.1")
    assert info["EXTENSIONS"]["VALUE"] is True and info["EXTENSIONS"]["LISTEN"] is False


def test_bound_to_loopback(query: OscQueryServer) -> None:
    assert query.address[0] == "127.0.0.1"


def test_tree_has_every_address(query: OscQueryServer) -> None:
    status, root = get(query, "/")
    assert status == 200 and root["FULL_PATH"] == "/"
    for addr in address_table():
        node = root
        for part in addr.path.strip("/").split("/"):
            node = node["CONTENTS"][part]
        assert node["FULL_PATH"] == addr.path
        assert node["DESCRIPTION"] == addr.doc
        assert node["ACCESS"] in (ACCESS_RW, ACCESS_WRITE)
        assert "TYPE" in node


def test_param_nodes_carry_type_range_value(query: OscQueryServer, store: ParamStore) -> None:
    store.set("guidance_scale", 2.5)
    _, node = get(query, "/streamvj/guidance_scale")
    assert node == {
        "FULL_PATH": "/streamvj/guidance_scale",
        "DESCRIPTION": "Classifier-free guidance scale",
        "ACCESS": ACCESS_RW,
        "TYPE": "f",
        "VALUE": [2.5],
        "RANGE": [{"MIN": 0.0, "MAX": 20.0}],
    }
    _, t_index = get(query, "/streamvj/t_index_list")
    assert (t_index["TYPE"], t_index["VALUE"]) == ("ii", [32, 45])
    assert t_index["RANGE"] == [{"MIN": 0, "MAX": 49}] * 2
    _, interp = get(query, "/streamvj/prompt_interp")
    assert interp["RANGE"] == [{"VALS": ["linear", "slerp"]}]
    _, enabled = get(query, "/streamvj/similarity_enabled")
    assert (enabled["TYPE"], enabled["VALUE"]) == ("T", [False])


def test_value_follows_store(query: OscQueryServer, store: ParamStore) -> None:
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a cat"]})
    store.set("prompt", "a dog")
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a dog"]})
    store.set_smoothing("fx_hue", 2.0)
    assert get(query, "/streamvj/smoothing/fx_hue?VALUE") == (200, {"VALUE": [2.0]})


def test_node_with_value_and_children(query: OscQueryServer) -> None:
    _, prompt = get(query, "/streamvj/prompt")
    assert prompt["TYPE"] == "s" and "transition" in prompt["CONTENTS"]


def test_commands_are_write_only_with_choices(query: OscQueryServer) -> None:
    _, load = get(query, "/streamvj/preset/load")
    assert load["ACCESS"] == ACCESS_WRITE and "VALUE" not in load
    assert "tiny" in load["RANGE"][0]["VALS"]
    _, pause = get(query, "/streamvj/pause")
    assert (pause["TYPE"], pause["ACCESS"]) == ("N", ACCESS_WRITE)
    _, learn = get(query, "/streamvj/midi/learn")
    assert "guidance_scale" in learn["RANGE"][0]["VALS"]
    _, beats = get(query, "/streamvj/prompt/transition_beats")
    assert beats["TYPE"] == "sfs" and beats["RANGE"][2] == {"VALS": ["beat", "bar"]}


def test_errors(query: OscQueryServer) -> None:
    assert get(query, "/streamvj/nope")[0] == 404
    assert get(query, "/streamvj/guidance_scale?BOGUS")[0] == 400
    assert get(query, "/streamvj/pause?VALUE")[0] == 204


def test_port_in_use_is_a_config_error(query: OscQueryServer, store: ParamStore) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="OSCQuery: cannot listen"):
        OscQueryServer(store, osc_port=9000, port=query.address[1])
