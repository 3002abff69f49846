"""File bridges: a still image or a video file in, a PNG sequence or nothing out.

`ImageFileSource` and `PngSequenceSink` need only Pillow (a core dependency);
`VideoFileSource` needs PyAV, the optional 'video' extra.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import BridgeUnavailable, ConfigError, StreamVJError
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.files")


class MediaFileError(StreamVJError):
    """An image or video file is missing or cannot be decoded; the message names the file."""


def _existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise MediaFileError(f"{what} not found: {path}")
    if not path.is_file():
        raise MediaFileError(f"{what} is not a file: {path}")
    return path


def load_image_rgba(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file (PNG, JPEG, anything Pillow reads) to rgba_u8."""
    path = _existing_file(Path(path), "image file")
    try:
        with Image.open(path) as img:
            # Pillow decodes lazily: convert() inside the `with` forces the full decode here,
            # so a truncated file fails now with its name attached, not later.
            rgba = img.convert("RGBA")
    except UnidentifiedImageError as exc:
        raise MediaFileError(f"not an image Pillow can read (PNG, JPEG, ...): {path}") from exc
    except OSError as exc:
        raise MediaFileError(f"cannot decode image {path}: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8))


class ImageFileSource:
    """A still image as a source: the image once after open(), then None until the file changes.

    The file is re-read when its modification time changes (checked at most every
    `poll_s` seconds), so an image edited during a set shows up live. A file that turns
    unreadable later is logged once and the last good image is kept.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path = Path(path)
        self.name = f"image:{self.path}"
        self._poll_s = poll_s
        self._clock = clock
        self._frame: np.ndarray | None = None
        self._pending = False
        self._mtime_ns = 0
        self._next_poll = 0.0
        self._reload_failed = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        self._frame = load_image_rgba(self.path)
        self._mtime_ns = self.path.stat().st_mtime_ns
        self._pending = True
        self._next_poll = self._clock() + self._poll_s
        h, w = self._frame.shape[:2]
        log.info("image source %s (%dx%d)", self.path, w, h)

    def read_latest(self) -> np.ndarray | None:
        if self._frame is None:
            raise RuntimeError("ImageFileSource.read_latest() called before open()")
        now = self._clock()
        if now >= self._next_poll:
            self._next_poll = now + self._poll_s
            self._reload_if_changed()
        if not self._pending:
            return None
        self._pending = False
        return self._frame

    def _reload_if_changed(self) -> None:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except OSError as exc:
            if not self._reload_failed:
                log.warning("image %s is gone (%s); keeping the last image", self.path, exc)
                self._reload_failed = True
            return
        if mtime_ns == self._mtime_ns:
            return
        try:
            # A new array, not an overwrite: the previous frame may still be in use downstream.
            self._frame = load_image_rgba(self.path)
        except MediaFileError as exc:
            if not self._reload_failed:
                log.warning("%s; keeping the last image", exc)
                self._reload_failed = True
            return
        self._mtime_ns = mtime_ns
        self._pending = True
        if self._reload_failed:
            log.info("image %s readable again", self.path)
        self._reload_failed = False
        log.info("image %s changed, reloaded", self.path)

    def close(self) -> None:
        self._frame = None


class VideoFileSource:
    """A video file decoded with PyAV, delivered at the file's own frame rate (looped by default).

    The frame due now is floor((clock() - t_start) * fps); frames between two calls are
    decoded and dropped so the source keeps real time. Each returned array is a fresh
    decode, so it stays valid for as long as the caller holds it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        loop: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path = Path(path)
        self.loop = loop
        self.name = f"video:{self.path}"
        self._clock = clock
        self._av: Any = None
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._fps = 30.0
        self._t0 = 0.0
        self._decoded = -1  # index of the last frame pulled from the decoder in this pass
        self._ended = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            importlib.import_module("av")
        except ImportError:
            return False, "video files need PyAV, the 'video' extra: pip install 'streamvj[video]'"
        return True, ""

    def open(self) -> None:
        ok, message = self.is_available()
        if not ok:
            raise BridgeUnavailable(message)
        self._av = importlib.import_module("av")
        _existing_file(self.path, "video file")
        try:
            self._container = self._av.open(str(self.path))
            stream = self._container.streams.video[0]
        except IndexError as exc:
            raise MediaFileError(f"no video stream in {self.path}") from exc
        except (OSError, ValueError) as exc:
            # PyAV's errors subclass OSError/ValueError (FileNotFoundError, InvalidDataError, ...).
            raise MediaFileError(f"cannot open video {self.path}: {exc}") from exc
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self._fps = float(rate) if rate else 30.0
        self._restart(self._clock())
        log.info("video source %s at %.3g fps%s", self.path, self._fps, " (looping)" if self.loop else "")

    def _restart(self, now: float) -> None:
        self._container.seek(0)
        self._frames = iter(self._container.decode(video=0))
        self._t0 = now
        self._decoded = -1

    def read_latest(self) -> np.ndarray | None:
        if self._frames is None:
            raise RuntimeError("VideoFileSource.read_latest() called before open()")
        if self._ended:
            return None
        now = self._clock()
        due = math.floor((now - self._t0) * self._fps)
        if due <= self._decoded:
            return None
        frame = None
        while self._decoded < due:
            try:
                frame = next(self._frames)
            except StopIteration:
                if self._decoded < 0:
                    raise MediaFileError(f"no decodable frames in {self.path}") from None
                if not self.loop:
                    self._ended = True
                    log.info("video %s ended", self.path)
                    break
                self._restart(now)
                due = 0
                continue
            except (OSError, ValueError) as exc:
                raise MediaFileError(f"cannot decode video {self.path}: {exc}") from exc
            self._decoded += 1
        if frame is None:
            return None
        return np.ascontiguousarray(frame.to_ndarray(format="rgba"))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None


class PngSequenceSink:
    """Writes every `every`-th frame to `folder/<prefix>_000000.png`, `..._000001.png`, ...

    The folder is created on open(). `prefix` is a plain file-name part: one with a path
    separator or '..' is refused, so the sink never writes outside `folder`.
    """

    def __init__(self, folder: str | os.PathLike[str], prefix: str = "frame", every: int = 1) -> None:
        if not prefix or any(sep in prefix for sep in ("/", "\\", os.sep)) or ".." in prefix:
            raise ConfigError(f"png sink prefix must be a plain file-name part, got {prefix!r}")
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"png sink 'every' must be an integer >= 1, got {every!r}")
        self.folder = Path(folder)
        self.prefix = prefix
        self.every = every
        self.name = f"png:{self.folder}"
        self.frames_seen = 0
        self.frames_written = 0
        self._root: Path | None = None

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create png output folder {self.folder}: {exc}") from exc
        self._root = self.folder.resolve()

    def path_for(self, number: int) -> Path:
        """Where frame `number` (counted in written frames) goes."""
        if self._root is None:
            raise RuntimeError("PngSequenceSink used before open()")
        path = (self._root / f"{self.prefix}_{number:06d}.png").resolve()
        if path.parent != self._root:
            raise ConfigError(f"png sink refuses to write outside {self._root}: {path}")
        return path

    def send(self, rgba_u8: np.ndarray) -> None:
        check_rgba_u8(rgba_u8, self.name)
        seen = self.frames_seen
        self.frames_seen += 1
        if seen % self.every:
            return
        path = self.path_for(self.frames_written)
        # compress_level=1: PNG's default (6) costs several times more CPU for ~10 % smaller files.
        Image.fromarray(rgba_u8).save(path, compress_level=1)
        self.frames_written += 1

    def close(self) -> None:
        if self._root is not None:
            log.info("wrote %d PNG frames to %s", self.frames_written, self._root)
        self._root = None


class NullSink:
    """Counts frames and keeps nothing: the sink for benchmarks."""

    def __init__(self) -> None:
        self.name = "null"
        self.count = 0
        self.last_shape: tuple[int, ...] | None = None

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        self.count = 0

    def send(self, rgba_u8: np.ndarray) -> None:
        check_rgba_u8(rgba_u8, self.name)
        self.count += 1
        self.last_shape = rgba_u8.shape

    def close(self) -> None:
        pass
