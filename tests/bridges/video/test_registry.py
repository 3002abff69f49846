from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bridges.video import registry
from bridges.video.files import ImageFileSource, NullSink, PngSequenceSink, VideoFileSource
from bridges.video.ndi import NdiSink, NdiSource
from bridges.video.pattern import PatternSource
from bridges.video.registry import (
    SINK_KINDS,
    SOURCE_KINDS,
    UnknownBridgeError,
    bridge_status,
    make_sink,
    make_source,
    preflight,
    sink_class,
    source_class,
    split_spec,
)
from bridges.video.spout import SpoutSink, SpoutSource
from bridges.video.syphon import SyphonSource
from engine.config import transport_specs
from engine.errors import BridgeUnavailable, ConfigError


@pytest.fixture
def fake_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the platform libraries importable so construction can be checked on any OS."""
    for name in ("SpoutGL", "OpenGL", "OpenGL.GL", "syphon", "Metal", "cyndilib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


@pytest.fixture
def fake_shm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    class ShmSource:
        def __init__(self, name: str) -> None:
            self.block = name

        @classmethod
        def is_available(cls) -> tuple[bool, str]:
            return True, ""

    class ShmSink(ShmSource):
        pass

    module = types.ModuleType("bridges.video.shm")
    module.ShmSource = ShmSource  # type: ignore[attr-defined]
    module.ShmSink = ShmSink  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bridges.video.shm", module)
    return module


def test_split_spec_keeps_colons_in_the_argument() -> None:
    assert split_spec("pattern") == ("pattern", "")
    assert split_spec(" NDI:MY-PC (TouchDesigner) ") == ("ndi", "MY-PC (TouchDesigner)")
    assert split_spec("image:C:\\art\\a.png") == ("image", "C:\\art\\a.png")


def test_pattern_specs() -> None:
    default = make_source("pattern")
    assert isinstance(default, PatternSource) and (default.width, default.height, default.fps) == (
        512,
        512,
        30.0,
    )
    sized = make_source("pattern:640x360@60")
    assert (sized.width, sized.height, sized.fps) == (640, 360, 60.0)
    assert make_source("pattern:64x32").fps == 30.0
    with pytest.raises(ConfigError, match="WxH"):
        make_source("pattern:big")


def test_file_specs(tmp_path: Path) -> None:
    image = make_source("image:C:\\art\\a.png")
    assert isinstance(image, ImageFileSource) and str(image.path) == "C:\\art\\a.png"
    png = make_sink(f"png:{tmp_path / 'out' / 'frames'}")
    assert isinstance(png, PngSequenceSink) and png.folder == tmp_path / "out" / "frames"
    assert isinstance(make_sink("null"), NullSink)
    with pytest.raises(ConfigError, match="file path"):
        make_source("image")
    with pytest.raises(ConfigError, match="output folder"):
        make_sink("png:")


def test_platform_specs(fake_platforms: None) -> None:
    spout = make_source("spout:TDSyphonSpoutOut")
    assert isinstance(spout, SpoutSource) and spout.sender_name == "TDSyphonSpoutOut"
    assert make_source("spout").sender_name == ""
    assert isinstance(make_sink("spout"), SpoutSink) and make_sink("spout").sender_name == "streamvj"
    ndi = make_source("ndi:MY-PC (TouchDesigner)")
    assert isinstance(ndi, NdiSource) and ndi.source_name == "MY-PC (TouchDesigner)"
    assert isinstance(make_sink("ndi"), NdiSink) and make_sink("ndi:Dream").ndi_name == "Dream"
    assert isinstance(make_source("syphon:Main"), SyphonSource)
    assert make_sink("syphon").server_name == "streamvj"
    with pytest.raises(ConfigError, match="NDI source name"):
        make_source("ndi")


def test_shm_is_imported_lazily(fake_shm: types.ModuleType) -> None:
    src = make_source("shm:streamvj_in")
    assert isinstance(src, fake_shm.ShmSource) and src.block == "streamvj_in"
    sink = make_sink("shm:streamvj_out")
    assert isinstance(sink, fake_shm.ShmSink) and sink.block == "streamvj_out"
    assert source_class("shm") is fake_shm.ShmSource
    with pytest.raises(ConfigError, match="shared-memory name"):
        make_source("shm")


def test_shm_import_failure_is_bridge_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bridges.video.shm", None)
    with pytest.raises(BridgeUnavailable, match="shared-memory"):
        make_source("shm:x")


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(UnknownBridgeError) as info:
        make_source("webcam:0")
    message = str(info.value)
    assert "'webcam'" in message
    for kind in SOURCE_KINDS:
        assert kind in message
    assert isinstance(info.value, ConfigError)
    with pytest.raises(UnknownBridgeError, match="cannot be a frame sink"):
        make_sink("pattern")
    with pytest.raises(UnknownBridgeError, match="cannot be a frame source"):
        make_source("png:out")


def test_unavailable_library_raises_its_one_line_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "SpoutGL", None)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(BridgeUnavailable, match=r"pip install 'streamvj\[spout\]'"):
        make_source("spout:TDOut")
    with pytest.raises(BridgeUnavailable, match=r"pip install 'streamvj\[video\]'"):
        make_source("video:clip.mp4")


def test_classes_and_status(fake_shm: types.ModuleType) -> None:
    assert source_class("video") is VideoFileSource and sink_class("NULL") is NullSink
    assert set(SINK_KINDS) == {"png", "null", "shm", "spout", "ndi", "syphon"}
    rows = bridge_status()
    assert ("source", "pattern", True, "") in rows
    assert {(role, kind) for role, kind, _, _ in rows} == {("source", k) for k in SOURCE_KINDS} | {
        ("sink", k) for k in SINK_KINDS
    }


def test_registry_covers_exactly_the_kinds_the_rules_define() -> None:
    assert tuple(registry._SOURCES) == transport_specs.SOURCE_KINDS == SOURCE_KINDS
    assert tuple(registry._SINKS) == transport_specs.SINK_KINDS == SINK_KINDS


def test_bridges_refuse_what_the_preset_schema_refuses() -> None:
    for bad in ("shm:../../etc/x", "pattern:4x4", "image:a\nb"):
        with pytest.raises(ConfigError, match="frame source spec"):
            make_source(bad)
    with pytest.raises(ConfigError, match="takes no argument"):
        make_sink("null:x")
    with pytest.raises(UnknownBridgeError, match="'file'"):
        make_sink("file:/tmp/x")


def test_preflight_checks_every_spec_without_opening_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "never"
    preflight(f"shm:svj_preflight_{id(folder)}", [f"png:{folder}", "null", "shm:out"])
    assert not folder.exists()  # nothing was created (a png sink makes its folder on open)
    with pytest.raises(ConfigError) as info:
        preflight("shm:../x", ["file:/tmp/x", "null"])
    assert len(str(info.value).splitlines()) == 2
    preflight(None, ["null"])  # txt2img: no source
    monkeypatch.setitem(sys.modules, "SpoutGL", None)
    with pytest.raises(BridgeUnavailable, match=r"sink 'spout'.*streamvj\[spout\]"):
        preflight("pattern", ["null", "spout"])
