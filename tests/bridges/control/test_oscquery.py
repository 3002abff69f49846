"""OSCQuery as its clients see it: the documents over HTTP and LISTEN over a WebSocket,
served by the real web server on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage

from bridges.control.osc_address import address_table
from bridges.control.oscquery import ACCESS_RW, ACCESS_WRITE, OscQuery, osc_message
from bridges.control.web_server import WebServer
from engine.config.schema import LiveParams
from engine.live.params import ParamStore
from tests.bridges.control.ws_client import OP_BINARY, OP_TEXT, Ws
from tests.paths import PRESETS
from tests.waiting import wait_for


@pytest.fixture
def store() -> ParamStore:
    return ParamStore(LiveParams(prompt="a cat"))


@pytest.fixture
def query(store: ParamStore) -> Iterator[WebServer]:
    with WebServer(OscQuery(store, osc_port=9000, presets_dir=PRESETS)) as srv:
        yield srv


def get(srv: WebServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    host, port = srv.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_host_info(query: WebServer) -> None:
    status, info = get(query, "/?HOST_INFO")
    assert status == 200
    assert (info["OSC_PORT"], info["OSC_TRANSPORT"], info["OSC_IP"]) == (9000, "UDP", "127.0.0.1")
    assert info["EXTENSIONS"]["VALUE"] is True and info["EXTENSIONS"]["LISTEN"] is True
    assert info["EXTENSIONS"]["PATH_CHANGED"] is False and "WS_PORT" not in info  # same port as HTTP


def test_host_info_of_an_osc_server_on_every_interface_names_no_ip(store: ParamStore) -> None:
    info = OscQuery(store, osc_port=9000, osc_host="0.0.0.0").host_info()
    assert "OSC_IP" not in info and info["OSC_PORT"] == 9000  # clients use the address they reached us at


def test_bound_to_loopback(query: WebServer) -> None:
    assert query.address[0] == "127.0.0.1"


def test_tree_has_every_address(query: WebServer) -> None:
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


def test_param_nodes_carry_type_range_value(query: WebServer, store: ParamStore) -> None:
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


def test_a_controlnets_live_choices_are_the_on_air_presets(query: WebServer, store: ParamStore) -> None:
    """TouchDesigner builds a menu from VALS: the sources and preprocessors the preset lists, after each switch."""
    _, source = get(query, "/streamvj/controlnet_0_source")
    assert source["RANGE"] == [{}]  # no preset with ControlNets on air: any source spec's syntax
    store.apply_preset_live(LiveParams(controlnet_0_source="shm:depth"), choices={
        "controlnet_0_source": ("shm:depth", "spout:TDPose"), "controlnet_0_preprocessor": ("passthrough", "canny")})
    _, source = get(query, "/streamvj/controlnet_0_source")
    _, preprocessor = get(query, "/streamvj/controlnet_0_preprocessor")
    assert source["RANGE"] == [{"VALS": ["shm:depth", "spout:TDPose"]}] and source["VALUE"] == ["shm:depth"]
    assert preprocessor["RANGE"] == [{"VALS": ["passthrough", "canny"]}]
    _, other = get(query, "/streamvj/controlnet_1_preprocessor")  # a slot the preset does not use
    assert other["RANGE"] == [{"VALS": ["canny", "depth", "passthrough"]}]


def test_value_follows_store(query: WebServer, store: ParamStore) -> None:
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a cat"]})
    store.set("prompt", "a dog")
    assert get(query, "/streamvj/prompt?VALUE") == (200, {"VALUE": ["a dog"]})
    store.set_smoothing("fx_hue", 2.0)
    assert get(query, "/streamvj/smoothing/fx_hue?VALUE") == (200, {"VALUE": [2.0]})


def test_url_encoded_paths_and_attributes(query: WebServer) -> None:
    assert get(query, "/streamvj/%70rompt?%56ALUE") == (200, {"VALUE": ["a cat"]})


def test_node_with_value_and_children(query: WebServer) -> None:
    _, prompt = get(query, "/streamvj/prompt")
    assert prompt["TYPE"] == "s" and "transition" in prompt["CONTENTS"]


def test_commands_are_write_only_with_choices(query: WebServer) -> None:
    _, load = get(query, "/streamvj/preset/load")
    assert load["ACCESS"] == ACCESS_WRITE and "VALUE" not in load
    assert "tiny" in load["RANGE"][0]["VALS"]
    _, pause = get(query, "/streamvj/pause")
    assert (pause["TYPE"], pause["ACCESS"]) == ("N", ACCESS_WRITE)
    _, learn = get(query, "/streamvj/midi/learn")
    assert "guidance_scale" in learn["RANGE"][0]["VALS"]
    _, beats = get(query, "/streamvj/prompt/transition_beats")
    assert beats["TYPE"] == "sfs" and beats["RANGE"][2] == {"VALS": ["beat", "bar"]}


def test_errors(query: WebServer) -> None:
    assert get(query, "/streamvj/nope")[0] == 404
    assert get(query, "/streamvj/guidance_scale?BOGUS")[0] == 400
    assert get(query, "/streamvj/pause?VALUE")[0] == 204


def test_a_server_without_the_page_answers_a_browser_with_json(query: WebServer) -> None:
    status, root = get(query, "/", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert status == 200 and root["FULL_PATH"] == "/"
    assert get(query, "/ui/")[0] == 404


def test_port_in_use_is_a_config_error(query: WebServer, store: ParamStore) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
        WebServer(OscQuery(store, osc_port=9000), port=query.address[1]).start()


# ------------------------------------------------------------------ LISTEN over WebSocket

GS = "/streamvj/guidance_scale"

def listening(srv: WebServer) -> list[set[str]]:
    return [set(s.paths) for s in srv.sessions() if s.kind == "listen"]


def listen(srv: WebServer, ws: Ws, *paths: str) -> None:
    for path in paths:
        ws.command("LISTEN", path)
    wait_for(lambda: any(set(paths) <= p for p in listening(srv)), f"LISTEN {paths}")


def recv_osc(ws: Ws) -> tuple[str, list]:
    op, payload = ws.recv()
    assert op == OP_BINARY
    msg = OscMessage(payload)
    return msg.address, list(msg.params)


@pytest.fixture
def ws(query: WebServer) -> Iterator[Ws]:
    client = Ws(query.address)
    assert client.status == 101
    yield client
    client.close()


def test_listen_delivers_osc_and_ignore_stops_it(query: WebServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, GS, "/streamvj/t_index_list", "/streamvj/similarity_enabled", "/streamvj/prompt")
    store.set("guidance_scale", 2.5)
    assert recv_osc(ws) == (GS, [2.5])
    store.set("t_index_list", [10, 20])
    assert recv_osc(ws) == ("/streamvj/t_index_list", [10, 20])
    store.set("similarity_enabled", True)
    assert recv_osc(ws) == ("/streamvj/similarity_enabled", [True])
    store.set("prompt", "a dog, ünïcode")
    assert recv_osc(ws) == ("/streamvj/prompt", ["a dog, ünïcode"])
    store.set("delta", 0.3)  # not listened to: nothing sent

    ws.command("IGNORE", GS)
    wait_for(lambda: GS not in listening(query)[0], "IGNORE")
    store.set("guidance_scale", 3.0)
    store.set("prompt", "a bird")
    assert recv_osc(ws) == ("/streamvj/prompt", ["a bird"])  # guidance_scale was not sent


def test_listen_smoothing_sends_only_what_changed(query: WebServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, "/streamvj/smoothing/fx_hue", "/streamvj/smoothing/delta")
    store.set_smoothing("fx_hue", 2.0)
    assert recv_osc(ws) == ("/streamvj/smoothing/fx_hue", [2.0])
    store.set_smoothing("delta", 1.5)
    assert recv_osc(ws) == ("/streamvj/smoothing/delta", [1.5])
    store.set_smoothing("fx_hue", 0.0)
    assert recv_osc(ws) == ("/streamvj/smoothing/fx_hue", [0.0])


def test_unknown_and_write_only_paths_are_ignored(query: WebServer, ws: Ws, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="streamvj.oscquery")
    for path in ("/streamvj/nope", "/streamvj/pause", "/streamvj/prompt_blend", "../../etc/passwd"):
        ws.command("LISTEN", path)
    listen(query, ws, GS)
    assert listening(query) == [{GS}]
    assert any("not a readable path" in r.getMessage() for r in caplog.records)


def test_malformed_commands_are_logged_once_and_ignored(
    query: WebServer, store: ParamStore, ws: Ws, logged: Callable[[str], list[str]]
) -> None:
    for _ in range(3):
        ws.send(OP_TEXT, b"{not json")
        ws.send(OP_TEXT, b'{"COMMAND": "DELETE", "DATA": "/"}')
        ws.send(OP_TEXT, b"[" * 5000 + b"]" * 5000)
        ws.send(OP_BINARY, osc_message(GS, "float", [9.0]))  # OSC in is not accepted
    listen(query, ws, GS)  # the connection still works
    assert store.get("guidance_scale") != 9.0
    assert len(logged("not JSON")) == 1 and len(logged("expected {")) == 1 and len(logged("binary")) == 1


def test_http_unchanged_while_clients_listen(query: WebServer, store: ParamStore, ws: Ws) -> None:
    listen(query, ws, GS)
    store.set("guidance_scale", 4.0)
    assert get(query, "/streamvj/guidance_scale?VALUE") == (200, {"VALUE": [4.0]})
    assert recv_osc(ws) == (GS, [4.0])


def test_osc_message_types() -> None:
    def parsed(kind: str, args: list) -> list:
        return list(OscMessage(osc_message("/x", kind, args)).params)

    assert parsed("int", [4294967295]) == [4294967295]  # seeds past int32 go as int64
    assert parsed("int", [7]) == [7] and parsed("bool", [False]) == [False]
    assert parsed("float", [1]) == [1.0] and parsed("enum", ["slerp"]) == ["slerp"]
