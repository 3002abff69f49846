"""Procedural training pictures with captions: shapes, stripes, checkers, gradients and noise
textures in named colours, drawn in torch from a seeded generator (no files, no downloads).

A *layout* fixes everything geometric (shape kinds, positions, sizes, stripe angles and
periods, noise fields); a *paint* assigns colours and fill styles to its regions. Rendering one
layout with two paints gives the img2img training pairs: same structure, other colours and
textures, and the caption of the target. Coordinates are fractions of the picture, so a layout
renders at any size (trained at 64-128 px, run at 256 px). Stripe and checker periods stay
>= 1/10 of the picture: at 256 px a stripe is >= 12 px wide (1.5 latent pixels at 8x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.10, 0.85),
    "orange": (1.00, 0.55, 0.05),
    "purple": (0.50, 0.15, 0.75),
    "pink": (1.00, 0.60, 0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "grey": (0.50, 0.50, 0.50),
}
COLOUR_NAMES = tuple(COLOURS)
_RGB = torch.tensor([COLOURS[n] for n in COLOUR_NAMES])
SHAPES = ("circle", "square", "triangle", "ring")
STYLES = ("solid", "stripes", "checkers", "gradient", "noise")
# Every word a caption can use: the tokenizer gives each one a single token (training/text.py).
WORDS = COLOUR_NAMES + SHAPES + (
    "a", "an", "and", "on", "to", "from", "with", "background", "stripes", "striped", "checkerboard",
    "checkered", "gradient", "noise", "textured",
)
_MIN_PERIOD, _MAX_PERIOD = 1 / 10, 1 / 4


@dataclass
class Region:
    """Geometry of one fill, shared by every paint of a layout."""

    angle: float
    period: float
    noise: torch.Tensor  # (1, 1, k, k) low-resolution field, upsampled smoothly when drawn


@dataclass
class Shape:
    kind: str
    cx: float
    cy: float
    size: float
    rotation: float
    region: Region


@dataclass
class Layout:
    background: Region
    shapes: list[Shape]


@dataclass
class Paint:
    """Per region (background first, then the shapes): (style, colour index, second colour index)."""

    fills: list[tuple[str, int, int]]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _choice(g: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=g))


def _region(g: torch.Generator) -> Region:
    k = 3 + _choice(g, 4)
    return Region(angle=_uniform(g, 0.0, math.pi), period=math.exp(_uniform(g, math.log(_MIN_PERIOD),
                                                                          math.log(_MAX_PERIOD))),
                  noise=torch.randn(1, 1, k, k, generator=g))


def random_layout(g: torch.Generator) -> Layout:
    """A background and 0-3 shapes (one in seven layouts is a full-frame pattern)."""
    n = [0, 1, 1, 1, 2, 2, 3][_choice(g, 7)]
    shapes = []
    for _ in range(n):
        size = _uniform(g, 0.12, 0.34 if n == 1 else 0.24)
        shapes.append(Shape(kind=SHAPES[_choice(g, len(SHAPES))], cx=_uniform(g, 0.15, 0.85),
                            cy=_uniform(g, 0.15, 0.85), size=size, rotation=_uniform(g, 0.0, 2 * math.pi),
                            region=_region(g)))
    return Layout(background=_region(g), shapes=shapes)


def _style(g: torch.Generator, solid_weight: float) -> str:
    if float(torch.rand((), generator=g)) < solid_weight:
        return "solid"
    return STYLES[1 + _choice(g, len(STYLES) - 1)]


def _two_colours(g: torch.Generator) -> tuple[int, int]:
    a = _choice(g, len(COLOUR_NAMES))
    b = (a + 1 + _choice(g, len(COLOUR_NAMES) - 1)) % len(COLOUR_NAMES)
    return a, b


def random_paint(g: torch.Generator, layout: Layout) -> Paint:
    fills = []
    for i in range(1 + len(layout.shapes)):
        style = _style(g, 0.55 if i == 0 and layout.shapes else 0.6)
        a, b = _two_colours(g)
        fills.append((style, a, b))
    return _visible(g, fills)


def _visible(g: torch.Generator, fills: list[tuple[str, int, int]]) -> Paint:
    """A solid shape painted in its solid background's colour would vanish: give it another one."""
    for i in range(1, len(fills)):
        if fills[i][0] == "solid" == fills[0][0] and fills[i][1] == fills[0][1]:
            other = (fills[0][1] + 1 + _choice(g, len(COLOUR_NAMES) - 1)) % len(COLOUR_NAMES)
            fills[i] = ("solid", other, fills[i][2])
    return Paint(fills)


def palette_paint(layout: Layout, paint: Paint, first: int, second: int) -> Paint:
    """`paint` recoloured with two colours, textures kept: the background in (first, second),
    each shape in (second, first), so solid shapes stay visible on a solid background."""
    fills = [(style, first, second) if i == 0 else (style, second, first)
             for i, (style, _, _) in enumerate(paint.fills)]
    return Paint(fills)


def repaint(g: torch.Generator, layout: Layout, paint: Paint) -> Paint:
    """Another paint of the same layout: each region keeps or changes its colours and style."""
    fresh = random_paint(g, layout)
    fills = []
    for old, new in zip(paint.fills, fresh.fills):
        r = float(torch.rand((), generator=g))
        if r < 0.3:
            fills.append(old)
        elif r < 0.9:  # colours change, the texture stays
            fills.append((old[0], new[1], new[2]))
        else:  # rarely a new texture: its pattern (a noise field...) is not in the source
            fills.append(new)
    return _visible(g, fills)


# ---- drawing -------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return c.view(1, -1).expand(size, size), c.view(-1, 1).expand(size, size)


def _soft(signed: torch.Tensor, size: int) -> torch.Tensor:
    """Coverage from a signed distance (negative inside), one pixel of antialiasing."""
    return (0.5 - signed * size).clamp(0.0, 1.0)


def _fill(style: str, a: int, b: int, region: Region, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    size = x.shape[0]
    ca, cb = _RGB[a].view(3, 1, 1), _RGB[b].view(3, 1, 1)
    u = x * math.cos(region.angle) + y * math.sin(region.angle)
    if style == "solid":
        return ca.expand(3, size, size)
    if style == "stripes":
        phase = u / region.period
        t = _soft((phase - phase.floor() - 0.5).abs() - 0.25, max(1, int(size * region.period)))
    elif style == "checkers":
        v = -x * math.sin(region.angle) + y * math.cos(region.angle)
        su = torch.cos(math.pi * u / region.period)  # cells one period wide
        sv = torch.cos(math.pi * v / region.period)
        t = (su * sv * 4.0).clamp(-1, 1) * 0.5 + 0.5
    elif style == "gradient":
        lo, hi = min(0.0, math.cos(region.angle)) + min(0.0, math.sin(region.angle)), \
            max(0.0, math.cos(region.angle)) + max(0.0, math.sin(region.angle))
        t = (u - lo) / (hi - lo)
    else:  # noise: a smooth random field, two colours
        field = F.interpolate(region.noise, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        t = torch.sigmoid(field * 2.5)
    return ca * (1 - t) + cb * t


def _mask(shape: Shape, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    size = x.shape[0]
    dx, dy = x - shape.cx, y - shape.cy
    cr, sr = math.cos(shape.rotation), math.sin(shape.rotation)
    rx, ry = dx * cr + dy * sr, -dx * sr + dy * cr
    if shape.kind == "circle":
        d = (rx**2 + ry**2).sqrt() - shape.size
    elif shape.kind == "ring":
        d = ((rx**2 + ry**2).sqrt() - 0.7 * shape.size).abs() - 0.3 * shape.size
    elif shape.kind == "square":
        d = torch.maximum(rx.abs(), ry.abs()) - 0.8 * shape.size
    else:  # triangle: three half-planes
        d = None
        for k in range(3):
            ang = 2 * math.pi * k / 3 + math.pi / 2
            h = rx * math.cos(ang) + ry * math.sin(ang) - 0.5 * shape.size
            d = h if d is None else torch.maximum(d, h)
    return _soft(d, size)


def render(layout: Layout, paint: Paint, size: int) -> torch.Tensor:
    """(3, size, size) in [0, 1]."""
    x, y = _grid(size)
    img = _fill(*paint.fills[0], layout.background, x, y)
    for shape, fill in zip(layout.shapes, paint.fills[1:]):
        m = _mask(shape, x, y)
        img = img * (1 - m) + _fill(*fill, shape.region, x, y) * m
    return img


# ---- captions ------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(style: str, a: str, b: str, kind: str) -> str:
    if style == "solid":
        return f"{_article(a)} {a} {kind}"
    if style == "stripes":
        return f"{_article(kind)} {kind} with {a} and {b} stripes"
    if style == "checkers":
        return f"a checkered {a} and {b} {kind}"
    if style == "gradient":
        return f"{_article(kind)} {kind} with a gradient from {a} to {b}"
    return f"a textured {a} and {b} {kind}"


def _pattern_phrase(style: str, a: str, b: str) -> str:
    if style == "solid":
        return f"{_article(a)} {a} background"
    if style == "stripes":
        return f"{a} and {b} stripes"
    if style == "checkers":
        return f"{_article(a)} {a} and {b} checkerboard"
    if style == "gradient":
        return f"a gradient from {a} to {b}"
    return f"{a} and {b} noise"


def caption(layout: Layout, paint: Paint) -> str:
    """"a red circle and a square with blue and white stripes on a green background"."""
    names = [(style, COLOUR_NAMES[a], COLOUR_NAMES[b]) for style, a, b in paint.fills]
    background = _pattern_phrase(*names[0])
    if not layout.shapes:
        return background
    objects = " and ".join(_object_phrase(*n, s.kind) for n, s in zip(names[1:], layout.shapes))
    return f"{objects} on {background}"


# ---- batches -------------------------------------------------------------------------------------

@dataclass
class PairBatch:
    source: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    target: torch.Tensor  # same layouts, other paints (or the same paint)
    captions: list[str]  # of the targets


def pair_batch(g: torch.Generator, batch: int, size: int, same_fraction: float = 0.4,
               palette_fraction: float = 0.3) -> PairBatch:
    """Source/target pictures sharing a layout; a `same_fraction` of them are identical, a
    `palette_fraction` are recoloured to two colours captioned "red and yellow" (a prompt that
    names no shapes: the structure must come from the source), the rest are repainted and
    captioned in full."""
    sources, targets, texts = [], [], []
    for _ in range(batch):
        layout = random_layout(g)
        paint_a = random_paint(g, layout)
        kind = float(torch.rand((), generator=g))
        a = render(layout, paint_a, size)
        sources.append(a)
        if kind < same_fraction:
            targets.append(a)
            texts.append(caption(layout, paint_a))
        elif kind < same_fraction + palette_fraction:
            first, second = _two_colours(g)
            targets.append(render(layout, palette_paint(layout, paint_a, first, second), size))
            texts.append(f"{COLOUR_NAMES[first]} and {COLOUR_NAMES[second]}")
        else:
            paint_b = repaint(g, layout, paint_a)
            targets.append(render(layout, paint_b, size))
            texts.append(caption(layout, paint_b))
    return PairBatch(torch.stack(sources) * 2 - 1, torch.stack(targets) * 2 - 1, texts)


def image_batch(g: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """(B, 3, size, size) in [-1, 1]: pictures alone, for the autoencoder."""
    images = []
    for _ in range(batch):
        layout = random_layout(g)
        images.append(render(layout, random_paint(g, layout), size))
    return torch.stack(images) * 2 - 1
