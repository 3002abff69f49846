"""Errors streamvj raises on purpose: each names what was wrong and what to do."""


class StreamVJError(Exception):
    """Base class: a specific, user-facing problem (never a deep library traceback)."""


class ModelLoadError(StreamVJError):
    """A model could not be found, downloaded or built."""


class ConfigError(StreamVJError):
    """A setting is invalid (out of range, unknown name, inconsistent with another)."""


class FrameError(StreamVJError):
    """A frame handed to the engine has the wrong shape, dtype or layout."""


class BridgeUnavailable(StreamVJError):
    """An optional platform library (Spout, Syphon, NDI, MIDI) is not installed."""


SHOWN_MAX = 80  # characters of a value quoted in an error or log line


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """`repr(value)` cut to `limit` characters: how every error and log line quotes a value.

    Values come from the network and from files (a 60 KB OSC string, a huge list); a log
    line quotes enough to recognise them, never the whole thing.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text)} chars)"


def first_line(error: object) -> str:
    """An error's text in one line for a log or status: its first non-empty line, joined with the next
    when it only introduces it (dynamo's "backend='inductor' raised:"); its type's name if it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
