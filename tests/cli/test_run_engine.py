"""The command line as a user runs it: real subprocesses, the tiny model, tiny sizes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.paths import REPO as ROOT

SMALL = ["--width", "64", "--height", "64", "--no-osc"]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_engine.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_run_renders_frames_to_png(tmp_path):
    result = run_cli("run", "--frames", "3", "--sink", f"png:{tmp_path}", *SMALL)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.png"))) >= 3
    assert "stopped after" in result.stderr


def test_bad_preset_is_one_clear_line():
    result = run_cli("run", "--preset", "no-such-preset", *SMALL)
    assert result.returncode == 2
    assert "preset 'no-such-preset'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--width", "100"], "command line: load.width: Input should be a multiple of 8"),
    (["--osc-feedback", "nowhere"], "--osc-feedback must be HOST:PORT"),
    (["--osc-port", "70000"], "command line: osc.port"),
])
def test_bad_command_line_values_are_clear(args, message):
    result = run_cli("run", "--no-osc", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_model_is_one_clear_line():
    result = run_cli("run", "--model", "./no/such/folder", *SMALL)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_presets_lists_every_shipped_preset_as_valid():
    result = run_cli("presets")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"tiny", "sd-turbo", "sdxl-turbo", "sd15-lcm", "txt2img"} <= set(names)
    assert "INVALID" not in result.stdout


def test_bridges_says_what_works_here_and_what_to_install():
    result = run_cli("bridges")
    assert result.returncode == 0
    rows = {tuple(line.split()[:3]) for line in result.stdout.splitlines()}
    assert ("source", "pattern", "ok") in rows and ("sink", "shm", "ok") in rows
    if sys.platform != "win32":
        assert ("source", "spout", "missing") in rows and "streamvj[spout]" in result.stdout


def test_osc_prints_the_address_table():
    result = run_cli("osc")
    assert result.returncode == 0 and "/streamvj/guidance_scale" in result.stdout


def test_bench_json_with_autopipeline_baseline():
    result = run_cli("bench", "--width", "64", "--height", "64", "--t-index", "32,45",  # --model auto: tiny on a CPU
                     "--cfg", "self", "--frames", "3", "--warmup", "1", "--device", "cpu", "--json",
                     "--baseline", "autopipeline")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("fps", "ms_median", "ms_p90", "unet_ms_median", "speedup_vs_baseline"):
        assert data[key] > 0
    assert data["baseline"]["name"] == "AutoPipelineForImage2Image"
    assert data["backend"] == "eager" and data["model"] == "tiny"


def test_bench_rejects_bad_settings_clearly():
    result = run_cli("bench", "--t-index", "60", "--frames", "1", "--device", "cpu")
    assert result.returncode == 2 and "command line: live.t_index_list[0]: Input should be less than or equal to 49" in result.stderr


def stop_running_engine(stop_signal: int, **popen: object) -> str:
    """Start `run`, wait until frames flow, send `stop_signal`; assert a clean exit, return the log."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_engine.py"), "run", "--sink", "null", *SMALL],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "running: source" in line:
                break
        proc.send_signal(stop_signal)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + err
    return "".join(lines) + err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_cleanly():
    assert "runtime stopped" in stop_running_engine(signal.SIGTERM)


def test_presets_dir_points_at_the_users_own_folder(tmp_path):
    (tmp_path / "mine.yaml").write_text((ROOT / "presets" / "tiny.yaml").read_text().replace("name: tiny", "name: mine"))
    (tmp_path / "bad.yaml").write_text("load: {width: 3}")
    result = run_cli("presets", "--presets-dir", str(tmp_path))
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"mine", "bad"} and "INVALID" in lines["bad"] and "INVALID" not in lines["mine"]


@pytest.mark.parametrize(("argv", "command", "verbose"), [
    ([], "run", False),
    (["--preset", "tiny"], "run", False),  # README's bare form: run's options without `run`
    (["-v"], "run", True),
    (["-v", "run"], "run", True),
    (["run", "-v"], "run", True),
    (["bench", "-v"], "bench", True),
    (["presets"], "presets", False),
])
def test_run_is_the_default_command_and_verbose_goes_anywhere(argv, command, verbose):
    import run_engine
    from engine.config.cli import with_default_command

    parser = run_engine.build_parser()
    args = parser.parse_args(with_default_command(argv, parser))
    assert (args.command, args.verbose) == (command, verbose)


def test_option_lists_come_from_the_settings_schema():
    from typing import get_args

    import run_engine
    from engine.config.schema import Acceleration, CfgType

    subparsers = next(a for a in run_engine.build_parser()._actions if a.dest == "command").choices
    by_flag = {flag: a for name in ("run", "bench") for a in subparsers[name]._actions
               for flag in a.option_strings if name == "bench" or flag == "--acceleration"}
    assert tuple(by_flag["--cfg"].choices) == get_args(CfgType)
    assert tuple(by_flag["--acceleration"].choices) == get_args(Acceleration)


@pytest.mark.parametrize(("args", "message"), [
    (["--sink", "spout:streamvj"], "sink 'spout:streamvj'"),  # a platform library this machine lacks
    (["--source", "shm:../x"], "shm:../x"),
    (["--sink", "image:out.png"], "image:out.png"),  # a source kind as a sink
])
def test_transport_specs_are_refused_before_the_model_loads(args, message):
    if sys.platform == "win32" and args[1].startswith("spout"):
        pytest.skip("Spout installs on Windows")
    result = run_cli("run", "--no-osc", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "warmed up" not in result.stderr and "pipeline ready" not in result.stderr


def test_every_stop_signal_interrupts_a_run_still_loading(monkeypatch):
    """Before the runtime's own handlers exist (minutes of model loading), SIGTERM and Windows'
    Ctrl-Break (SIGBREAK, faked with SIGUSR1) raise KeyboardInterrupt like Ctrl-C, so `run` stops
    cleanly instead of dying (SIGBREAK's default action ends the process on the spot)."""
    import run_engine

    fake_break = signal.SIGUSR1
    monkeypatch.setattr(signal, "SIGBREAK", fake_break, raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, fake_break)}
    try:
        run_engine._prepare_process()
        assert signal.getsignal(signal.SIGTERM) is run_engine._interrupt
        assert signal.getsignal(fake_break) is run_engine._interrupt
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # Python's own KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt, match=r"Ctrl-Break \(SIGBREAK\)"):
            signal.raise_signal(fake_break)  # Python runs the handler right after this call
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_stop_while_the_libraries_import_ends_the_run_without_a_traceback(monkeypatch, caplog):
    """A stop signal in the first seconds lands while torch and diffusers import (quiet_libraries):
    `run` says it stopped and returns, as it does later in loading (no traceback for the VJ)."""
    import run_engine

    def interrupted() -> None:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(run_engine, "_prepare_process", lambda: None)
    monkeypatch.setattr(run_engine, "quiet_libraries", interrupted)
    args = run_engine.build_parser().parse_args(["run", "--no-osc"])
    with caplog.at_level("INFO", logger="streamvj"):
        assert run_engine.cmd_run(args) == 0
    assert "interrupted: stopping" in caplog.text


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="Ctrl-Break is a Windows console event")
def test_ctrl_break_stops_cleanly_on_windows():
    log = stop_running_engine(signal.CTRL_BREAK_EVENT, creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    assert "runtime stopped" in log and "timer resolution 1 ms" in log


def test_presets_folder_and_preset_path_with_spaces(tmp_path):
    """Windows users keep shows under "C:\\Users\\<name>\\My Shows": spaces (and, there,
    backslashes) in --presets-dir and --preset go through as one argument and one path."""
    folder = tmp_path / "My Shows" / "Friday night"
    folder.mkdir(parents=True)
    (folder / "neon.yaml").write_text((ROOT / "presets" / "tiny.yaml").read_text().replace("name: tiny", "name: neon"))
    listed = run_cli("presets", "--presets-dir", str(folder))
    assert listed.returncode == 0 and listed.stdout.split()[0] == "neon"
    result = run_cli("run", "--preset", str(folder / "neon.yaml"), "--frames", "2", "--sink", "null", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "preset neon:" in result.stderr
    missing = run_cli("run", "--preset", str(folder / "gone.yaml"), *SMALL)
    assert missing.returncode == 2 and "gone.yaml' does not exist" in missing.stderr


def test_exit_summary_averages_the_run_when_input_stopped_before_exit():
    import run_engine

    line = run_engine._summary({"frames_rendered": 100, "fps": 0.0, "skipped": 3}, 10.0)
    assert line == "100 frames (10.0 fps over 10.0 s; 0.0 fps at the end; 3 skipped)"
