from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from engine.config.preset_files import (
    diff_load_time,
    list_presets,
    load_preset,
    parse_preset,
    preset_file,
    resolve_preset,
)
from engine.config.schema import LIVE_SPECS, SMOOTHABLE, LiveParams, Preset
from engine.errors import ConfigError
from tests.paths import PRESETS

MINIMAL = "name: t\nload:\n  model: tiny\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_preset(text, "looks/t.yaml")
    return str(exc.value)


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates(path: Path) -> None:
    preset = load_preset(path)
    assert preset.description, "each shipped preset says what it looks like and needs"
    assert path.stem == preset.name


def test_shipped_presets_cover_the_catalogue() -> None:
    assert {"tiny", "sd-turbo", "sdxl-turbo", "sd15-lcm", "txt2img"} <= set(list_presets(PRESETS))
    assert load_preset(PRESETS / "tiny.yaml").load.model == "tiny"
    assert load_preset(PRESETS / "txt2img.yaml").load.mode == "txt2img"


def test_minimal_preset_gets_defaults() -> None:
    p = parse_preset(MINIMAL, "t.yaml")
    assert p.live == LiveParams()
    assert p.steps == 2
    assert p.osc.host == "127.0.0.1"
    assert p.midi.port is None


def test_bad_yaml_names_line_and_column() -> None:
    msg = error_of("name: t\nload:\n  model: [tiny\n")
    assert msg.startswith("looks/t.yaml:4:1: invalid YAML")


def test_unknown_key_names_path_and_suggests() -> None:
    msg = error_of(MINIMAL + "  widht: 512\n")
    assert "looks/t.yaml:4: load.widht: unknown key (did you mean 'width'?)" in msg
    assert "allowed: model" in msg


def test_out_of_range_names_path_value_and_limit() -> None:
    msg = error_of(MINIMAL + "live:\n  guidance_scale: 25\n")
    assert msg == "looks/t.yaml:5: live.guidance_scale: Input should be less than or equal to 20 (got 25)"


def test_wrong_type_is_not_coerced() -> None:
    msg = error_of(MINIMAL + "live:\n  guidance_scale: '1.5'\n  seed: true\n")
    assert "live.guidance_scale: Input should be a valid number (got '1.5')" in msg
    assert "live.seed: Input should be a valid integer (got True)" in msg
    assert len(msg.splitlines()) == 2  # one line per problem


def test_missing_required() -> None:
    msg = error_of("load: {model: tiny}\n")
    assert "looks/t.yaml:1: name: required key is missing" in msg
    assert "load.model: required key is missing" in error_of("name: t\nload: {}\n")


def test_duplicate_key_is_an_error() -> None:
    assert "looks/t.yaml:4: load.model: duplicate key" in error_of(MINIMAL + "  model: other\n")


def test_not_a_mapping() -> None:
    assert "must be a mapping" in error_of("- a\n- b\n")
    assert "must be a mapping" in error_of("")


@pytest.mark.parametrize(
    "snippet, fragment",
    [
        ("live:\n  t_index_list: [45, 32]\n", "live.t_index_list: must be strictly increasing"),
        ("live:\n  t_index_list: [50]\n", "live.t_index_list[0]: Input should be less than or equal to 49"),
        ("live:\n  prompt_blend: [[a, 0], [b, 0]]\n", "live.prompt_blend: weights must not all be zero"),
        (
            "live:\n  prompt_blend: [[a, -1]]\n",
            "live.prompt_blend[0][1]: Input should be greater than or equal to 0",
        ),
        ("live:\n  seed: 4294967296\n", "live.seed: Input should be less than or equal to 4294967295"),
        ("live:\n  smoothing: {seed: 1}\n", "live.smoothing: cannot smooth seed"),
        ("live:\n  prompt_interp: cubic\n", "live.prompt_interp: Input should be 'linear' or 'slerp'"),
        ("live:\n  fx_hue: .nan\n", "live.fx_hue: Input should be a finite number"),
        ("live:\n  prompt: " + "x" * 4001 + "\n", "live.prompt: String should have at most 4000 characters"),
    ],
)
def test_live_field_errors(snippet: str, fragment: str) -> None:
    assert fragment in error_of(MINIMAL + snippet)


@pytest.mark.parametrize(
    "snippet, fragment",
    [
        ("  width: 500\n", "load.width: Input should be a multiple of 8"),
        ("  height: 4096\n", "load.height: Input should be less than or equal to 2048"),
        ("  cfg_type: half\n", "load.cfg_type: Input should be 'none', 'full', 'self' or 'initialize'"),
        ("  device: gpu\n", "load.device: String should match pattern"),
        ("  family: sd3\n", "load.family: Input should be 'sd15', 'sd21' or 'sdxl'"),
        ("  frame_buffer_size: 9\n", "load.frame_buffer_size"),
        ("  lora: [{path: x, scale: 9}]\n", "load.lora[0].scale"),
        ("  lora: [{id: x}]\n", "load.lora[0].id: unknown key"),
        ("  sinks: ['Spout TD']\n", "load.sinks[0]: unknown frame sink kind 'spout td'"),
        ("  sinks: ['file:/tmp/x']\n", "load.sinks[0]: unknown frame sink kind 'file'"),
        ("  source: 'shm:../../etc/x'\n", "load.source: shared-memory name '../../etc/x' is invalid"),
        ("  source: 'png:out'\n", "load.source: 'png' cannot be a frame source"),
        ("  sinks: ['null', 'shm:a/b']\n", "load.sinks[1]: shared-memory name 'a/b' is invalid"),
    ],
)
def test_load_field_errors(snippet: str, fragment: str) -> None:
    assert fragment in error_of(MINIMAL + snippet)


@pytest.mark.parametrize(
    "snippet, fragment",
    [
        ("midi:\n  mappings: [{param: prompt, cc: 1}]\n", "param 'prompt' cannot be driven by a CC"),
        (
            "midi:\n  mappings: [{param: delta, cc: 40, bits: 14}]\n",
            "14-bit mappings use the MSB controller 0-31",
        ),
        ("midi:\n  mappings: [{param: delta, cc: 1, channel: 0}]\n", "midi.mappings[0].channel"),
        ("midi:\n  mappings: [{param: t_index_list, cc: 1}]\n", "t_index_list needs `index`"),
        ("midi:\n  mappings: [{param: delta, cc: 1, max: 9}]\n", "outside delta's range 0.0..5.0"),
        ("osc:\n  allow: [localhost]\n", "osc.allow: 'localhost' is not an IP address"),
        ("osc:\n  port: 70000\n", "osc.port"),
        ("osc:\n  feedback: {host: 127.0.0.1}\n", "osc.feedback.port: required key is missing"),
    ],
)
def test_control_field_errors(snippet: str, fragment: str) -> None:
    assert fragment in error_of(MINIMAL + snippet)


def test_load_preset_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read preset"):
        load_preset(tmp_path / "missing.yaml")


def test_diff_load_time() -> None:
    a = parse_preset(MINIMAL, "a")
    assert diff_load_time(a, a) == []
    live_only = parse_preset(MINIMAL + "live:\n  prompt: other\n  t_index_list: [20, 40]\n", "b")
    assert diff_load_time(a, live_only) == []
    b = parse_preset(
        "name: u\nload:\n  model: stabilityai/sd-turbo\n  width: 768\nlive:\n  t_index_list: [35]\n", "c"
    )
    assert diff_load_time(a, b) == ["load.model", "load.width", "steps"]


def test_live_specs_generated_from_schema() -> None:
    assert list(LIVE_SPECS) == list(LiveParams.model_fields)
    g = LIVE_SPECS["guidance_scale"]
    assert (g.kind, g.min, g.max, g.default) == ("float", 0.0, 20.0, 1.2)
    assert LIVE_SPECS["prompt_interp"].choices == ("linear", "slerp")
    assert (LIVE_SPECS["t_index_list"].kind, LIVE_SPECS["t_index_list"].max) == ("int_list", 49)
    assert LIVE_SPECS["seed"].max == 2**32 - 1
    assert LIVE_SPECS["fx_hue"].unit == "deg"
    assert all(LIVE_SPECS[n].doc for n in LIVE_SPECS)
    assert "guidance_scale" in SMOOTHABLE and "seed" not in SMOOTHABLE


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b", "..", "", "x" * 65, "tiny.yaml", "/abs", "ti ny", "ü"]
)
def test_resolve_preset_rejects_paths(name: str) -> None:
    with pytest.raises(ConfigError, match="use 1-64 letters"):
        resolve_preset(PRESETS, name)


def test_resolve_preset(tmp_path: Path) -> None:
    assert resolve_preset(PRESETS, "tiny") == (PRESETS / "tiny.yaml").resolve()
    with pytest.raises(ConfigError, match="no nope.yaml"):
        resolve_preset(PRESETS, "nope")
    # A symlink pointing out of the folder is not followed.
    outside = tmp_path / "outside.yaml"
    outside.write_text(MINIMAL)
    inner = tmp_path / "presets"
    inner.mkdir()
    (inner / "evil.yaml").symlink_to(outside)
    with pytest.raises(ConfigError):
        resolve_preset(inner, "evil")


def test_preset_model_is_strict() -> None:
    with pytest.raises(Exception, match="Extra inputs"):
        Preset.model_validate({"name": "x", "load": {"model": "tiny"}, "bogus": 1})


def _yaml_blocks(doc: str) -> list[str]:
    text = (PRESETS.parent / "docs" / doc).read_text()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_docs_presets_example_validates() -> None:
    (example,) = _yaml_blocks("presets.md")
    preset = parse_preset(example, "docs/presets.md")
    assert preset.osc.query_port == 9001 and preset.osc.feedback.port == 9002
    assert preset.load.lora[0].scale == 1.0


def test_docs_midi_examples_validate() -> None:
    for block in _yaml_blocks("midi.md"):
        parse_preset("name: doc\nload: {model: tiny}\n" + block, "docs/midi.md")


def _alias_bomb(levels: int, fan: int = 10) -> str:
    """A "billion laughs" preset: each level is a list of `fan` aliases of the level below."""
    lines = ["name: t", "load: {model: tiny}", 'l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_alias_bomb_is_refused_cheaply(levels: int) -> None:
    text = _alias_bomb(levels)  # 10^6 / 10^9 values from ~500 bytes
    assert len(text) < 800
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="expands to more than 20000 values") as info:
            parse_preset(text, "looks/bomb.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith("looks/bomb.yaml:")
    assert peak < 2_000_000, f"refusing the file allocated {peak} bytes"


def test_yaml_bounds_let_real_presets_through_and_refuse_recursion_and_depth() -> None:
    ok = parse_preset(MINIMAL + "live:\n  t_index_list: &steps [20, 40]\n  seed_blend: [[1, 1.0]]\n", "a")
    assert ok.live.t_index_list == [20, 40]
    small = "name: t\nbase: &b {model: tiny}\nload: *b\n"  # a harmless alias is fine (then refused as a key)
    assert "base: unknown key" in error_of(small)
    assert "refers to a node that contains it" in error_of("name: t\nload: &a {model: tiny, x: [*a]}\n")
    deep = "name: t\nload: {model: tiny}\nlive: " + "[" * 40 + "]" * 40 + "\n"
    assert "nests deeper than 32 levels" in error_of(deep)
    assert "at most 65536" in error_of(MINIMAL + "description: '" + "x" * 70_000 + "'\n")


def test_symlinked_presets_are_refused_with_the_reason_and_never_listed(tmp_path: Path) -> None:
    outside = tmp_path / "passwd.yaml"
    outside.write_text(MINIMAL)
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "good.yaml").write_text(MINIMAL)
    (folder / "evil.yaml").symlink_to(outside)
    (folder / "alias.yaml").symlink_to(folder / "good.yaml")  # even a link inside the folder
    (folder / "dir.yaml").mkdir()
    (folder / "huge.yaml").write_text(MINIMAL + "#" * 70_000)
    assert list_presets(folder) == ["good"]
    for name in ("evil", "alias"):
        with pytest.raises(ConfigError, match="is a symbolic link; presets must be regular files"):
            resolve_preset(folder, name)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        load_preset(folder / "evil.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        resolve_preset(folder, "dir")
    with pytest.raises(ConfigError, match="at most 65536 bytes"):
        load_preset(folder / "huge.yaml")
    assert load_preset(resolve_preset(folder, "good")).name == "t"
    for name in list_presets(PRESETS):  # whatever is listed loads
        load_preset(resolve_preset(PRESETS, name))


# ---- Windows paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "'video:C:\\temp\\new clip.mp4'",  # single quotes: backslashes are plain characters
    "video:C:\\temp\\new clip.mp4",  # unquoted: the same
    '"video:C:\\\\temp\\\\new clip.mp4"',  # double quotes with every backslash doubled
    '"video:C:/temp/new clip.mp4"',
])
def test_windows_paths_that_yaml_keeps_as_written(value: str) -> None:
    preset = parse_preset(f"name: t\nload:\n  model: tiny\n  source: {value}\n", "t.yaml")
    assert preset.load.source.replace("/", "\\") == "video:C:\\temp\\new clip.mp4"


@pytest.mark.parametrize(("value", "words"), [
    ('"video:C:\\temp\\new.mp4"', "is a Windows path in double quotes"),  # valid escapes: a tab and a newline
    ('"png:E:\\renders\\a"', "is a Windows path in double quotes"),  # \r and \a: a carriage return, a bell
    ('"video:C:\\Users\\vj\\loop.mp4"', "expected escape sequence"),  # \U wants 8 hex digits: a syntax error
    ('"D:\\venue\\models\\sd15"', "unknown escape character 'm'"),  # \v is valid, \m is not
])
def test_windows_paths_in_double_quotes_are_refused_with_the_fix(value: str, words: str) -> None:
    message = error_of(f"name: t\nload:\n  model: tiny\n  source: {value}\n")
    assert words in message and "single quotes" in message and "forward slashes" in message
    assert message.startswith("looks/t.yaml:4")


def test_double_quoted_text_that_is_not_a_path_is_untouched() -> None:
    preset = parse_preset('name: t\nload:\n  model: tiny\nlive:\n  prompt: "a neon city: 3 AM\\t\\u00e9"\n', "t.yaml")
    assert preset.live.prompt == "a neon city: 3 AM\t\u00e9"


def test_presets_in_a_folder_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "My Shows" / "Friday night"
    folder.mkdir(parents=True)
    (folder / "neon.yaml").write_text(MINIMAL)
    assert list_presets(folder) == ["neon"]
    assert resolve_preset(folder, "neon") == (folder / "neon.yaml").resolve()
    assert load_preset(resolve_preset(str(folder), "neon")).name == "t"


def test_preset_file_takes_a_path_or_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "My Presets"
    folder.mkdir()
    (folder / "Neon.YAML").write_text(MINIMAL)  # as Windows may save it
    assert preset_file(str(folder / "Neon.YAML"), PRESETS) == folder / "Neon.YAML"
    assert preset_file("tiny", PRESETS) == (PRESETS / "tiny.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    assert preset_file("My Presets/Neon.YAML", PRESETS) == Path("My Presets/Neon.YAML")
    with pytest.raises(ConfigError, match=r"preset file 'C:\\\\shows\\\\neon.yaml' does not exist"):
        preset_file("C:\\shows\\neon.yaml", PRESETS)
    with pytest.raises(ConfigError, match="a preset file is given by its path ending in .yaml"):
        preset_file("C:\\shows\\neon", PRESETS)
