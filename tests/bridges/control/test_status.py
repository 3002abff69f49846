from __future__ import annotations

import io
import logging
import os
import threading

import pytest

from bridges.control import status
from bridges.control.osc_feedback import OscFeedback
from bridges.control.status import TerminalLine, status_payload, status_text
from engine.live.show import ShowStatus

STATS = {"state": "running", "fps": 24.0, "latency_ms": 40.5, "skip_ratio": 0.25, "frames_received": 10,
         "frames_rendered": 9, "error": ""}


def test_payload_is_what_feedback_sends() -> None:
    payload = status_payload(STATS, ShowStatus("running", "tiny", ""), "eager", {"vram_mb": 812, "gpu_power_w": None})
    assert payload == {"state": "running", "fps": 24.0, "latency_ms": 40.5, "skip_ratio": 0.25, "preset": "tiny",
                       "error": "", "backend": "eager", "vram_mb": 812.0}
    assert OscFeedback.check(payload) == payload  # every field is one the feedback knows


@pytest.mark.parametrize(
    "runtime_state, show_state, expected", [("running", "building", "building"), ("stopped", "running", "ready"),
                                            ("paused", "running", "paused")])
def test_state(runtime_state: str, show_state: str, expected: str) -> None:
    payload = status_payload({**STATS, "state": runtime_state}, ShowStatus(show_state, "tiny", ""), "eager")
    assert payload["state"] == expected


def test_the_shows_error_comes_first() -> None:
    show = ShowStatus("running", "tiny", "preset 'nosuch' not loaded")
    assert status_payload({**STATS, "error": "frame failed"}, show, "eager")["error"] == show.error
    assert status_payload({**STATS, "error": "frame failed"}, ShowStatus("running", "tiny", ""), "eager")[
        "error"] == "frame failed"


def test_text() -> None:
    payload = status_payload(STATS, ShowStatus("running", "tiny", ""), "eager", {"vram_mb": 812.0})
    text = status_text(payload, STATS)
    assert text.split()[:3] == ["running", "tiny", "24.0"] and "skip   25%" in text and text.endswith("eager  812 MB")


@pytest.fixture
def terminal() -> tuple[io.StringIO, logging.Logger, TerminalLine]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.status.terminal")
    logger.propagate = False
    logger.addHandler(handler)
    line = TerminalLine(stream, width=40).install([handler, logging.StreamHandler(io.StringIO())])
    yield stream, logger, line
    line.uninstall()
    logger.removeHandler(handler)


def test_a_log_record_starts_on_a_cleared_line(terminal) -> None:
    stream, logger, line = terminal
    line.draw("running tiny 24.0 fps")
    logger.warning("a thing happened")
    line.draw("running tiny 25.0 fps")
    out = stream.getvalue()
    before, after = out.split("WARNING a thing happened\n")
    # What the terminal shows on the record's line: the last carriage return wipes the status line.
    assert before.endswith("\r" + " " * 40 + "\r") and "running" not in before.rsplit("\r", 2)[-1]
    assert after == "\r" + "running tiny 25.0 fps".ljust(40)


def test_records_without_a_drawn_line_are_untouched(terminal) -> None:
    stream, logger, line = terminal
    logger.warning("one")
    line.draw("status")
    logger.warning("two")
    logger.warning("three")
    assert stream.getvalue().split("\n")[0] == "WARNING one"
    assert stream.getvalue().endswith("\rWARNING two\nWARNING three\n")


def test_close_ends_the_line_and_restores_the_formatter(terminal) -> None:
    stream, logger, line = terminal
    line.draw("status")
    line.close()
    logger.warning("after")
    assert stream.getvalue() == "\r" + "status".ljust(40) + "\nWARNING after\n"


def test_draws_and_records_from_threads_never_share_a_line(terminal) -> None:
    stream, logger, line = terminal

    def draw() -> None:
        for i in range(300):
            line.draw(f"status {i}")

    t = threading.Thread(target=draw)
    t.start()
    for i in range(300):
        logger.warning("record %d", i)
    t.join()
    for text in stream.getvalue().split("\n"):
        shown = text.rsplit("\r", 1)[-1]  # what a terminal leaves visible on that line
        assert not ("record" in shown and "status" in shown), repr(text)
        if "WARNING" in text:
            assert shown.startswith("WARNING"), repr(text)


def test_draws_after_close_are_ignored(terminal) -> None:
    stream, logger, line = terminal
    line.draw("last status")
    line.close()
    line.draw("a late stats tick")
    logger.warning("stopping")
    assert stream.getvalue() == "\r" + "last status".ljust(40) + "\nWARNING stopping\n"


class ConsoleStream(io.StringIO):
    """A stream that says it is a console, `columns` wide (os.get_terminal_size is faked per test)."""

    def fileno(self) -> int:
        return 2


@pytest.fixture
def console(monkeypatch) -> list[int]:
    columns = [120]  # cmd.exe's default window on Windows 10 and 11
    monkeypatch.setattr(status.os, "get_terminal_size",
                        lambda fd: os.terminal_size((columns[0], 30)) if fd == 2 else os.get_terminal_size(fd))
    return columns


def test_the_line_never_reaches_the_last_column_of_a_console(console) -> None:
    """Windows' console wraps as soon as the last column is written; '\\r' then returns to the
    wrapped part and every redraw leaves a copy: the line stops one column short."""
    stream = ConsoleStream()
    line = TerminalLine(stream)
    line.draw("x" * 300)
    assert stream.getvalue() == "\r" + "x" * 119
    console[0] = 80  # the window was resized
    line.draw("short")
    assert stream.getvalue().split("\r")[-1] == "short".ljust(79)
    assert line.take_line() == "\r" + " " * 79 + "\r"  # a record wipes what is on screen, no more


def test_the_line_uses_only_carriage_returns_and_spaces(console) -> None:
    """No ANSI escapes: Windows' console host without virtual-terminal mode would print them."""
    stream = ConsoleStream()
    line = TerminalLine(stream)
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.status.console")
    logger.propagate = False
    logger.addHandler(handler)
    line.install([handler])
    try:
        line.draw("running tiny 24.0 fps")
        logger.warning("a record")
        line.draw("running tiny 25.0 fps")
        line.close()
    finally:
        logger.removeHandler(handler)
    assert "\x1b" not in stream.getvalue()
    assert all(len(part) <= 119 for part in stream.getvalue().replace("\n", "\r").split("\r"))


@pytest.mark.parametrize(("columns", "width"), [(0, 150), (10, 20), (400, 150)])
def test_odd_console_sizes(console, columns: int, width: int) -> None:
    console[0] = columns  # 0: a console that does not say (some CI runners, redirected handles)
    assert TerminalLine(ConsoleStream()).fit_width() == width


def test_a_file_keeps_the_full_width() -> None:
    assert TerminalLine(io.StringIO(), width=150).fit_width() == 150
