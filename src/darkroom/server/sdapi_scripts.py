"""A1111 selectable scripts for /sdapi/v1/img2img: "SD upscale" (A1111's scripts/sd_upscale.py).

A request names the script (`script_name`, any case, as A1111 matches titles) and passes the script's UI values as
`script_args = [info, overlap, upscaler_index, scale_factor]` (missing trailing values take A1111's defaults 64,
0 = "None", 2.0); `upscaler_index` indexes GET /sdapi/v1/upscalers (an upscaler name is accepted too, as A1111
does). The tile size is the request's width × height.

Each image becomes one workflow: LoadImage → the upscaler (UpscaleModelLoader + ImageUpscaleWithModel passes, or a
Lanczos/Nearest ImageScale) → ImageScale (Lanczos) to A1111's target int(side · scale) // 8 · 8 →
UltimateSDUpscaleNoUpscale (tiles of width × height: tile_width = width − overlap, tile_padding = overlap / 2, so
neighbouring windows overlap by `overlap`) → SaveImage, built on top of `workflow_from_params`' loaders and
prompts. The "None" upscaler keeps the image as it is (A1111 too). Differences from A1111 (documented in
docs/server.md): every tile uses the request's seed (A1111: seed + tile index) and tiles are redrawn in order with
their redrawn neighbours as context, blended over the overlap by a feathered partition of unity; the result count
is n_iter (batch_size only batches A1111's tiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from .sdapi import SdapiContext, SdapiError, _add
from .sdapi_extras import Upscaler, plan_steps, resolve_upscaler, upscaler_rows
from .sdapi_models import Img2ImgRequest, ProcessingBase

SD_UPSCALE = "sd upscale"  # A1111 lists scripts by title().lower()
TITLES = {SD_UPSCALE: "SD upscale"}
DEFAULT_ARGS = (None, 64, 0, 2.0)  # the script's UI defaults: info, overlap, upscaler index, scale factor
MAX_SCALE = 8.0


def script_names(mode: str) -> list[str]:
    """The selectable scripts of a tab, as GET /sdapi/v1/scripts lists them."""
    return [SD_UPSCALE] if mode == "img2img" else []


def script_info(registry: Any) -> list[dict[str, Any]]:
    """GET /sdapi/v1/script-info entries of the selectable scripts (A1111's ScriptInfo)."""
    names = [r["name"] for r in upscaler_rows(registry)]
    args = [
        {"label": None, "value": None, "minimum": None, "maximum": None, "step": None, "choices": None},
        {"label": "Tile overlap", "value": 64, "minimum": 0, "maximum": 256, "step": 16, "choices": None},
        {"label": "Upscaler", "value": names[0], "minimum": None, "maximum": None, "step": None, "choices": names},
        {"label": "Scale Factor", "value": 2.0, "minimum": 1.0, "maximum": 4.0, "step": 0.05, "choices": None},
    ]
    return [{"name": SD_UPSCALE, "is_alwayson": False, "is_img2img": True, "args": args}]


def _bad(message: str, field_name: str = "script_args") -> SdapiError:
    return SdapiError(400, message, field_name)


def check_script(req: ProcessingBase) -> None:
    """Refuse unknown scripts and options SD upscale cannot combine with (by name, before anything is decoded)."""
    name = (req.script_name or "").strip().lower()
    mode = "img2img" if isinstance(req, Img2ImgRequest) else "txt2img"
    if name not in script_names(mode):
        where = "an img2img script" if name in script_names("img2img") else "not available"
        listed = ", ".join(TITLES[n] for n in script_names(mode)) or "none"
        raise _bad(f"script {req.script_name!r} is {where} (scripts for {mode}: {listed}; GET /sdapi/v1/scripts "
                   f"lists them)", "script_name")
    assert isinstance(req, Img2ImgRequest)
    for flag, field_name, what in ((req.mask, "mask", "a mask (inpainting)"),
                                   (req.tiling, "tiling", "tiling (seamless textures)"),
                                   (req.refiner_checkpoint not in (None, "", "None"), "refiner_checkpoint",
                                    "a refiner"),
                                   (any(k.lower() in ("controlnet", "refiner") for k in req.alwayson_scripts),
                                    "alwayson_scripts", "ControlNet or refiner units")):
        if flag:
            raise _bad(f"SD upscale cannot be combined with {what} in darkroom", field_name)


@dataclass(frozen=True)
class SdUpscale:
    """The parsed arguments of one SD upscale request."""

    overlap: int
    upscaler: Upscaler | None  # None: A1111's "None" (the image is not resized)
    scale: float
    width: int  # tile size (the request's width × height)
    height: int

    @property
    def label(self) -> str:
        return "None" if self.upscaler is None else self.upscaler.label

    def extra(self) -> dict[str, Any]:
        """A1111's infotext entries of the script."""
        return {"SD upscale overlap": self.overlap, "SD upscale upscaler": self.label}

    def target(self, width: int, height: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
        """Sizes after each upscaler run and the canvas size for an init image of width × height."""
        if self.upscaler is None:
            return [], (width, height)
        return plan_steps(width, height, self.scale, self.upscaler)

    def workflow(self, wf: dict[str, Any], init_size: tuple[int, int]) -> dict[str, Any]:
        """`workflow_from_params`' img2img graph → the SD upscale graph (same loaders, LoRAs and prompts)."""
        sampler = wf.pop("3")["inputs"]
        encode = wf.pop("5")["inputs"]
        wf.pop("8")
        image = wf.pop(encode["pixels"][0])["inputs"]["image"]  # the ImageScale's source: LoadImage
        steps, dest = self.target(*init_size)
        up = self.upscaler
        if up is not None and up.model is not None and steps:
            loader = _add(wf, "UpscaleModelLoader", {"model_name": up.model}, "Load Upscale Model")
            for _ in steps:
                image = [_add(wf, "ImageUpscaleWithModel", {"upscale_model": [loader, 0], "image": image},
                              "Upscale Image (using Model)"), 0]
            size = steps[-1]
        elif up is not None and up.method is not None and steps and steps[-1] != init_size:
            size = steps[-1]
            image = [_add(wf, "ImageScale", {"image": image, "upscale_method": up.method, "width": size[0],
                                             "height": size[1], "crop": "disabled"}, f"Upscale Image ({up.label})"), 0]
        else:
            size = init_size
        if size != dest:
            image = [_add(wf, "ImageScale", {"image": image, "upscale_method": "lanczos", "width": dest[0],
                                             "height": dest[1], "crop": "disabled"}, "Upscale Image (to target)"), 0]
        pad = self.overlap // 2
        inputs = {
            "upscaled_image": image, "model": sampler["model"], "positive": sampler["positive"],
            "negative": sampler["negative"], "vae": encode["vae"], "seed": sampler["seed"], "steps": sampler["steps"],
            "cfg": sampler["cfg"], "sampler_name": sampler["sampler_name"], "scheduler": sampler["scheduler"],
            "denoise": sampler["denoise"], "mode_type": "Linear", "tile_width": self.width - 2 * pad,
            "tile_height": self.height - 2 * pad, "mask_blur": 8, "tile_padding": pad, "seam_fix_mode": "None",
            "seam_fix_denoise": 1.0, "seam_fix_width": 64, "seam_fix_mask_blur": 8, "seam_fix_padding": 16,
            "force_uniform_tiles": True, "tiled_decode": False, "batch_size": 1,
        }
        node = _add(wf, "UltimateSDUpscaleNoUpscale", inputs, "Ultimate SD Upscale (SD upscale)")
        wf["9"]["inputs"]["images"] = [node, 0]
        return {k: wf[k] for k in sorted(wf, key=int)}


def _int(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise _bad(f"{label} must be an integer (got {value!r})")
    return int(value)


def parse_script(req: Img2ImgRequest, ctx: SdapiContext) -> SdUpscale:
    """SD upscale's script_args, checked (SdapiError 400 naming the argument and what it accepts)."""
    given = list(req.script_args or [])
    if len(given) > len(DEFAULT_ARGS):
        raise _bad(f"script_args: SD upscale takes [info, overlap, upscaler_index, scale_factor] "
                   f"({len(DEFAULT_ARGS)} values), got {len(given)}")
    args = [d if i >= len(given) or given[i] is None else given[i] for i, d in enumerate(DEFAULT_ARGS)]
    _, overlap, index, scale = args
    overlap = _int(overlap, "script_args[1] (overlap)")
    limit = min(req.width, req.height) // 2 // 8 * 8
    if not 0 <= overlap <= limit or overlap % 8:
        raise _bad(f"script_args[1] (overlap) must be a multiple of 8 between 0 and {limit}, half the "
                   f"{req.width}x{req.height} tile (got {overlap})")
    rows = upscaler_rows(ctx.models)
    names = [r["name"] for r in rows]
    if isinstance(index, str):
        lowered = [n.lower() for n in names]
        if index.lower() not in lowered:
            raise _bad(f"script_args[2] (upscaler): no upscaler named {index!r}; available: {', '.join(names)}")
        index = lowered.index(index.lower())
    index = _int(index, "script_args[2] (upscaler_index)")
    if not 0 <= index < len(rows):
        choices = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise _bad(f"script_args[2] (upscaler_index) must index GET /sdapi/v1/upscalers (0 to {len(rows) - 1}: "
                   f"{choices}); got {index}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1.0 <= scale <= MAX_SCALE:
        raise _bad(f"script_args[3] (scale_factor) must be a number between 1 and {MAX_SCALE:g} (got {scale!r})")
    upscaler = resolve_upscaler(ctx.models, names[index], "script_args")
    return SdUpscale(overlap=overlap, upscaler=upscaler, scale=float(scale), width=req.width, height=req.height)


def sd_upscale_workflows(script: SdUpscale, workflows: list[dict[str, Any]], init_names: list[str],
                         ctx: SdapiContext) -> list[dict[str, Any]]:
    """Every image's img2img workflow rewritten for SD upscale (sizes checked against the server's limits)."""
    out = []
    for i, wf in enumerate(workflows):
        with Image.open(ctx.folders.input / init_names[i]) as img:
            size = img.size
        steps, dest = script.target(*size)
        for w, h in [*steps, dest]:
            if w > ctx.limits.max_width or h > ctx.limits.max_height or w * h > ctx.limits.max_image_pixels:
                raise _bad(f"SD upscale of the {size[0]}x{size[1]} init image by {script.scale:g} would make a "
                           f"{w}x{h} image, beyond the server's limits", "script_args")
        out.append(script.workflow(wf, size))
    return out
