"""A1111's image preparation for img2img/inpaint and its result grid, as pure PIL/numpy functions.

These follow A1111 1.10's documented behaviour (processing.py / masking.py / images.py): masks are binarised from
alpha or luminance, inverted on request, Gaussian-blurred per axis; "Only masked" works on the mask's bounding box
(plus padding) grown to the output's aspect ratio and pastes the result back; "fill" pre-fills the masked area
with progressively blurred surrounding colours; the overlay keeps original pixels outside the (blurred) mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

Box = tuple[int, int, int, int]  # x1, y1, x2, y2


def resize(img: Image.Image, mode: int, width: int, height: int) -> Image.Image:
    """A1111 resize modes: 0 just resize (Lanczos), 1 crop and resize (scale to cover, centre crop)."""
    if mode == 0:
        return img.resize((width, height), Image.LANCZOS)
    if mode != 1:
        raise ValueError(f"resize mode {mode} is not supported (use 0 just resize or 1 crop and resize)")
    if width / height > img.width / img.height:
        sw, sh = width, max(1, img.height * width // img.width)
    else:
        sw, sh = max(1, img.width * height // img.height), height
    scaled = img.resize((sw, sh), Image.LANCZOS)
    out = Image.new(img.mode if img.mode in ("RGB", "L", "RGBA") else "RGB", (width, height))
    out.paste(scaled, (width // 2 - sw // 2, height // 2 - sh // 2))
    return out


def binary_mask(mask: Image.Image, *, round_mask: bool = True) -> Image.Image:
    """An 'L' mask (white = repaint): from alpha when it varies (thresholded at 128 if rounding), else luminance."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_mask else alpha
    return mask.convert("L")


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Separable Gaussian blur with A1111's kernel size 2·int(2.5·σ + 0.5) + 1 per axis."""
    arr = np.asarray(mask.convert("L"))
    if blur_x > 0:
        k = 2 * int(2.5 * blur_x + 0.5) + 1
        arr = cv2.GaussianBlur(arr, (k, 1), blur_x)
    if blur_y > 0:
        k = 2 * int(2.5 * blur_y + 0.5) + 1
        arr = cv2.GaussianBlur(arr, (1, k), blur_y)
    return Image.fromarray(np.ascontiguousarray(arr))


def prepare_mask(mask: Image.Image, *, invert: bool, blur_x: int, blur_y: int, round_mask: bool) -> Image.Image:
    """Binarise, optionally invert, then blur (A1111's order)."""
    m = binary_mask(mask, round_mask=round_mask)
    if invert:
        m = ImageOps.invert(m)
    return blur_mask(m, blur_x, blur_y)


def crop_region(mask: Image.Image, pad: int) -> Box | None:
    """Bounding box of the non-zero mask, padded and clipped to the image (None for an empty mask)."""
    box = mask.getbbox()
    if box is None:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to about `want` long, centred, shifted back inside [0, limit)."""
    extra = int(want - (hi - lo))
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def expand_to_aspect(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """Grow the box along one axis so its aspect ratio matches the output's (staying inside the image)."""
    x1, y1, x2, y2 = box
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:
        y1, y2 = _grow(y1, y2, (x2 - x1) / target, image_h)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * target, image_w)
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": masked pixels become progressively blurred colours of their surroundings."""
    keep = ImageOps.invert(mask.convert("L"))
    premultiplied = Image.new("RGBa", image.size)
    premultiplied.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    canvas = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            canvas.alpha_composite(layer)
    return canvas.convert("RGB")


def latent_noise_mask(mask: Image.Image, width: int, height: int, *, round_mask: bool) -> Image.Image:
    """The mask the sampler uses: resized to latent size, rounded like A1111, then back up (nearest) to pixels."""
    small = mask.convert("L").resize((max(1, width // 8), max(1, height // 8)), Image.BILINEAR)
    if round_mask:
        small = small.point(lambda v: 255 if v >= 128 else 0)
    return small.resize((width, height), Image.NEAREST)


def overlay(original: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original with alpha = not-masked: composited over the result to keep untouched pixels exactly."""
    keep = ImageOps.invert(mask_for_overlay.convert("L"))
    out = original.convert("RGBA")
    out.putalpha(keep)
    return out


def paste_back(result: Image.Image, box: Box | None, over: Image.Image) -> Image.Image:
    """Put an "Only masked" result (or a whole-picture one, box None) under the overlay."""
    if box is not None:
        x1, y1, x2, y2 = box
        base = Image.new("RGBA", over.size)
        base.paste(resize(result.convert("RGB"), 1, x2 - x1, y2 - y1), (x1, y1))
        result = base
    out = result.convert("RGBA")
    out.alpha_composite(over)
    return out.convert("RGB")


def image_grid(images: list[Image.Image]) -> Image.Image:
    """A1111's default result grid: round(√n) rows, filled row by row."""
    rows = max(1, round(math.sqrt(len(images))))
    rows = min(rows, len(images))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, img in enumerate(images):
        grid.paste(img, (i % cols * w, i // cols * h))
    return grid
