"""Ultimate SD Upscale nodes with the input names and defaults of ComfyUI's custom node (ssitu/
ComfyUI_UltimateSDUpscale): `UltimateSDUpscale` (upscale, then redraw in tiles) and `UltimateSDUpscaleNoUpscale`
(redraw an image already upscaled).

The work is `darkroom.upscale.tiled_img2img`: a tile is `tile_width` × `tile_height` plus `tile_padding` of
context on each side, so neighbouring windows overlap by 2 · tile_padding and are blended with a feathered
partition of unity; each tile is sampled by ComfyUI's `common_ksampler` with the same seed (LoRAs, IP-Adapter and
ControlNet hints cropped to the tile apply as in KSampler).
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.denoiser import CondItem
from ..graph import Input, Node, NodeContext, Output, Types
from ..sampling import SAMPLER_NAMES, SCHEDULER_NAMES
from .refs import ModelRef, VaeRef, check_type
from .services import service

MAX_RESOLUTION = 8192
MODE_TYPES = ("Linear", "Chess", "None")
SEAM_FIX_MODES = ("None", "Band Pass", "Half Tile", "Half Tile + Intersections")

_NOT_USED = ("mask_blur (the feather is the middle half of each 2·tile_padding overlap), force_uniform_tiles (tiles "
             "always have the full size), tiled_decode (a tile is decoded whole) and batch_size (tiles run one at "
             "a time) are accepted and have no effect")
_DESCRIPTION = (
    "Ultimate SD Upscale (darkroom): redraws an upscaled image tile by tile with img2img — the same conditioning, "
    "sampler and seed for every tile — and blends the tiles with feathered overlaps. mode_type Linear (row by row) "
    "and Chess (checkerboard) set the order, so later tiles see their redrawn neighbours; None skips the redraw, "
    "as does denoise 0. Not implemented: the seam fix pass (seam_fix_mode Band Pass, Half Tile and Half Tile + "
    f"Intersections are refused; the seam_fix_* values are accepted only with None). {_NOT_USED}.")

_SAMPLING = {
    "model": Input(Types.MODEL, tooltip="The model to use for image-to-image."),
    "positive": Input(Types.CONDITIONING, tooltip="The positive conditioning for each tile."),
    "negative": Input(Types.CONDITIONING, tooltip="The negative conditioning for each tile."),
    "vae": Input(Types.VAE, tooltip="The VAE model to use for tiles."),
}
_SEED_TO_DENOISE = {
    "seed": Input(Types.INT, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                  tooltip="The seed to use for image-to-image (the same for every tile)."),
    "steps": Input(Types.INT, default=20, min=1, max=10000, step=1,
                   tooltip="The number of steps to use for each tile."),
    "cfg": Input(Types.FLOAT, default=8.0, min=0.0, max=100.0, tooltip="The CFG scale to use for each tile."),
    "sampler_name": Input(Types.COMBO, choices=SAMPLER_NAMES, tooltip="The sampler to use for each tile."),
    "scheduler": Input(Types.COMBO, choices=SCHEDULER_NAMES, tooltip="The scheduler to use for each tile."),
    "denoise": Input(Types.FLOAT, default=0.2, min=0.0, max=1.0, step=0.01,
                     tooltip="The denoising strength to use for each tile."),
}
_TILES = {
    "mode_type": Input(Types.COMBO, choices=MODE_TYPES, tooltip="The tiling order to use for the redraw step."),
    "tile_width": Input(Types.INT, default=512, min=8, max=MAX_RESOLUTION, step=8, tooltip="The width of each tile."),
    "tile_height": Input(Types.INT, default=512, min=8, max=MAX_RESOLUTION, step=8,
                         tooltip="The height of each tile."),
    "mask_blur": Input(Types.INT, default=8, min=0, max=64, step=1,
                       tooltip="Accepted for compatibility: the feather is set by tile_padding."),
    "tile_padding": Input(Types.INT, default=32, min=0, max=MAX_RESOLUTION, step=8,
                          tooltip="Context around each tile; neighbouring tiles overlap and blend over twice this."),
    "seam_fix_mode": Input(Types.COMBO, choices=SEAM_FIX_MODES,
                           tooltip="Only None: darkroom does not implement the seam fix pass."),
    "seam_fix_denoise": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    "seam_fix_width": Input(Types.INT, default=64, min=0, max=MAX_RESOLUTION, step=8),
    "seam_fix_mask_blur": Input(Types.INT, default=8, min=0, max=64, step=1),
    "seam_fix_padding": Input(Types.INT, default=16, min=0, max=MAX_RESOLUTION, step=8),
    "force_uniform_tiles": Input(Types.BOOLEAN, default=True, optional=True,
                                 tooltip="Accepted for compatibility: tiles always have the full size."),
    "tiled_decode": Input(Types.BOOLEAN, default=False, optional=True,
                          tooltip="Accepted for compatibility: each tile is decoded whole."),
    "batch_size": Input(Types.INT, default=1, min=1, max=16, step=1, optional=True,
                        tooltip="Accepted for compatibility: tiles run one at a time."),
}


def usdu_size(width: int, height: int, upscale_by: float) -> tuple[int, int]:
    """The node's output size: each side × upscale_by rounded to the nearest multiple of 8 (the ComfyUI port's
    rule), at least 8."""
    return max(8, round(width * upscale_by / 8) * 8), max(8, round(height * upscale_by / 8) * 8)


def seam_fix_problem(seam_fix_mode: Any) -> str | None:
    """Why a seam_fix_mode cannot run here (None when it is "None")."""
    if seam_fix_mode == "None":
        return None
    return (f"seam_fix_mode {seam_fix_mode!r} is not implemented in darkroom: use 'None' (tiles are already blended "
            f"with feathered overlaps; a larger tile_padding widens the blend)")


def padding_problem(tile_width: Any, tile_height: Any, tile_padding: Any) -> str | None:
    """Why the padding cannot blend (None when it can): neighbouring windows may overlap by at most half."""
    if not all(isinstance(v, int) for v in (tile_width, tile_height, tile_padding)):
        return None
    if tile_padding * 2 > min(tile_width, tile_height):
        return (f"tile_padding {tile_padding} is more than half the tile size ({tile_width}x{tile_height}); "
                f"use at most {min(tile_width, tile_height) // 2}")
    return None


class _TileContext:
    """The node's context for one tile's KSampler run: step progress counts across all tiles."""

    def __init__(self, ctx: NodeContext, tiles: int) -> None:
        self._ctx = ctx
        self._tiles = tiles
        self.done = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def progress(self, value: int | float, max: int | float, preview: Any = None) -> None:  # noqa: A002
        self._ctx.progress(self.done * max + value, self._tiles * max, preview)


class UltimateSDUpscaleNoUpscale(Node):
    """Redraw an already upscaled image tile by tile (Ultimate SD Upscale without its upscale step)."""

    display_name = "Ultimate SD Upscale (No Upscale)"
    category = "image/upscaling"
    python_module = "darkroom_nodes.ultimate_upscale"
    description = _DESCRIPTION
    inputs = {"upscaled_image": Input(Types.IMAGE, tooltip="The image to redraw."), **_SAMPLING, **_SEED_TO_DENOISE,
              **_TILES}
    outputs = [Output(Types.IMAGE, tooltip="The final refined image.")]

    @classmethod
    def check_inputs(cls, **inputs: Any) -> bool | str:
        return seam_fix_problem(inputs.get("seam_fix_mode", "None")) or padding_problem(
            inputs.get("tile_width"), inputs.get("tile_height"), inputs.get("tile_padding")) or True

    def execute(self, ctx: NodeContext, upscaled_image: torch.Tensor, **kw: Any) -> tuple[Any, ...]:
        return (redraw(ctx, self.name, upscaled_image, **kw),)


class UltimateSDUpscale(UltimateSDUpscaleNoUpscale):
    """Upscale an image (with an upscale model, then Lanczos to image size × upscale_by) and redraw it in tiles."""

    display_name = "Ultimate SD Upscale"
    inputs = {
        "image": Input(Types.IMAGE, tooltip="The image to upscale."),
        **_SAMPLING,
        "upscale_by": Input(Types.FLOAT, default=2.0, min=0.05, max=4.0, step=0.05,
                            tooltip="The factor to upscale the image by."),
        **_SEED_TO_DENOISE,
        "upscale_model": Input(Types.UPSCALE_MODEL, tooltip="The upscaler model for upscaling the image."),
        **_TILES,
    }
    outputs = [Output(Types.IMAGE, tooltip="The final upscaled image.")]

    def execute(self, ctx: NodeContext, image: torch.Tensor, upscale_by: float = 2.0, upscale_model: Any = None,
                **kw: Any) -> tuple[Any, ...]:
        from ..upscale import UpscaleModel
        from ..upscale.tiled_img2img import upscale_to

        problem = seam_fix_problem(kw.get("seam_fix_mode", "None"))
        if problem:
            raise ValueError(f"{self.name}: {problem}")
        if upscale_model is not None:
            check_type(upscale_model, UpscaleModel, "upscale_model", self.name)
        width, height = usdu_size(image.shape[2], image.shape[1], float(upscale_by))
        if upscale_model is None:
            big = upscale_to(image, width, height)
        else:
            engine = service(ctx, "engine")
            home = upscale_model.device
            upscale_model.to(engine.device)
            try:
                big = upscale_to(image, width, height, model=upscale_model)
            finally:
                upscale_model.to(home)
        return (redraw(ctx, self.name, big, **kw),)


def redraw(ctx: NodeContext, node: str, image: torch.Tensor, *, model: ModelRef, positive: list[CondItem],
           negative: list[CondItem], vae: VaeRef, seed: int, steps: int, cfg: float, sampler_name: str,
           scheduler: str, denoise: float, mode_type: str, tile_width: int, tile_height: int, tile_padding: int,
           seam_fix_mode: str = "None", **_ignored: Any) -> torch.Tensor:
    """The redraw step of both nodes: IMAGE (B, H, W, 3) → (B, H, W, 3)."""
    from ..upscale.tiled_img2img import TileGrid, crop_conditioning, tiled_img2img
    from .sampling import common_ksampler

    check_type(model, ModelRef, "model", node)
    check_type(vae, VaeRef, "vae", node)
    for problem in (seam_fix_problem(seam_fix_mode), padding_problem(tile_width, tile_height, tile_padding)):
        if problem:
            raise ValueError(f"{node}: {problem}")
    if mode_type not in MODE_TYPES:
        raise ValueError(f"{node}: unknown mode_type {mode_type!r}; use one of {', '.join(MODE_TYPES)}")
    if mode_type == "None" or denoise == 0:
        return image[..., :3].float()
    win_w, win_h, overlap = tile_width + 2 * tile_padding, tile_height + 2 * tile_padding, 2 * tile_padding
    H, W = -(-image.shape[1] // 8) * 8, -(-image.shape[2] // 8) * 8
    tile_ctx = _TileContext(ctx, image.shape[0] * len(TileGrid.plan(H, W, win_h, win_w, overlap)))

    def sample_tile(latent: torch.Tensor, index: int, box: tuple[int, int, int, int],
                    canvas_hw: tuple[int, int]) -> torch.Tensor:
        memo: dict[int, Any] = {}
        pos = crop_conditioning(positive, box, canvas_hw, memo)
        neg = crop_conditioning(negative, box, canvas_hw, memo)
        out = common_ksampler(tile_ctx, model, seed, steps, cfg, sampler_name, scheduler, pos, neg,  # type: ignore
                              {"samples": latent, "batch_index": [index]}, denoise=denoise)
        tile_ctx.done += 1
        return out["samples"]

    return tiled_img2img(image, vae=vae.vae, sample_tile=sample_tile, tile_width=win_w, tile_height=win_h,
                         overlap=overlap, order=mode_type.lower())


NODES: tuple[type[Node], ...] = (UltimateSDUpscale, UltimateSDUpscaleNoUpscale)
