"""The GPU texture stage: shaders/*.frag run with moderngl on a headless GL context.

Same math as engine/core/fx.py (see docs/fx.md), on rgba_u8 frames (H,W,4 uint8, top-down rows).

Row order is handled here, once: frames are uploaded as they are, so GL memory holds the
top row at t = 0 (upside down by GL's convention). Every pass maps uv straight to uv and
`read_into` returns rows in the same order, so nothing is ever flipped; the one place that
must know is `fit`, whose rects therefore measure y from the top row, like numpy.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engine.core.fit import cover_crop_box
from engine.errors import BridgeUnavailable, FrameError

SHADER_DIR = Path(__file__).resolve().parents[2] / "shaders"
INSTALL_HINT = "GL FX need moderngl: pip install 'streamvj[gl]'"
DRIVER_HINT = "on Debian/Ubuntu: apt-get install -y libegl1 libgl1 libgl1-mesa-dri"
FIT_MODES = ("cover", "contain")
GL_VERSION = 330


def _import_moderngl() -> ModuleType:
    try:
        import moderngl
    except ImportError:
        raise BridgeUnavailable(INSTALL_HINT) from None
    return moderngl


def create_context() -> Any:
    """A standalone GL 3.3+ context: EGL on Linux (needs no display), the platform default elsewhere."""
    moderngl = _import_moderngl()
    kwargs: dict[str, Any] = {"backend": "egl"} if sys.platform.startswith("linux") else {}
    try:
        return moderngl.create_standalone_context(require=GL_VERSION, **kwargs)
    except Exception as exc:  # glcontext raises bare Exception for a missing library or driver
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BridgeUnavailable(f"GL FX: no headless OpenGL 3.3 context ({reason}); {DRIVER_HINT}") from exc


def is_available() -> tuple[bool, str]:
    """(True, renderer) when moderngl imports and a headless context opens, else (False, why)."""
    try:
        ctx = create_context()
    except BridgeUnavailable as exc:
        return False, str(exc)
    renderer = ctx.info.get("GL_RENDERER", "OpenGL")
    ctx.release()
    return True, renderer


def contain_box(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) in the destination of the whole source, scaled to fit (letterbox)."""
    scale = min(dst_h / src_h, dst_w / src_w)
    box_h = min(dst_h, max(1, round(src_h * scale)))
    box_w = min(dst_w, max(1, round(src_w * scale)))
    return (dst_h - box_h) // 2, (dst_w - box_w) // 2, box_h, box_w


def _read_shader(name: str) -> str:
    path = SHADER_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BridgeUnavailable(f"GL FX: shader {path} not found (the shaders/ folder ships with streamvj)") \
            from None


class GlFx:
    """The FX passes on one headless context, with every texture and framebuffer made up front.

    Each pass uploads its rgba_u8 inputs, draws one triangle and reads the result back into
    `out` or, by default, this object's output buffer, which the next call overwrites (copy it
    to keep it). Only `fit` allocates: a new source texture when the input size changes.
    """

    def __init__(self, width: int, height: int, ctx: Any = None):
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FrameError(f"GlFx {name} must be a positive integer, got {value!r}")
        self.width, self.height = width, height
        self._gl = _import_moderngl()
        self._own_ctx = ctx is None
        self.ctx = create_context() if ctx is None else ctx
        vert = _read_shader("fullscreen.vert")
        self._programs: dict[str, Any] = {}
        self._vaos: dict[str, Any] = {}
        for name in ("fit", "feedback", "temporal_blend", "grade"):
            program = self.ctx.program(vertex_shader=vert, fragment_shader=_read_shader(f"{name}.frag"))
            self._programs[name] = program
            self._vaos[name] = self.ctx.vertex_array(program, [])
        size = (width, height)
        self._inputs = [self.ctx.texture(size, 4, dtype="f1") for _ in range(2)]
        for texture in self._inputs:
            # The same-size passes use texelFetch; NEAREST keeps them complete without mipmaps.
            texture.filter = (self._gl.NEAREST, self._gl.NEAREST)
        self._target = self.ctx.texture(size, 4, dtype="f1")
        self._fbo = self.ctx.framebuffer(color_attachments=[self._target])
        self._out = np.empty((height, width, 4), dtype=np.uint8)
        self._src: Any = None
        self._src_shape: tuple[int, int] = (0, 0)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _check(self, frame: np.ndarray, label: str, shape: tuple[int, int] | None = None) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
                or frame.shape[2] != 4:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise FrameError(f"GlFx {label} must be an HxWx4 uint8 numpy array, got {got}")
        if shape is not None and frame.shape[:2] != shape:
            raise FrameError(f"GlFx {label} has shape {frame.shape}; this GlFx is "
                             f"{(self.height, self.width, 4)} (fit it first)")

    def _upload(self, slot: int, frame: np.ndarray, label: str) -> None:
        self._check(frame, label, (self.height, self.width))
        self._inputs[slot].write(np.ascontiguousarray(frame))

    def _draw(self, name: str, out: np.ndarray | None, **uniforms: Any) -> np.ndarray:
        if out is not None:
            self._check(out, "out", (self.height, self.width))
            if not out.flags.c_contiguous:
                raise FrameError("GlFx out must be C-contiguous")
        program = self._programs[name]
        for key, value in uniforms.items():
            program[key].value = value
        self._fbo.use()
        self._vaos[name].render(self._gl.TRIANGLES, vertices=3)
        target = self._out if out is None else out
        self._fbo.read_into(target, components=4, alignment=1)
        return target

    def _two_inputs(self, name: str, frame: np.ndarray, other: np.ndarray, other_name: str,
                    amount: float, out: np.ndarray | None) -> np.ndarray:
        self._upload(0, frame, "frame")
        self._upload(1, other, other_name)
        self._inputs[0].use(location=0)
        self._inputs[1].use(location=1)
        return self._draw(name, out, u_src=0, **{f"u_{other_name}": 1}, u_amount=float(amount))

    # ---- passes -----------------------------------------------------------------------------------

    def feedback(self, rgba_u8: np.ndarray, last_rgba_u8: np.ndarray, amount: float,
                 out: np.ndarray | None = None) -> np.ndarray:
        """Mix the last output into this input: mix(frame, last, amount) on RGB."""
        return self._two_inputs("feedback", rgba_u8, last_rgba_u8, "last", amount, out)

    def temporal_blend(self, rgba_u8: np.ndarray, prev_rgba_u8: np.ndarray, amount: float,
                       out: np.ndarray | None = None) -> np.ndarray:
        """Anti-flicker: mix(frame, previous shown frame, amount) on RGB."""
        return self._two_inputs("temporal_blend", rgba_u8, prev_rgba_u8, "prev", amount, out)

    def grade(self, rgba_u8: np.ndarray, *, brightness: float = 0.0, contrast: float = 1.0,
              saturation: float = 1.0, hue: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
        """Contrast, brightness, saturation, hue (degrees), as engine/core/fx.py grade."""
        self._upload(0, rgba_u8, "frame")
        self._inputs[0].use(location=0)
        return self._draw("grade", out, u_src=0, u_brightness=float(brightness), u_contrast=float(contrast),
                          u_saturation=float(saturation), u_hue_deg=float(hue))

    def fit(self, rgba_u8: np.ndarray, mode: str = "cover", border: tuple[float, float, float, float] =
            (0.0, 0.0, 0.0, 1.0), out: np.ndarray | None = None) -> np.ndarray:
        """A frame of any size -> (height, width): cover crops like engine/core/fit.py, contain letterboxes."""
        if mode not in FIT_MODES:
            raise FrameError(f"unknown fit mode {mode!r}: allowed {', '.join(FIT_MODES)}")
        self._check(rgba_u8, "frame")
        src_h, src_w = rgba_u8.shape[:2]
        if mode == "cover":
            top, left, crop_h, crop_w = cover_crop_box(src_h, src_w, self.height, self.width)
            box_h, box_w = self.height, self.width
            dst_rect = (0.0, 0.0, 1.0, 1.0)
        else:
            top, left, crop_h, crop_w = 0, 0, src_h, src_w
            b_top, b_left, box_h, box_w = contain_box(src_h, src_w, self.height, self.width)
            dst_rect = (b_left / self.width, b_top / self.height, box_w / self.width, box_h / self.height)
        texture = self._source_texture(src_h, src_w)
        texture.write(np.ascontiguousarray(rgba_u8))
        texture.use(location=0)
        x0, y0, w, h = left / src_w, top / src_h, crop_w / src_w, crop_h / src_h
        half_x, half_y = 0.5 / src_w, 0.5 / src_h
        # Source pixels per destination pixel, per axis; > 1 means shrinking.
        ratio_x, ratio_y = crop_w / box_w, crop_h / box_h
        taps = (max(1, math.ceil(ratio_x - 1e-6)), max(1, math.ceil(ratio_y - 1e-6)))
        return self._draw("fit", out, u_src=0, u_dst_rect=dst_rect, u_src_rect=(x0, y0, w, h),
                          u_src_clamp=(x0 + half_x, y0 + half_y, x0 + w - half_x, y0 + h - half_y),
                          u_footprint=(ratio_x / src_w, ratio_y / src_h), u_taps=taps,
                          u_border=tuple(float(c) for c in border))

    def _source_texture(self, src_h: int, src_w: int) -> Any:
        if self._src_shape != (src_h, src_w):
            if self._src is not None:
                self._src.release()
            self._src = self.ctx.texture((src_w, src_h), 4, dtype="f1")
            self._src.filter = (self._gl.LINEAR, self._gl.LINEAR)
            self._src.repeat_x = self._src.repeat_y = False
            self._src_shape = (src_h, src_w)
        return self._src

    # ---- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release every GL object, and the context if this GlFx made it; it cannot be used after."""
        resources = [*self._vaos.values(), *self._programs.values(), self._fbo, self._target, *self._inputs]
        if self._src is not None:
            resources.append(self._src)
        for resource in resources:
            resource.release()
        self._vaos.clear()
        self._programs.clear()
        self._src = None
        if self._own_ctx:
            self.ctx.release()

    def __enter__(self) -> GlFx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
