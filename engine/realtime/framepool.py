"""FramePool: reference-counted rgba_u8 buffers handed between threads without copies.

The runtime copies a frame once into a pooled buffer and lends that buffer to several
holders (a mailbox slot, each sink group, a sink repeating it for pacing). A buffer is
rewritten only after every holder released it, so nobody ever reads a frame while it is
being overwritten, and a steady stream of one size allocates no frame memory.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

log = logging.getLogger("streamvj.runtime")


class FrameBuffer:
    """One pooled rgba_u8 frame buffer. `view` is the read-only face sinks get."""

    __slots__ = ("array", "view", "tensor", "refs", "index", "t_arrival")

    def __init__(self, shape: tuple[int, ...], pinned: bool) -> None:
        # Pinned (page-locked) host memory lets device<->host copies run asynchronously.
        self.tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=True) if pinned else None
        self.array: np.ndarray = self.tensor.numpy() if self.tensor is not None else np.empty(shape, np.uint8)
        self.view = self.array.view()
        self.view.flags.writeable = False
        self.refs = 0
        self.index = -1
        self.t_arrival = 0.0


class FramePool:
    """Reference-counted rgba_u8 buffers of one shape; a buffer is reused only once free."""

    def __init__(self, name: str, size: int, pinned: bool = False) -> None:
        self.name = name
        self.size = size
        self.pinned = pinned
        self.allocated = 0
        self._lock = threading.Lock()
        self._free: list[FrameBuffer] = []
        self._shape: tuple[int, ...] | None = None

    def acquire(self, shape: tuple[int, ...], pinned: bool | None = None) -> FrameBuffer:
        with self._lock:
            if shape != self._shape or (pinned is not None and pinned != self.pinned):
                # A new size (preset swap) or memory kind: buffers still lent out are dropped on release.
                self._shape = shape
                self.pinned = self.pinned if pinned is None else pinned
                self._free = [FrameBuffer(shape, self.pinned) for _ in range(self.size)]
                self.allocated += self.size
            if not self._free:
                # Holders exceed the sizing (a sink kept more than expected): grow rather than block.
                log.debug("buffer pool %s grows beyond %d", self.name, self.size)
                self._free.append(FrameBuffer(shape, self.pinned))
                self.allocated += 1
                self.size += 1
            buf = self._free.pop()
        buf.refs = 1
        return buf

    def retain(self, buf: FrameBuffer, n: int = 1) -> None:
        with self._lock:
            buf.refs += n

    def release(self, buf: FrameBuffer | None) -> None:
        if buf is None:
            return
        with self._lock:
            buf.refs -= 1
            if buf.refs == 0 and buf.array.shape == self._shape and (buf.tensor is not None) == self.pinned:
                self._free.append(buf)
