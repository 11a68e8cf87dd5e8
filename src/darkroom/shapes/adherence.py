"""A fixed prompt suite for the default model and the arithmetic of 'how often was the prompt followed'."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .analyse import Analysis, analyse
from .dataset import COLOURS, POSITIONS, SHAPES, SIZES

#: The plainest wording of each position (the dataset uses these among others).
POSITION_PHRASE = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
ATTRIBUTES = ("background", "colour", "kind", "position", "size")


@dataclass(frozen=True)
class PromptSpec:
    """One single-shape prompt with what the picture should show."""

    prompt: str
    background: str
    colour: str
    kind: str
    position: str
    size: str


def make_prompt(background: str, colour: str, kind: str, position: str, size: str) -> PromptSpec:
    """The canonical caption 'a small red circle at the top left on a blue background' for these attributes."""
    for value, allowed, what in ((background, COLOURS, "colour"), (colour, COLOURS, "colour"), (kind, SHAPES, "shape"),
                                 (position, POSITIONS, "position"), (size, SIZES, "size")):
        if value not in allowed:
            raise ValueError(f"unknown {what}: {value!r} (known: {', '.join(allowed)})")
    if colour == background:
        raise ValueError(f"shape and background are both {colour}: the shape would be invisible")
    article = "an" if background[0] in "aeiou" else "a"
    prompt = f"a {size} {colour} {kind} {POSITION_PHRASE[position]} on {article} {background} background"
    return PromptSpec(prompt, background, colour, kind, position, size)


def prompt_suite(n: int = 36, seed: int = 1234, sizes: tuple[str, ...] = ("large", "small", "small")) -> list[PromptSpec]:
    """`n` single-shape prompts covering every colour, kind and position evenly; sizes cycle through `sizes`."""
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"unknown size: {size!r} (known: {', '.join(SIZES)})")
    rng = random.Random(seed)
    colours, kinds, positions = list(COLOURS), list(SHAPES), list(POSITIONS)
    out: list[PromptSpec] = []
    for i in range(n):
        colour = colours[i % len(colours)]
        kind = kinds[i % len(kinds)]
        position = positions[(i * 4 + i // 9) % len(positions)]
        background = rng.choice([c for c in colours if c != colour])
        out.append(make_prompt(background, colour, kind, position, sizes[i % len(sizes)]))
    return out


def score(analysis: Analysis, spec: PromptSpec) -> dict[str, bool]:
    """Which attributes of `spec` the image shows (its largest shape is the one compared)."""
    main = analysis.main
    ok = {"background": analysis.background == spec.background}
    for attr in ("colour", "kind", "position", "size"):
        ok[attr] = main is not None and getattr(main, attr) == getattr(spec, attr)
    return ok


def score_image(image: Image.Image | np.ndarray, spec: PromptSpec) -> dict[str, bool]:
    """Analyse one generated picture and compare it with its prompt."""
    return score(analyse(image), spec)


def rates(scores: list[dict[str, bool]]) -> dict[str, float]:
    """Fraction of images that got each attribute right, plus 'all' (every attribute right)."""
    if not scores:
        raise ValueError("no scores to summarise")
    out = {a: float(np.mean([s[a] for s in scores])) for a in ATTRIBUTES}
    out["all"] = float(np.mean([all(s.values()) for s in scores]))
    return out
