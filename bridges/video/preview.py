"""A throttled JPEG preview of the engine's output (and input), for the web page.

`Preview` takes frames from the threads that already hold them, the output's own sink
thread (`PreviewSink`, a FrameSink in its own sink group) and the source thread
(`PreviewSource`, a pass-through FrameSource), never the render loop. Taking a frame costs
a time comparison; only when a page is watching and a picture is due (a few per second)
is it copied into the preview's own buffer, and the JPEG is made on the preview's encoder
thread (Pillow releases the GIL while it scales and encodes). While the encoder is still
busy with the last picture a due frame is skipped, never waited for.

`benchmarks/bench_preview.py` measures what this costs the render loop.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.errors import ConfigError
from engine.realtime.frames import FrameSource

log = logging.getLogger("streamvj.preview")

KINDS = ("output", "input")
FPS = 5.0  # pictures per second and kind: enough to see what plays, cheap to make
MAX_SIDE = 512  # pixels (larger frames are reduced by a whole factor): a preview, not a monitor
QUALITY = 70
OnJpeg = Callable[[str, bytes], None]


@dataclass
class _Tap:
    next_t: float = 0.0
    busy: bool = False  # the buffer holds a picture the encoder has not finished
    buf: np.ndarray | None = None
    made: int = 0
    encode_s: list[float] = field(default_factory=list)  # the last few encode times (stats)


class Preview:
    """JPEG pictures of frames, `fps` per kind at most, made only while someone watches."""

    def __init__(self, *, fps: float = FPS, max_side: int = MAX_SIDE, quality: int = QUALITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < fps <= 60:
            raise ConfigError(f"preview fps must be in (0, 60], got {fps!r}")
        if not 16 <= max_side <= 4096 or not 1 <= quality <= 95:
            raise ConfigError(f"preview size 16..4096 and JPEG quality 1..95, got {max_side!r}, {quality!r}")
        self.period, self.max_side, self.quality = 1.0 / fps, max_side, quality
        self._clock = clock
        self._taps = {kind: _Tap() for kind in KINDS}
        self._cond = threading.Condition()
        self._watching = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.on_jpeg: OnJpeg | None = None  # (kind, jpeg bytes), called on the encoder thread

    # ---- any thread ---------------------------------------------------------------------------------

    def watch(self, on: bool) -> None:
        """Whether anyone is watching; pictures are made only while someone is."""
        self._watching = on

    def offer(self, kind: str, rgba_u8: np.ndarray) -> None:
        """A frame from a thread that holds it; copied only when a picture is due (hot path)."""
        if not self._watching:
            return
        tap = self._taps[kind]
        now = self._clock()
        if now < tap.next_t or tap.busy:
            return
        tap.next_t = now + self.period
        if tap.buf is None or tap.buf.shape != rgba_u8.shape:
            tap.buf = np.empty_like(rgba_u8)  # only when the frame size changes
        np.copyto(tap.buf, rgba_u8)
        with self._cond:
            tap.busy = True
            self._cond.notify()

    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for kind, tap in self._taps.items():
            times = sorted(tap.encode_s)
            out[kind] = {"made": tap.made, "encode_ms": 1000 * times[len(times) // 2] if times else 0.0}
        return out

    # ---- encoder thread -----------------------------------------------------------------------------

    def start(self) -> Preview:
        self._thread = threading.Thread(target=self._encode_loop, name="streamvj-preview", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def encode(self, rgba_u8: np.ndarray) -> bytes:
        """One frame as a JPEG, reduced by the smallest whole factor that fits `max_side` (alpha dropped)."""
        h, w = rgba_u8.shape[:2]
        # RGBX, not RGBA: the alpha is dropped anyway, and Pillow reduces RGBA about 4x slower.
        img = Image.frombuffer("RGBX", (w, h), rgba_u8, "raw", "RGBX", 0, 1)
        factor = -(-max(w, h) // self.max_side)
        if factor > 1:
            # By a whole factor (a box filter): a fraction of what a resize to exactly max_side takes.
            img = img.reduce(factor)
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    def _encode_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not any(t.busy for t in self._taps.values()):
                    self._cond.wait()
                if self._stopping:
                    return
                kind, tap = next((k, t) for k, t in self._taps.items() if t.busy)
            t0 = time.perf_counter()
            assert tap.buf is not None
            try:
                jpeg = self.encode(tap.buf)
            except (OSError, ValueError) as exc:  # Pillow's encoder errors: say why, keep playing
                log.warning("preview %s: cannot encode a %s frame: %s", kind, tap.buf.shape, exc)
                jpeg = None
            tap.encode_s = [*tap.encode_s[-15:], time.perf_counter() - t0]
            with self._cond:
                tap.busy = False
            if jpeg is not None:
                tap.made += 1
                if self.on_jpeg is not None:
                    self.on_jpeg(kind, jpeg)


class PreviewSink:
    """The output's side: a FrameSink in its own sink group, so its thread is the one that offers."""

    name = "preview"

    def __init__(self, preview: Preview) -> None:
        self.preview = preview

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def open(self) -> None:
        pass  # the Preview's encoder thread is started and stopped by whoever made the Preview

    def send(self, rgba_u8: np.ndarray) -> None:
        self.preview.offer("output", rgba_u8)

    def close(self) -> None:
        pass


class PreviewSource:
    """The input's side: passes a source's frames through, offering each to the preview.

    It keeps the wrapped source's fast paths (`frames_owned`, `read_latest_into`), so the
    runtime copies exactly as often as it would without it.
    """

    def __init__(self, source: FrameSource, preview: Preview) -> None:
        self.source, self.preview = source, preview
        self.name = source.name
        self.frames_owned = bool(getattr(source, "frames_owned", False))
        inner_into = getattr(source, "read_latest_into", None)
        if inner_into is not None:
            def read_latest_into(acquire: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray | None:
                return self._seen(inner_into(acquire))

            self.read_latest_into = read_latest_into

    def is_available(self) -> tuple[bool, str]:
        return self.source.is_available()

    def open(self) -> None:
        self.source.open()

    def read_latest(self) -> np.ndarray | None:
        return self._seen(self.source.read_latest())

    def close(self) -> None:
        self.source.close()

    def _seen(self, rgba_u8: np.ndarray | None) -> np.ndarray | None:
        if rgba_u8 is not None and isinstance(rgba_u8, np.ndarray) and rgba_u8.ndim == 3 and rgba_u8.shape[2] == 4 \
                and rgba_u8.dtype == np.uint8:
            self.preview.offer("input", rgba_u8)  # anything else is the runtime's to refuse, with its message
        return rgba_u8
