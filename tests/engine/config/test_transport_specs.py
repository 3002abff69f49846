"""The syntax rules of frame transport specs, shared by the preset schema and the bridge registry."""

from __future__ import annotations

import pytest

from engine.config import transport_specs as ts
from engine.config.schema import LoadSettings
from engine.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "role", "kind", "arg"),
    [
        ("pattern", "source", "pattern", ""),
        (" Pattern:640x360@59.94 ", "source", "pattern", "640x360@59.94"),
        ("image:C:\\art\\a.png", "source", "image", "C:\\art\\a.png"),
        ("shm:streamvj_in", "source", "shm", "streamvj_in"),
        ("ndi:MY-PC (TouchDesigner)", "source", "ndi", "MY-PC (TouchDesigner)"),
        ("spout", "source", "spout", ""),
        ("png:out/frames", "sink", "png", "out/frames"),
        ("null", "sink", "null", ""),
        ("NDI", "sink", "ndi", ""),
    ],
)
def test_valid_specs(spec: str, role: str, kind: str, arg: str) -> None:
    checked = ts.parse_spec(spec, role)
    assert (checked.role, checked.kind, checked.arg, checked.spec) == (role, kind, arg, spec)


@pytest.mark.parametrize(
    ("spec", "role", "words"),
    [
        ("shm:../../etc/x", "source", "shared-memory name '../../etc/x' is invalid"),
        ("shm:", "sink", "needs a shared-memory name"),
        ("shm:a b", "sink", "is invalid"),
        ("file:/tmp/x", "sink", "unknown frame sink kind 'file'; sinks: png:FOLDER"),
        ("png:out", "source", "'png' cannot be a frame source, only a sink"),
        ("pattern", "sink", "'pattern' cannot be a frame sink"),
        ("null:x", "sink", "takes no argument"),
        ("pattern:big", "source", "expected WxH"),
        ("pattern:4x4", "source", "out of range (each side 8..8192)"),
        ("pattern:64x64@0", "source", "fps 0 is out of range"),
        ("pattern:64x64@1000", "source", "fps 1000 is out of range"),
        ("image:", "source", "needs a file path"),
        ("image:a\nb.png", "source", "control character"),
        ("video:" + "x" * 1025, "source", "at most 1024"),
        ("spout:" + "s" * 257, "sink", "at most 256"),
        ("ndi", "source", "needs an NDI source name"),
        ("x" * 2000, "source", "is 2000 characters; at most"),
        ("", "source", "unknown frame source kind ''"),
    ],
)
def test_invalid_specs_say_why(spec: str, role: str, words: str) -> None:
    with pytest.raises(ts.TransportSpecError) as info:
        ts.parse_spec(spec, role)
    assert words in str(info.value) and str(info.value).startswith(f"frame {role} spec ")
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ValueError) as schema:  # the schema's message shows the value itself
        (ts.check_source_spec if role == "source" else ts.check_sink_spec)(spec)
    assert str(schema.value) == info.value.reason and words in info.value.reason


def test_unknown_kind_is_its_own_error_listing_the_kinds() -> None:
    with pytest.raises(ts.UnknownTransportError) as info:
        ts.parse_spec("webcam:0", "source")
    for rule in ts.SOURCE_RULES.values():
        assert rule.usage in str(info.value)


def test_shm_names() -> None:
    assert ts.shm_name_problem("TD.to-svj_1", "linux") is None
    assert ts.shm_name_problem("x" * 64, "linux") is None
    assert "macOS" in ts.shm_name_problem("x" * 31, "darwin")
    for bad in ("", ".x", "-x", "a/b", "..", "x" * 65, "caf\u00e9"):
        assert "invalid" in ts.shm_name_problem(bad, "linux")


def test_pattern_args() -> None:
    assert ts.pattern_args("") == (*ts.DEFAULT_PATTERN_SIZE, ts.DEFAULT_PATTERN_FPS)
    assert ts.pattern_args("640x360@60") == (640, 360, 60.0)
    assert ts.pattern_args("64x32") == (64, 32, ts.DEFAULT_PATTERN_FPS)


def test_check_transports_names_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        ts.check_transports("shm:../x", ["null", "file:/tmp/x", "shm:ok"])
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and "'../x'" in lines[0] and "'file'" in lines[1]
    checked = ts.check_transports(None, ["shm:out", "null"])  # txt2img: no source to check
    assert [(c.role, c.kind) for c in checked] == [("sink", "shm"), ("sink", "null")]


def test_schema_uses_the_same_rules() -> None:
    ok = LoadSettings.model_validate({"model": "tiny", "source": "pattern:64x64", "sinks": ["null", "png:o"]})
    assert ok.sinks == ["null", "png:o"]
    for bad, words in (
        ({"source": "shm:../../etc/x"}, "shared-memory name '../../etc/x' is invalid"),
        ({"sinks": ["file:/tmp/x"]}, "unknown frame sink kind 'file'"),
        ({"sinks": ["image:a.png"]}, "'image' cannot be a frame sink"),
    ):
        with pytest.raises(ValueError, match=words):
            LoadSettings.model_validate({"model": "tiny", **bad})
