"""A 1 ms timer on Windows, so the engine's short waits last what they say.

Every timed wait in the engine is a threading wait: the source's polling back-off (0.2-1 ms),
paced sinks, txt2img pacing. On Windows CPython rounds such a timeout up to whole milliseconds
and the kernel wakes the thread on the system timer tick, 15.6 ms unless the process asks for
more: a 1 ms poll then takes up to 15.6 ms (a frame of latency at 60 fps), and a sink paced at
60 fps (16.7 ms) alternates between 15.6 and 31.2 ms, which a VJ sees as judder.

`timeBeginPeriod(1)` asks for a 1 ms tick; since Windows 10 2004 it applies to this process
only. Windows 11 may ignore it for a process whose windows are all invisible, which Spout's
hidden OpenGL window makes us, unless the process opts out of that throttling
(`SetProcessInformation(ProcessPowerThrottling)` with IGNORE_TIMER_RESOLUTION in the control
mask and not in the state mask: "always honour my timer resolution"). Windows gives the
resolution back when the process exits, so there is nothing to undo.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

PERIOD_MS = 1
PROCESS_POWER_THROTTLING = 4  # PROCESS_INFORMATION_CLASS.ProcessPowerThrottling
THROTTLING_VERSION = 1  # PROCESS_POWER_THROTTLING_CURRENT_VERSION
IGNORE_TIMER_RESOLUTION = 0x4  # PROCESS_POWER_THROTTLING_IGNORE_TIMER_RESOLUTION


class PowerThrottlingState(ctypes.Structure):
    # ULONG is 32 bits on Windows (LLP64), whatever c_ulong is where the tests run.
    _fields_ = [("Version", ctypes.c_uint32), ("ControlMask", ctypes.c_uint32), ("StateMask", ctypes.c_uint32)]


def _load_dll(name: str) -> Any:
    return ctypes.WinDLL(name, use_last_error=True)  # type: ignore[attr-defined]  # Windows only


def raise_timer_resolution(platform: str = sys.platform,
                           load_dll: Callable[[str], Any] = _load_dll) -> str:
    """Ask Windows for a 1 ms timer for this process; return a line for the log ("" elsewhere).

    Never raises: a machine that refuses keeps the default tick, and the line says so.
    """
    if platform != "win32":
        return ""
    try:
        winmm = load_dll("winmm")
        if winmm.timeBeginPeriod(PERIOD_MS) != 0:  # TIMERR_NOERROR
            return (f"Windows refused a {PERIOD_MS} ms timer: waits keep the 15.6 ms tick "
                    "(paced output may judder)")
    except (OSError, AttributeError) as exc:
        return f"could not ask Windows for a {PERIOD_MS} ms timer ({exc}); waits keep the 15.6 ms tick"
    line = f"timer resolution {PERIOD_MS} ms (Windows' default tick is 15.6 ms)"
    try:
        kernel32 = load_dll("kernel32")
        state = PowerThrottlingState(THROTTLING_VERSION, IGNORE_TIMER_RESOLUTION, 0)
        kernel32.GetCurrentProcess.restype = ctypes.c_void_p
        kernel32.SetProcessInformation.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        ok = kernel32.SetProcessInformation(kernel32.GetCurrentProcess(), PROCESS_POWER_THROTTLING,
                                            ctypes.byref(state), ctypes.sizeof(state))
    except (OSError, AttributeError):  # before Windows 8 there is no SetProcessInformation
        ok = False
    if not ok:  # Windows 10 before 1709 has no such class: its timer is never throttled anyway
        line += "; the opt-out of Windows 11's timer throttling was not accepted"
    return line
