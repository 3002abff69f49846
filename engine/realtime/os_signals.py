"""The signals that stop a show, per platform, in one place (imports nothing heavy: installed first).

- Ctrl-C: SIGINT everywhere.
- SIGTERM: POSIX service managers and `kill`. Windows has no way to deliver it from outside
  (`taskkill /F` and `os.kill(pid, SIGTERM)` call TerminateProcess, which runs no handler), but
  the C runtime accepts a handler for it and `signal.raise_signal` in-process reaches it, so it
  is installed there too and costs nothing.
- Ctrl-Break: SIGBREAK, Windows only. Its default action ends the process at once, without
  stopping threads or closing bridges; the C runtime also maps a console's close button, logoff
  and shutdown to it, but for those Windows kills the process as soon as the handler returns,
  so only Ctrl-Break gets the clean shutdown (the OS then closes what the process held: Spout
  senders and shared-memory handles go with it).
"""

from __future__ import annotations

import signal

_NAMES = ("SIGINT", "SIGTERM", "SIGBREAK")
_WHAT = {"SIGINT": "Ctrl-C", "SIGBREAK": "Ctrl-Break", "SIGTERM": "SIGTERM"}


def stop_signals() -> tuple[int, ...]:
    """The signals that stop the engine on this platform, as numbers `signal.signal` accepts."""
    found: list[int] = []
    for name in _NAMES:
        number = getattr(signal, name, None)
        if number is not None and number not in found:
            found.append(int(number))
    return tuple(found)


def signal_label(signum: int) -> str:
    """'Ctrl-Break (SIGBREAK)' for a log line; the name alone for anything else."""
    for name in _NAMES:
        if getattr(signal, name, None) == signum:
            return name if _WHAT[name] == name else f"{_WHAT[name]} ({name})"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
