"""Tiled img2img upscaling: A1111's "SD upscale" script and ComfyUI's Ultimate SD Upscale custom node.

    big = upscale_to(image, 1024, 1024, model=esrgan)          # IMAGE (B, H, W, 3) → (B, 1024, 1024, 3)
    sampler = ksampler_for(ckpt, positive, negative, seed=1, steps=20, cfg=7.0, sampler="euler",
                           scheduler="normal", denoise=0.3)
    out = tiled_img2img(big, vae=ckpt.vae, sample_tile=sampler, tile_width=576, tile_height=576, overlap=64)
    out = sd_upscale(ckpt, image, positive, negative, width=1024, height=1024, upscale_model=esrgan, …)  # both

1. Upscale: an upscale model runs while the image is smaller than the target (at most three passes, tiled as
   ImageUpscaleWithModel), then Lanczos (or nearest) resizes to the exact target size; without a model only the
   resize runs.
2. Tiles: windows of `tile_width` × `tile_height` pixels on a grid whose neighbours overlap by at least `overlap`
   pixels (`darkroom.upscale.tiled.tile_spans`: starts on multiples of 8, the last window flush with the edge, so
   every window has the full size; an image smaller than a window is one window). Sizes that are not multiples of
   8 are edge-padded for the work and cropped back.
3. Redraw: each window is VAE-encoded, sampled by `sample_tile` (img2img with the same conditioning, sampler,
   steps, cfg and denoise for every tile) and decoded. Only one tile's latent is in the UNet/VAE at a time; the
   canvas stays on the CPU in float32.
4. Blend: tile i has weights w_i (`darkroom.upscale.tiled`'s feather: zero in the quarter of an overlap nearest
   the tile's edge, a linear ramp across its middle half, one elsewhere; normalised per axis so Σ w_i = 1 at every
   pixel). Tiles are composited in order with alpha w_i / Σ_{j≤i} w_j, so after tile k a pixel holds the
   w-weighted mean of the tiles done so far that cover it (the upscale where none does yet) and the finished
   image is exactly Σ w_i · tile_i — no seams beyond what the tiles themselves disagree on. Later tiles are cut
   from that canvas, so each sees its already-redrawn neighbours in its overlap: the order matters, as in Ultimate
   SD Upscale — "linear" goes row by row, "chess" does the tiles with (row + column) even first, then the others.

Seeding: every tile uses the same seed, as Ultimate SD Upscale does; image b of a batch uses the b-th per-image
noise draw of that seed (ComfyUI's `batch_index` rule), so one window covering the whole image is exactly a plain
img2img of the upscaled image. (A1111's SD upscale script seeds tile i with seed + i; darkroom's A1111 route uses
the one-seed rule so its jobs are UltimateSDUpscale workflows.)

Conditioning is cropped per tile (`crop_conditioning`): ControlNet hint images, conditioning masks and areas are
cut to the tile's box, as Ultimate SD Upscale's crop_cond does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

import torch

from .tiled import axis_weights, tile_spans

#: Tile orders: "linear" (row by row) and "chess" (checkerboard: (row + column) even first).
ORDERS = ("linear", "chess")
MAX_PASSES = 3  # upscale-model passes at most (A1111's Upscaler loop)
ALIGN = 8  # pixels per latent pixel: tile starts and sizes are multiples of it

TileBox = tuple[int, int, int, int]  # (y, x, h, w) in canvas pixels
#: (raw latent (1, C, h/8, w/8), image index in the batch, the tile's box, canvas (H, W)) → raw latent
TileSampler = Callable[[torch.Tensor, int, TileBox, tuple[int, int]], torch.Tensor]


def _axis(size: int, tile: int, overlap: int) -> tuple[tuple[tuple[int, int], ...], tuple[torch.Tensor, ...]]:
    """Spans (start, length) along one axis and their blend weights, normalised to sum to one at every pixel."""
    spans = tile_spans(size, tile, overlap, ALIGN)
    weights = [axis_weights(spans, i, 1) for i in range(len(spans))]
    total = torch.zeros(size)
    for (start, length), w in zip(spans, weights):
        total[start : start + length] += w
    normed = tuple(w / total[start : start + length] for (start, length), w in zip(spans, weights))
    return tuple(spans), normed


@dataclass(frozen=True)
class TileGrid:
    """The tile windows of an H × W canvas and their blend weights (a partition of unity)."""

    height: int
    width: int
    ys: tuple[tuple[int, int], ...]  # (start, length) per row
    xs: tuple[tuple[int, int], ...]  # (start, length) per column
    wy: tuple[torch.Tensor, ...]  # (length,) per row
    wx: tuple[torch.Tensor, ...]  # (length,) per column

    @classmethod
    def plan(cls, height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> TileGrid:
        """Windows of at most tile_height × tile_width pixels overlapping by at least `overlap` (multiples of 8)."""
        for label, v in (("tile width", tile_width), ("tile height", tile_height)):
            if v < ALIGN or v % ALIGN:
                raise ValueError(f"{label} must be a positive multiple of {ALIGN} pixels (got {v})")
        if not 0 <= overlap <= min(tile_width, tile_height) // 2:
            raise ValueError(f"tile overlap must be between 0 and half the tile size (got overlap {overlap} for "
                             f"{tile_width}x{tile_height} tiles)")
        if height % ALIGN or width % ALIGN or height <= 0 or width <= 0:
            raise ValueError(f"the canvas must be a positive multiple of {ALIGN} pixels (got {width}x{height})")
        ys, wy = _axis(height, tile_height, overlap)
        xs, wx = _axis(width, tile_width, overlap)
        return cls(height, width, ys, xs, wy, wx)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def order(self, order: str = "linear") -> list[tuple[int, int]]:
        """(row, column) of every tile in processing order."""
        cells = [(i, j) for i in range(len(self.ys)) for j in range(len(self.xs))]
        if order == "linear":
            return cells
        if order == "chess":
            return [c for c in cells if sum(c) % 2 == 0] + [c for c in cells if sum(c) % 2 == 1]
        raise ValueError(f"unknown tile order {order!r}; use one of {', '.join(ORDERS)}")

    def box(self, i: int, j: int) -> TileBox:
        """(y, x, h, w) of tile (i, j) in canvas pixels."""
        (y, h), (x, w) = self.ys[i], self.xs[j]
        return y, x, h, w

    def weight(self, i: int, j: int) -> torch.Tensor:
        """The blend weights (h, w) of tile (i, j)."""
        return self.wy[i][:, None] * self.wx[j][None, :]

    def total(self) -> torch.Tensor:
        """Σ of every tile's weights over the canvas (H, W): one everywhere, up to float rounding."""
        out = torch.zeros(self.height, self.width)
        for i, j in self.order():
            y, x, h, w = self.box(i, j)
            out[y : y + h, x : x + w] += self.weight(i, j)
        return out


def tiled_img2img(image: torch.Tensor, *, vae: Any, sample_tile: TileSampler, tile_width: int = 512,
                  tile_height: int = 512, overlap: int = 64, order: str = "linear",
                  on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """IMAGE (B, H, W, 3) in [0, 1] → (B, H, W, 3): every tile encoded with `vae`, sampled, decoded and blended.

    `on_tile` is called after each tile (progress); interrupting is the sampler's business.
    """
    from ..engine.vae import vae_decode, vae_encode

    if image.dim() != 4:
        raise ValueError(f"expected IMAGE (B, H, W, C), got shape {tuple(image.shape)}")
    if order not in ORDERS:
        raise ValueError(f"unknown tile order {order!r}; use one of {', '.join(ORDERS)}")
    B, H, W = image.shape[:3]
    pixels = image[..., :3].float().cpu()
    ph, pw = -H % ALIGN, -W % ALIGN
    if ph or pw:  # edge-pad to whole latent pixels; cropped back at the end
        pixels = torch.nn.functional.pad(pixels.movedim(-1, 1), (0, pw, 0, ph), mode="replicate").movedim(1, -1)
    grid = TileGrid.plan(H + ph, W + pw, tile_height, tile_width, overlap)
    canvas_hw = (H + ph, W + pw)
    out = []
    for b in range(B):
        canvas = pixels[b : b + 1].clone()  # (1, H', W', 3)
        done = torch.zeros(canvas_hw)  # Σ weights of the tiles composited so far
        for i, j in grid.order(order):
            y, x, h, w = grid.box(i, j)
            latent = vae_encode(vae, canvas[:, y : y + h, x : x + w])  # (1, C, h/8, w/8)
            latent = sample_tile(latent, b, (y, x, h, w), canvas_hw)
            tile = vae_decode(vae, latent)  # (1, h, w, 3)
            weight = grid.weight(i, j)
            seen = done[y : y + h, x : x + w] + weight
            alpha = torch.where(seen > 0, weight / seen.clamp_min(1e-12), torch.zeros_like(seen))[None, :, :, None]
            # lerp is exact at alpha 1 (one window: the tile itself) and where tile and canvas agree
            canvas[:, y : y + h, x : x + w] = torch.lerp(canvas[:, y : y + h, x : x + w], tile, alpha)
            done[y : y + h, x : x + w] = seen
            if on_tile is not None:
                on_tile()
        out.append(canvas[:, :H, :W])
    return torch.cat(out)


# -- conditioning per tile ------------------------------------------------------------------------------------------


def _crop_fraction(t: torch.Tensor, box: TileBox, canvas_hw: tuple[int, int], dims: tuple[int, int]) -> torch.Tensor:
    """Cut the part of `t` (any resolution of the canvas, along `dims`) that the canvas box covers."""
    y, x, h, w = box
    H, W = canvas_hw
    th, tw = t.shape[dims[0]], t.shape[dims[1]]
    y0, x0 = min(th - 1, int(y * th / H)), min(tw - 1, int(x * tw / W))
    y1, x1 = max(y0 + 1, round((y + h) * th / H)), max(x0 + 1, round((x + w) * tw / W))
    return t.narrow(dims[0], y0, y1 - y0).narrow(dims[1], x0, x1 - x0)


def crop_conditioning(items: Any, box: TileBox, canvas_hw: tuple[int, int],
                      memo: dict[int, Any] | None = None) -> Any:
    """CONDITIONING for one tile: control hint images and masks cut to `box`, areas moved into the tile (items whose
    area misses the tile are dropped). `memo` keeps a control unit shared by the positive and negative side shared
    after cropping. Anything else (a prompt schedule) is returned unchanged."""
    if not isinstance(items, list):
        return items
    memo = {} if memo is None else memo
    y, x, h, w = box
    out = []
    for item in items:
        changes: dict[str, Any] = {}
        if item.mask is not None:
            mask = item.mask if item.mask.ndim == 3 else item.mask[None]
            changes["mask"] = _crop_fraction(mask, box, canvas_hw, (1, 2))
        if item.area is not None:  # (h, w, y, x) in latent pixels of the canvas
            ah, aw, ay, ax = item.area
            ty, tx, th, tw = y // ALIGN, x // ALIGN, h // ALIGN, w // ALIGN
            y0, y1 = max(ay, ty), min(ay + ah, ty + th)
            x0, x1 = max(ax, tx), min(ax + aw, tx + tw)
            if y1 <= y0 or x1 <= x0:
                continue
            changes["area"] = (y1 - y0, x1 - x0, y0 - ty, x0 - tx)
        units = item.extra.get("control")
        if units:
            cropped = []
            for unit in units:
                if id(unit) not in memo:
                    image = getattr(unit, "image", None)
                    ok = is_dataclass(unit) and isinstance(image, torch.Tensor) and image.ndim == 4
                    memo[id(unit)] = replace(unit, image=_crop_fraction(image, box, canvas_hw, (1, 2))) if ok \
                        else unit
                cropped.append(memo[id(unit)])
            changes["extra"] = {**item.extra, "control": cropped}
        out.append(item.with_(**changes) if changes else item)
    return out


# -- the default tile sampler, the upscale step and the whole job ---------------------------------------------------


def ksampler_for(ckpt: Any, positive: Any, negative: Any, *, seed: int, steps: int, cfg: float, sampler: str,
                 scheduler: str, denoise: float, progress: Callable[..., None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> TileSampler:
    """A TileSampler running `pipeline.ksample` on each tile with the same seed (image b: its b-th noise draw)."""
    from ..engine import pipeline
    from ..sampling.noise import prepare_noise

    def run(latent: torch.Tensor, index: int, box: TileBox, canvas_hw: tuple[int, int]) -> torch.Tensor:
        memo: dict[int, Any] = {}
        pos = crop_conditioning(positive, box, canvas_hw, memo)
        neg = crop_conditioning(negative, box, canvas_hw, memo)
        noise = prepare_noise(latent.shape, int(seed), [index])
        return pipeline.ksample(ckpt, latent, pos, neg, seed=int(seed), steps=steps, cfg=cfg, sampler=sampler,
                                scheduler=scheduler, denoise=denoise, noise=noise, progress=progress,
                                cancelled=cancelled)

    return run


def upscale_to(image: torch.Tensor, width: int, height: int, *, model: Any = None, method: str = "lanczos",
               max_passes: int = MAX_PASSES, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """IMAGE (B, H, W, C) → (B, height, width, 3): the upscale model while the image is smaller than the target (at
    most `max_passes`), then `method` ("lanczos", "nearest-exact", "bilinear", …) to the exact size."""
    from ..engine.resize import common_upscale
    from .tiled import upscale_image

    if width < 1 or height < 1:
        raise ValueError(f"cannot upscale to {width}x{height}: both sides must be at least 1 pixel")
    out = image[..., :3].float()
    if model is not None:
        for _ in range(max_passes):
            if out.shape[1] >= height and out.shape[2] >= width:
                break
            bigger = upscale_image(model, out[..., : model.input_channels], on_tile=on_tile)
            if bigger.shape[1:3] == out.shape[1:3]:
                break  # a 1× model never reaches the target
            out = bigger
    if tuple(out.shape[1:3]) != (height, width):
        out = common_upscale(out.movedim(-1, 1), width, height, method).movedim(1, -1)
    return out


def sd_upscale(ckpt: Any, image: torch.Tensor, positive: Any, negative: Any, *, width: int, height: int,
               seed: int, steps: int, cfg: float, sampler: str, scheduler: str, denoise: float,
               upscale_model: Any = None, method: str = "lanczos", tile_width: int = 512, tile_height: int = 512,
               overlap: int = 64, order: str = "linear", vae: Any = None,
               progress: Callable[..., None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
    """Upscale IMAGE (B, H, W, 3) to width × height, then redraw it tile by tile (see the module docstring).

    denoise 0 or order "none" returns the plain upscale.
    """
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be between 0 and 1 (got {denoise})")
    big = upscale_to(image, width, height, model=upscale_model, method=method)
    if order == "none" or denoise == 0:
        return big
    sample = ksampler_for(ckpt, positive, negative, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                          scheduler=scheduler, denoise=denoise, progress=progress, cancelled=cancelled)
    return tiled_img2img(big, vae=ckpt.vae if vae is None else vae, sample_tile=sample, tile_width=tile_width,
                         tile_height=tile_height, overlap=overlap, order=order)


__all__ = ["ALIGN", "MAX_PASSES", "ORDERS", "TileBox", "TileGrid", "TileSampler", "crop_conditioning", "ksampler_for",
           "sd_upscale", "tiled_img2img", "upscale_to"]
