"""An animated, deterministic test pattern: the default source, so the engine runs with nothing attached.

The picture is a pure function of the frame index (`render_pattern`): scrolling colour bars,
a grey ramp, a square that rotates while it travels a Lissajous path, and a counter band
at the bottom that shows the frame index in binary (16 cells, most significant bit left),
so a frame can be identified by eye or by code after it has been through the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from engine.errors import ConfigError

log = logging.getLogger("streamvj.pattern")

# 75 % SMPTE-style bars: white, yellow, cyan, green, magenta, red, blue, black.
_BAR_COLOURS = np.array(
    [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
        [16, 16, 16],
    ],
    dtype=np.uint8,
)
_SQUARE_COLOUR = np.array([255, 140, 0], dtype=np.uint8)
_COUNTER_BITS = 16


def _check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int)) or width < 8 or height < 8:
        raise ConfigError(f"pattern size must be integers of at least 8x8, got {width!r}x{height!r}")


class _PatternCanvas:
    """Coordinate grids and scratch buffers for one size, computed once.

    Holds mutable scratch, so one canvas belongs to one caller (thread) at a time.
    """

    def __init__(self, width: int, height: int) -> None:
        _check_size(width, height)
        self.width = width
        self.height = height
        # Layout: bars on top, a grey ramp under them, the counter band at the bottom.
        self.band_h = max(2, height // 8)
        self.ramp_h = max(1, height // 8)
        self.bars_h = height - self.band_h - self.ramp_h
        self.cols = np.arange(width, dtype=np.int64)
        self.xs = np.arange(width, dtype=np.float32) + 0.5
        self.ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
        ramp = (np.arange(width, dtype=np.float32) * (255.0 / max(1, width - 1))).astype(np.uint8)
        self.ramp_row = np.repeat(ramp[:, None], 3, axis=1)
        self.counter_cell = (self.cols * _COUNTER_BITS) // width
        self.counter_shift = (_COUNTER_BITS - 1 - self.counter_cell).astype(np.int64)
        # A 1 px dark gap at each cell's left edge keeps runs of equal bits countable.
        self.cell_edges = np.flatnonzero(np.diff(self.counter_cell, prepend=-1))
        # Scratch, reused every frame.
        self._bar_idx = np.empty(width, dtype=np.int64)
        self._bar_row = np.empty((width, 3), dtype=np.uint8)
        self._bits = np.empty(width, dtype=np.int64)
        self._band_row = np.empty(width, dtype=np.uint8)
        self._dx = np.empty(width, dtype=np.float32)
        self._dy = np.empty((height, 1), dtype=np.float32)
        self._row_tmp = np.empty(width, dtype=np.float32)
        self._col_tmp = np.empty((height, 1), dtype=np.float32)
        self._u = np.empty((height, width), dtype=np.float32)
        self._v = np.empty((height, width), dtype=np.float32)
        self._mask = np.empty((height, width, 1), dtype=bool)

    def render(self, index: int, out: np.ndarray) -> np.ndarray:
        w, h = self.width, self.height
        rgb = out[..., :3]
        out[..., 3] = 255

        # Bars scroll left by w/240 px per frame: a full cycle every 240 frames.
        shift = (index * w) // 240
        np.add(self.cols, shift, out=self._bar_idx)
        np.multiply(self._bar_idx, len(_BAR_COLOURS), out=self._bar_idx)
        np.floor_divide(self._bar_idx, w, out=self._bar_idx)
        np.remainder(self._bar_idx, len(_BAR_COLOURS), out=self._bar_idx)
        np.take(_BAR_COLOURS, self._bar_idx, axis=0, out=self._bar_row)
        rgb[: self.bars_h] = self._bar_row
        rgb[self.bars_h : self.bars_h + self.ramp_h] = self.ramp_row

        # Rotating square on a Lissajous path (3:2), in the area above the counter band.
        t = index / 30.0
        area_h = h - self.band_h
        cx = w * (0.5 + 0.3 * math.sin(t * 0.9))
        cy = area_h * (0.5 + 0.3 * math.sin(t * 0.6 + 0.5))
        angle = t * 1.3
        c, s = math.cos(angle), math.sin(angle)
        half = 0.12 * min(w, area_h)
        np.subtract(self.xs, cx, out=self._dx)
        np.subtract(self.ys, cy, out=self._dy)
        # u = dx*c + dy*s, v = -dx*s + dy*c, broadcast from a row and a column into HxW scratch.
        np.multiply(self._dx, c, out=self._row_tmp)
        np.multiply(self._dy, s, out=self._col_tmp)
        np.add(self._row_tmp, self._col_tmp, out=self._u)
        np.multiply(self._dx, -s, out=self._row_tmp)
        np.multiply(self._dy, c, out=self._col_tmp)
        np.add(self._row_tmp, self._col_tmp, out=self._v)
        np.abs(self._u, out=self._u)
        np.abs(self._v, out=self._v)
        np.maximum(self._u, self._v, out=self._u)
        np.less(self._u, half, out=self._mask[..., 0])
        np.copyto(rgb, _SQUARE_COLOUR, where=self._mask)

        # Counter band last, so it is never covered: white cell = 1 bit of (index mod 2**16).
        np.right_shift(index & 0xFFFF, self.counter_shift, out=self._bits)
        np.bitwise_and(self._bits, 1, out=self._bits)
        np.multiply(self._bits, 255, out=self._bits)
        np.copyto(self._band_row, self._bits, casting="unsafe")
        self._band_row[self.cell_edges] = 0
        rgb[h - self.band_h :] = self._band_row[:, None]
        return out


def render_pattern(index: int, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """The pattern for frame `index` as rgba_u8 (HxWx4), written into `out` when given.

    Pure: the same index and size always give identical pixels. Allocates its grids on
    every call; `PatternSource` keeps them across frames.
    """
    canvas = _PatternCanvas(width, height)
    if out is None:
        out = np.empty((height, width, 4), dtype=np.uint8)
    elif out.shape != (height, width, 4) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(height, width, 4)}")
    return canvas.render(index, out)


class PatternSource:
    """The test pattern as a FrameSource, advancing at `fps` by the injected `clock`.

    The frame index is floor((clock() - t_open) * fps); `read_latest` returns None while it
    has not advanced. Frames are rendered into two preallocated buffers in turn, so a
    returned array stays valid until the next-but-one call that returns a frame.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        _check_size(width, height)
        if not fps > 0:
            raise ConfigError(f"pattern fps must be > 0, got {fps!r}")
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.name = f"pattern:{width}x{height}"
        self._clock = clock
        self._canvas: _PatternCanvas | None = None
        self._buffers: list[np.ndarray] = []
        self._turn = 0
        self._t0 = 0.0
        self._last_index = -1

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        self._canvas = _PatternCanvas(self.width, self.height)
        self._buffers = [np.empty((self.height, self.width, 4), dtype=np.uint8) for _ in range(2)]
        self._t0 = self._clock()
        self._last_index = -1
        log.info("test pattern %dx%d at %.3g fps", self.width, self.height, self.fps)

    def read_latest(self) -> np.ndarray | None:
        if self._canvas is None:
            raise RuntimeError("PatternSource.read_latest() called before open()")
        index = math.floor((self._clock() - self._t0) * self.fps)
        if index <= self._last_index:
            return None
        self._last_index = index
        out = self._buffers[self._turn]
        self._turn ^= 1
        return self._canvas.render(index, out)

    @property
    def frame_index(self) -> int:
        """Index of the last frame returned (-1 before the first)."""
        return self._last_index

    def close(self) -> None:
        self._canvas = None
        self._buffers = []
