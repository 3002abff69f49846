"""The frame protocols every bridge implements, and the one frame format.

One format crosses the bridge boundary: `rgba_u8`, an H x W x 4 uint8 array, C-contiguous,
rows top to bottom (numpy on CPU paths, a torch uint8 tensor on the device for GPU paths).
Bridges convert to and from their platform's format exactly once, at their edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from engine.errors import FrameError


@dataclass(frozen=True)
class Frame:
    """A frame as it crosses a mailbox: pixels plus where and when it came from.

    `rgba_u8` is H x W x 4 uint8; `index` counts frames from one source (monotonic);
    `t_arrival` is `time.perf_counter()` when the source received it, which is what
    end-to-end latency is measured from.
    """

    rgba_u8: np.ndarray
    index: int
    t_arrival: float


@runtime_checkable
class FrameSource(Protocol):
    """Somewhere frames come from (Spout receiver, NDI receiver, shared memory, file, pattern).

    Optional, for speed: `frames_owned = True` when every returned array is fresh and never
    touched again (the runtime then skips its copy), or `read_latest_into(acquire)`, which
    asks `acquire(shape)` for the runtime's pooled buffer and copies the new frame straight
    into it (one copy instead of two; see bridges/video/shm.py).
    """

    name: str

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, "") when the platform library imports, else (False, one line naming the extra)."""

    def open(self) -> None: ...

    def read_latest(self) -> np.ndarray | None:
        """The newest frame since the last call as rgba_u8, or None when nothing new arrived.

        Never blocks for long (at most a few ms); a vanished peer returns None and is
        retried on later calls, not raised.
        """

    def close(self) -> None: ...


@runtime_checkable
class FrameSink(Protocol):
    """Somewhere frames go (Spout sender, NDI sender, shared memory, PNG sequence, null)."""

    name: str

    @classmethod
    def is_available(cls) -> tuple[bool, str]: ...

    def open(self) -> None: ...

    def send(self, rgba_u8: np.ndarray) -> None:
        """Publish one rgba_u8 frame. A vanished peer is logged once, not raised."""

    def close(self) -> None: ...


def check_rgba_u8(frame: np.ndarray, where: str) -> np.ndarray:
    """Validate the bridge frame format; raise FrameError naming `where` and what was wrong."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"{where}: expected a numpy uint8 HxWx4 array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"{where}: expected dtype uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 4:
        raise FrameError(f"{where}: expected shape HxWx4 (RGBA), got {tuple(frame.shape)}")
    if not frame.flags.c_contiguous:
        raise FrameError(f"{where}: frame must be C-contiguous (use np.ascontiguousarray once at the edge)")
    return frame
