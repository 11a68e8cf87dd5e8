"""Run an upscaler over an image tile by tile (overlap, feathered blending) so 4× stays in bounded memory.

Tiles are `tile`² input pixels on a grid whose neighbours overlap by at least `overlap` pixels (the last tile of a
row/column is shifted back to end flush with the image, so every tile has full size). Each tile's output is weighted
by a separable mask that, inside an overlap band of width w, is 0 over the w/4 pixels nearest the tile's own edge,
rises linearly to 1 across the middle half and stays 1 beyond; the neighbour's mask is the exact complement, so the
weights sum to one everywhere (a partition of unity) and no pixel within w/4 of a tile edge — where zero padding
makes a tile differ from the whole image — is used at all. With w/4 ≥ the model's receptive radius the tiled result
equals the untiled one up to float rounding; beyond it, the seams are feathered.

For pixel-unshuffle models (Real-ESRGAN ×2/×1) tiles start on multiples of the unshuffle factor and the overlap is
widened by it, since their trunk sees that many input pixels per feature.

Tiles run one at a time on the model's device; the result is assembled on the CPU in float32. A GPU out-of-memory
halves the tile and restarts, down to `min_tile` (ComfyUI's ImageUpscaleWithModel recovery; defaults tile 512,
overlap 32 as there).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from .loader import UpscaleModel

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 128


def _is_oom(e: BaseException) -> bool:
    """An accelerator out-of-memory error (CUDA's OutOfMemoryError; MPS reports a RuntimeError)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "MPS backend out of memory" in str(e)


def tile_spans(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one axis: stride tile − overlap, last tile flush with the end, starts on
    multiples of `multiple` (pixel-unshuffle models need aligned tiles)."""
    if size <= tile:
        return [(0, size)]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, size - tile, stride))
    last = (size - tile) // multiple * multiple
    if not starts or last > starts[-1]:
        starts.append(last)
    return [(s, tile if i < len(starts) - 1 else size - s) for i, s in enumerate(starts)]


def tile_count(height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
               multiple: int = 1) -> int:
    """How many tiles one image of this size takes."""
    return len(tile_spans(height, tile, overlap, multiple)) * len(tile_spans(width, tile, overlap, multiple))


def axis_weights(spans: list[tuple[int, int]], index: int, scale: int) -> torch.Tensor:
    """The blend weights (length·scale,) of tile `index` along one axis (see the module docstring)."""
    start, length = spans[index]
    q = (torch.arange(length * scale, dtype=torch.float64) + 0.5) / scale + start  # input-pixel coordinate
    w = torch.ones_like(q)
    if index > 0:  # band shared with the previous tile: [start, prev_end)
        p_start, p_len = spans[index - 1]
        band = p_start + p_len - start
        if band > 0:
            m = band / 4
            w = w * ((q - start - m) / max(band - 2 * m, 1e-9)).clamp(0, 1)
    if index < len(spans) - 1:  # band shared with the next tile: [next_start, end)
        n_start = spans[index + 1][0]
        band = start + length - n_start
        if band > 0:
            m = band / 4
            w = w * ((start + length - m - q) / max(band - 2 * m, 1e-9)).clamp(0, 1)
    return w.float()


def _tiled(model: UpscaleModel, pixels: torch.Tensor, tile: int, overlap: int,
           run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    B, _, H, W = pixels.shape
    s = model.scale
    mult = max(1, int(getattr(model, "size_multiple", 1)))
    ys, xs = tile_spans(H, tile, overlap, mult), tile_spans(W, tile, overlap, mult)
    out = torch.zeros(B, model.output_channels, H * s, W * s)  # (B, C, H·s, W·s) on the CPU
    wy = [axis_weights(ys, i, s) for i in range(len(ys))]
    wx = [axis_weights(xs, j, s) for j in range(len(xs))]
    for b in range(B):
        if len(ys) == len(xs) == 1:
            out[b : b + 1] = run(pixels[b : b + 1])
            continue
        total = torch.zeros(1, 1, H * s, W * s)
        for i, (y, h) in enumerate(ys):
            for j, (x, w) in enumerate(xs):
                part = run(pixels[b : b + 1, :, y : y + h, x : x + w])  # (1, C, h·s, w·s)
                mask = wy[i][:, None] * wx[j][None, :]  # (h·s, w·s)
                out[b : b + 1, :, y * s : (y + h) * s, x * s : (x + w) * s] += part * mask
                total[..., y * s : (y + h) * s, x * s : (x + w) * s] += mask
        out[b : b + 1] /= total.clamp_min(1e-12)
    return out


def upscale_tensor(model: UpscaleModel, pixels: torch.Tensor, *, tile: int = DEFAULT_TILE,
                   overlap: int = DEFAULT_OVERLAP, min_tile: int = MIN_TILE,
                   on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] → (B, C_out, H·s, W·s) float32 on the CPU, unclamped, computed in tiles.

    `tile` ≥ the image runs it whole. On a GPU out-of-memory the tile is halved and the image restarted until the
    tile would drop below `min_tile`, then the error is raised. `on_tile` is called after every tile (progress).
    """
    if tile < 8:
        raise ValueError(f"upscale tile size must be at least 8 pixels (got {tile})")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"upscale tile overlap must be between 0 and half the tile size (got overlap {overlap}, "
                         f"tile {tile})")
    if pixels.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(pixels.shape)}")
    if pixels.shape[1] != model.input_channels:
        raise ValueError(f"upscale model {model.name!r} takes {model.input_channels}-channel images, "
                         f"got {pixels.shape[1]} channels")
    device, dtype = model.device, model.dtype

    def run(part: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model(part.to(device=device, dtype=dtype)).float().cpu()
        if on_tile is not None:
            on_tile()
        return out

    while True:
        try:
            # pixel-unshuffle models see `multiple`× fewer trunk pixels per input pixel: widen the overlap to match
            mult = max(1, int(getattr(model, "size_multiple", 1)))
            return _tiled(model, pixels, tile, min(overlap * mult, tile // 2), run)
        except Exception as e:  # noqa: BLE001 — only accelerator OOM is retried
            if not _is_oom(e) or tile // 2 < min_tile:
                raise
            tile //= 2
            log.warning("upscale: out of memory, retrying with %d px tiles", tile)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def upscale_image(model: UpscaleModel, images: torch.Tensor, *, tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, min_tile: int = MIN_TILE,
                  on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """IMAGE (B, H, W, C) in [0, 1] → (B, H·s, W·s, C) float32 clamped to [0, 1] (ComfyUI's ImageUpscaleWithModel)."""
    if images.dim() != 4:
        raise ValueError(f"expected IMAGE (B, H, W, C), got shape {tuple(images.shape)}")
    out = upscale_tensor(model, images.movedim(-1, 1), tile=tile, overlap=overlap, min_tile=min_tile,
                         on_tile=on_tile)  # (B, C, H·s, W·s)
    return torch.clamp(out.movedim(1, -1), 0.0, 1.0)
