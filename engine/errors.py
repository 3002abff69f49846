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
