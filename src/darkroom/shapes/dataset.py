"""A seeded procedural dataset of 64×64 shape pictures with varied captions (training data for the default model)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Named colours, chosen far apart in RGB so a blurred rendering still maps back to the right name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 40),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 180),
    "pink": (255, 130, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
#: Position names → (column, row) in a 3×3 grid, 0 = left/top, 1 = centre, 2 = right/bottom.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "centre": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
#: Pixel diameter range (of the circumscribed circle) per size word, for a 64×64 image.
SIZE_PX: dict[str, tuple[float, float]] = {"small": (17.0, 20.0), "large": (26.0, 31.0)}
IMAGE_SIZE = 64
_SUPERSAMPLE = 4

# --- wording -------------------------------------------------------------------------------------------
_SHAPE_WORDS = {
    "circle": ["circle", "circle", "disc", "round circle"],
    "square": ["square", "square", "box", "square block"],
    "triangle": ["triangle", "triangle", "triangle shape"],
    "star": ["star", "star", "star shape"],
}
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
#: "centre", "center" and "middle" are kept for the centre cell alone: when they also named the middle of an edge
#: ("top centre", "middle left"), a model trained on them drew centred shapes at the edges.
_POSITION_PHRASES = {
    "top left": ["at the top left", "in the top left corner", "in the upper left", "top-left"],
    "top": ["at the top", "near the top", "along the top", "at the top edge"],
    "top right": ["at the top right", "in the top right corner", "in the upper right", "top-right"],
    "left": ["on the left", "at the left", "on the left side", "at the left edge"],
    "centre": ["in the centre", "in the center", "in the middle", "centred"],
    "right": ["on the right", "at the right", "on the right side", "at the right edge"],
    "bottom left": ["at the bottom left", "in the bottom left corner", "in the lower left", "bottom-left"],
    "bottom": ["at the bottom", "near the bottom", "along the bottom", "at the bottom edge"],
    "bottom right": ["at the bottom right", "in the bottom right corner", "in the lower right", "bottom-right"],
}


@dataclass(frozen=True)
class ShapeLabel:
    """One drawn shape: what it is and where, plus which attributes the caption mentions."""

    kind: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]  # (x, y) pixels
    diameter: float  # pixels, circumscribed circle


@dataclass(frozen=True)
class SceneLabel:
    """Ground truth of one image."""

    background: str
    shapes: tuple[ShapeLabel, ...]
    mentions: frozenset[str] = field(default_factory=frozenset)  # subset of {"background", "size", "position"}


@dataclass(frozen=True)
class Sample:
    """A dataset item: (64, 64, 3) uint8 image, its caption and labels."""

    image: np.ndarray
    caption: str
    label: SceneLabel


def _star_points(cx: float, cy: float, r: float, inner: float = 0.45) -> list[tuple[float, float]]:
    """The 10 vertices of an upright five-pointed star."""
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * inner
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def shape_polygon(kind: str, cx: float, cy: float, d: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape (None for a circle), all inside the circle of diameter `d` at (cx, cy)."""
    r = d / 2
    if kind == "square":
        h = r * 0.8  # side 1.6 r: visually similar weight to the circle
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        # upright equilateral-ish triangle, base and apex spanning the full diameter
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if kind == "star":
        return _star_points(cx, cy + r * 0.08, r * 1.05)
    if kind == "circle":
        return None
    raise ValueError(f"unknown shape kind: {kind!r} (known: {', '.join(SHAPES)})")


def render(background: str, shapes: list[tuple[str, str, tuple[float, float], float]], size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw shapes [(kind, colour, (cx, cy), diameter)] anti-aliased on a flat background → (size, size, 3) uint8."""
    s = _SUPERSAMPLE
    img = Image.new("RGB", (size * s, size * s), COLOURS[background])
    draw = ImageDraw.Draw(img)
    for kind, colour, (cx, cy), d in shapes:
        rgb = COLOURS[colour]
        poly = shape_polygon(kind, cx * s, cy * s, d * s)
        if poly is None:
            r = d * s / 2
            draw.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], fill=rgb)
        else:
            draw.polygon(poly, fill=rgb)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape_phrase(rng: random.Random, s: ShapeLabel, with_size: bool) -> str:
    noun = rng.choice(_SHAPE_WORDS[s.kind])
    words = ([rng.choice(_SIZE_WORDS[s.size])] if with_size else []) + [s.colour, noun]
    return f"{_a(words[0])} {' '.join(words)}"


def caption_for(rng: random.Random, label: SceneLabel) -> str:
    """One of many wordings that state exactly the attributes listed in `label.mentions`."""
    with_size = "size" in label.mentions
    with_pos = "position" in label.mentions
    with_bg = "background" in label.mentions
    parts = []
    for s in label.shapes:
        p = _shape_phrase(rng, s, with_size)
        if with_pos:
            pos = rng.choice(_POSITION_PHRASES[s.position])
            p = f"{pos}: {p}" if (pos.endswith("left") or pos.endswith("right")) and "-" in pos and rng.random() < 0.5 else f"{p} {pos}"
        parts.append(p)
    things = " and ".join(parts)
    if not with_bg:
        return rng.choice([things, f"{things}", f"a picture of {things}", f"an image of {things}"])
    bg = label.background
    return rng.choice(
        [
            f"{things} on {_a(bg)} {bg} background",
            f"{things} on {bg}",
            f"{things}, {bg} background",
            f"{bg} background with {things}",
            f"{_a(bg)} {bg} background with {things}",
            f"on {_a(bg)} {bg} background, {things}",
            f"{things} against {_a(bg)} {bg} background",
            f"a picture of {things} on {_a(bg)} {bg} background",
        ]
    )


def _draw_mentions(rng: random.Random, n_shapes: int) -> frozenset[str]:
    """Which optional attributes a caption states (colour and kind are always stated)."""
    mentions = {m for m, p in (("background", 0.85), ("position", 0.85), ("size", 0.6)) if rng.random() < p}
    if n_shapes == 2:
        mentions.add("position")  # two shapes: always say where each one is, so colour binding is learnable
    return frozenset(mentions)


def alternative_captions(sample: Sample, index: int, k: int) -> list[str]:
    """`k` more captions for the same image (fresh wording and mentions), deterministic in `index`."""
    rng = random.Random(index * 104729 + 99991)
    out = []
    for _ in range(k):
        label = SceneLabel(sample.label.background, sample.label.shapes, _draw_mentions(rng, len(sample.label.shapes)))
        out.append(caption_for(rng, label))
    return out


def make_sample(seed: int, *, two_shape_prob: float = 0.3) -> Sample:
    """Deterministically build sample number `seed`: a scene, its rendering and a caption."""
    rng = random.Random(seed * 7919 + 17)
    names = list(COLOURS)
    background = rng.choice(names)
    n = 2 if rng.random() < two_shape_prob else 1
    if n == 2:
        # two shapes in opposite or far-apart cells, small or mixed sizes so they never overlap
        pairs = [("left", "right"), ("top", "bottom"), ("top left", "bottom right"), ("top right", "bottom left"),
                 ("top left", "top right"), ("bottom left", "bottom right"), ("top left", "bottom left"),
                 ("top right", "bottom right")]
        positions = list(rng.choice(pairs))
        rng.shuffle(positions)
        sizes = ["small", "small"] if rng.random() < 0.6 else ["small", "large"]
        rng.shuffle(sizes)
    else:
        positions = [rng.choice(list(POSITIONS))]
        sizes = [rng.choice(SIZES)]
    shapes: list[ShapeLabel] = []
    used_colours = {background}
    for pos, size in zip(positions, sizes):
        colour = rng.choice([c for c in names if c not in used_colours])
        used_colours.add(colour)
        kind = rng.choice(SHAPES)
        d = rng.uniform(*SIZE_PX[size])
        col, row = POSITIONS[pos]
        cell = IMAGE_SIZE / 3
        margin = d / 2 + 1.5
        jitter = 3.0
        cx = (col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter)
        cx = min(max(cx, margin), IMAGE_SIZE - margin)
        cy = min(max(cy, margin), IMAGE_SIZE - margin)
        shapes.append(ShapeLabel(kind, colour, size, pos, (cx, cy), d))
    label = SceneLabel(background, tuple(shapes), _draw_mentions(rng, n))
    image = render(background, [(s.kind, s.colour, s.centre, s.diameter) for s in shapes])
    return Sample(image, caption_for(rng, label), label)


def make_dataset(n: int, start: int = 0, **kw) -> list[Sample]:
    """Samples `start` … `start + n - 1` (each one a pure function of its index)."""
    return [make_sample(i, **kw) for i in range(start, start + n)]


def make_images(n: int, start: int = 0, **kw) -> tuple[np.ndarray, list[str], list[SceneLabel]]:
    """The dataset as arrays: (n, 64, 64, 3) uint8 images, captions and labels."""
    samples = make_dataset(n, start, **kw)
    return np.stack([s.image for s in samples]), [s.caption for s in samples], [s.label for s in samples]
