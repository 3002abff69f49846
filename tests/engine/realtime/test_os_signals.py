"""Which signals stop the engine on each platform, with Windows' SIGBREAK faked on Linux."""

from __future__ import annotations

import signal

import pytest

from engine.realtime.os_signals import signal_label, stop_signals


def test_posix_stops_on_ctrl_c_and_sigterm(monkeypatch):
    monkeypatch.delattr(signal, "SIGBREAK", raising=False)
    assert stop_signals() == (signal.SIGINT, signal.SIGTERM)
    assert signal_label(signal.SIGINT) == "Ctrl-C (SIGINT)" and signal_label(signal.SIGTERM) == "SIGTERM"


def test_windows_adds_ctrl_break(monkeypatch):
    fake_break = signal.SIGUSR1  # Windows' SIGBREAK is 21; any number signal.signal accepts here will do
    monkeypatch.setattr(signal, "SIGBREAK", fake_break, raising=False)
    assert stop_signals() == (signal.SIGINT, signal.SIGTERM, fake_break)
    assert signal_label(fake_break) == "Ctrl-Break (SIGBREAK)"


def test_other_signals_keep_their_names(monkeypatch):
    monkeypatch.delattr(signal, "SIGBREAK", raising=False)
    assert signal_label(signal.SIGUSR2) == "SIGUSR2"
    assert signal_label(999) == "signal 999"


@pytest.mark.windows
@pytest.mark.skipif(not hasattr(signal, "SIGBREAK"), reason="SIGBREAK exists on Windows only")
def test_real_windows_has_sigbreak():
    assert signal.SIGBREAK in stop_signals()
