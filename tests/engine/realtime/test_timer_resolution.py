"""The 1 ms Windows timer, with winmm and kernel32 faked at the DLL loader."""

from __future__ import annotations

import ctypes
import sys

import pytest

from engine.realtime.timer_resolution import (
    IGNORE_TIMER_RESOLUTION,
    PERIOD_MS,
    PROCESS_POWER_THROTTLING,
    raise_timer_resolution,
)


class FakeFunction:
    def __init__(self, fn):
        self.fn, self.restype, self.argtypes = fn, None, None

    def __call__(self, *args):
        return self.fn(*args)


class FakeWindows:
    def __init__(self, begin_result=0, set_info_ok=1, has_set_info=True):
        self.periods: list[int] = []
        self.infos: list[tuple[int, int, int, int]] = []
        self.begin_result, self.set_info_ok, self.has_set_info = begin_result, set_info_ok, has_set_info

    def load(self, name):
        dll = type(name, (), {})()
        if name == "winmm":
            dll.timeBeginPeriod = FakeFunction(lambda ms: self.periods.append(ms) or self.begin_result)
        elif name == "kernel32":
            dll.GetCurrentProcess = FakeFunction(lambda: -1)
            if self.has_set_info:
                dll.SetProcessInformation = FakeFunction(self.set_info)
        else:
            raise OSError(f"no {name}.dll")
        return dll

    def set_info(self, process, info_class, state_ref, size):
        state = ctypes.cast(state_ref, ctypes.POINTER(ctypes.c_uint32 * 3)).contents
        self.infos.append((info_class, state[0], state[1], state[2]))
        assert process == -1 and size == 12
        return self.set_info_ok


def test_nothing_happens_off_windows():
    fake = FakeWindows()
    assert raise_timer_resolution("linux", fake.load) == "" and not fake.periods
    assert raise_timer_resolution("darwin", fake.load) == ""


def test_windows_gets_a_1ms_timer_and_opts_out_of_throttling():
    fake = FakeWindows()
    line = raise_timer_resolution("win32", fake.load)
    assert fake.periods == [PERIOD_MS]
    # Control mask names the throttle, state mask leaves it off: always honour the resolution.
    assert fake.infos == [(PROCESS_POWER_THROTTLING, 1, IGNORE_TIMER_RESOLUTION, 0)]
    assert line == "timer resolution 1 ms (Windows' default tick is 15.6 ms)"


@pytest.mark.parametrize(("fake", "words"), [
    (FakeWindows(begin_result=97), "Windows refused a 1 ms timer"),  # TIMERR_NOCANDO
    (FakeWindows(set_info_ok=0), "opt-out of Windows 11's timer throttling was not accepted"),
    (FakeWindows(has_set_info=False), "opt-out of Windows 11's timer throttling was not accepted"),
])
def test_a_refusal_is_one_line_and_never_raises(fake, words):
    line = raise_timer_resolution("win32", fake.load)
    assert words in line and "\n" not in line


def test_a_missing_winmm_is_one_line():
    def no_dlls(name):
        raise OSError("[WinError 126] The specified module could not be found")

    line = raise_timer_resolution("win32", no_dlls)
    assert "could not ask Windows for a 1 ms timer" in line and "WinError 126" in line


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows' winmm.dll")
def test_real_windows_accepts_the_timer():
    assert raise_timer_resolution().startswith("timer resolution 1 ms")
