"""Image nodes: load from the input folder, save/preview with ComfyUI naming and metadata, resize, pad, composite.

IMAGE is (B, H, W, 3) float32 in [0, 1] (`[..., :3]` is taken wherever 4 channels could come in).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence

from ..engine.vae import tensor_to_pil
from ..graph import Input, Node, NodeContext, NodeOutput, Output, Types
from ..metadata.naming import comfy_image_name, comfy_counter, save_image_path
from ..metadata.png import write_png
from ..engine.resize import CROP_METHODS, UPSCALE_METHODS_IMAGE, common_upscale
from .services import FileChoices, folder, resolve_input_file

MAX_RESOLUTION = 16384
_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's alphabet for PreviewImage's random suffix


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except OSError as ex:
        raise ValueError(f"cannot read image {path.name}: {ex}") from None


def _rgb_and_alpha(frame: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame → (H, W, 3) float in [0, 1] and its alpha (H, W) in [0, 1] if it has one."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode == "I":
        frame = frame.point(lambda v: v * (1 / 255))
    rgb = torch.from_numpy(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)
    alpha = None
    if "A" in frame.getbands():
        alpha = torch.from_numpy(np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0)
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = torch.from_numpy(np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0)
    return rgb, alpha


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (LoadImage's change fingerprint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _InputFileNode(Node):
    """Base of nodes reading the input folder: fingerprint = the file's hash, missing files fail validation."""

    input_dir: ClassVar[Path | None] = None  # set on the registry-bound subclass (default_registry(input_dir=…))
    self_validated_inputs = frozenset({"image"})  # "x.png [input]", "clipspace/…" are valid without being listed

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        if cls.input_dir is None:
            return float("nan")  # unknown folder: never reuse a cached result
        try:
            return file_sha256(resolve_input_file(cls.input_dir, str(inputs.get("image", ""))))
        except (OSError, ValueError):
            return float("nan")

    @classmethod
    def check_inputs(cls, **inputs: Any) -> bool | str:
        if cls.input_dir is None or "image" not in inputs:
            return True
        try:
            resolve_input_file(cls.input_dir, str(inputs["image"]))
        except (OSError, ValueError) as ex:
            return f"Invalid image file: {inputs['image']} ({ex})"
        return True


class LoadImage(_InputFileNode):
    """Load an image (all same-sized frames of an animation as a batch) and its mask = 1 − alpha."""

    display_name = "Load Image"
    category = "image"
    inputs = {"image": Input(Types.COMBO, choices=FileChoices("input"), extra={"image_upload": True})}
    outputs = [Output(Types.IMAGE), Output(Types.MASK)]

    def execute(self, ctx: NodeContext, image: str) -> tuple[Any, ...]:
        img = _open(resolve_input_file(folder(ctx, "input_dir"), image))
        images, masks = [], []
        size = None
        for frame in ImageSequence.Iterator(img):
            rgb, alpha = _rgb_and_alpha(frame)
            if size is None:
                size = rgb.shape[:2]
            if rgb.shape[:2] != size:
                continue
            mask = 1.0 - alpha if alpha is not None else torch.zeros((64, 64), dtype=torch.float32)
            images.append(rgb[None])
            masks.append(mask[None])
        if len(images) > 1 and img.format != "MPO":
            return torch.cat(images), torch.cat(masks)
        return images[0], masks[0]


class LoadImageMask(_InputFileNode):
    """Load one channel of an image as a MASK (alpha is inverted, as in LoadImage)."""

    display_name = "Load Image (as Mask)"
    category = "mask"
    inputs = {
        "image": Input(Types.COMBO, choices=FileChoices("input"), extra={"image_upload": True}),
        "channel": Input(Types.COMBO, choices=("alpha", "red", "green", "blue")),
    }
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, image: str, channel: str) -> tuple[Any, ...]:
        img = ImageOps.exif_transpose(_open(resolve_input_file(folder(ctx, "input_dir"), image)))
        if img.getbands() != ("R", "G", "B", "A"):
            if img.mode == "I":
                img = img.point(lambda v: v * (1 / 255))
            img = img.convert("RGBA")
        band = channel[0].upper()
        mask = torch.from_numpy(np.asarray(img.getchannel(band), dtype=np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask
        return (mask[None],)


def _save(images: torch.Tensor, out_dir: Path, prefix: str, kind: str, compress_level: int, prompt: Any,
          extra_pnginfo: Any) -> list[dict[str, str]]:
    """Write each image as `prefix_00001_.png`… (never overwriting) with prompt/extra_pnginfo chunks."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected an IMAGE batch (B, H, W, C), got shape {tuple(images.shape)}")
    pils = tensor_to_pil(images[..., :3])
    folder_path, base, counter, subfolder = save_image_path(out_dir, prefix, pils[0].width, pils[0].height)
    extra = dict(extra_pnginfo) if isinstance(extra_pnginfo, dict) else {}
    workflow = extra.pop("workflow", None)
    extra = {k: json.dumps(v) for k, v in extra.items()}  # every extra_pnginfo value is stored as JSON
    results = []
    for i, pil in enumerate(pils):
        path = write_png(pil, folder_path / comfy_image_name(base, counter, i), prompt=prompt, workflow=workflow,
                         extra=extra, on_exists="next", compress_level=compress_level)
        n = comfy_counter(path.name)
        counter = (n if n is not None else counter) + 1
        results.append({"filename": path.name, "subfolder": subfolder, "type": kind})
    return results


class SaveImage(Node):
    """Save images to the output folder with the workflow embedded (ComfyUI names, never overwriting)."""

    display_name = "Save Image"
    category = "image"
    description = "Saves the input images to your ComfyUI output directory."
    output_node = True
    inputs = {
        "images": Input(Types.IMAGE, tooltip="The images to save."),
        "filename_prefix": Input(Types.STRING, default="ComfyUI",
                                 tooltip="The prefix for the file to save. This may include formatting information "
                                         "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                                         "from nodes."),
    }
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = []

    def execute(self, ctx: NodeContext, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                extra_pnginfo: Any = None) -> NodeOutput:
        results = _save(images, folder(ctx, "output_dir"), filename_prefix, "output", 4, prompt, extra_pnginfo)
        return NodeOutput(ui={"images": results})


class PreviewImage(Node):
    """Save images to the temp folder for display (type 'temp', random name suffix, fast compression)."""

    display_name = "Preview Image"
    category = "image"
    description = "Saves the input images to your ComfyUI output directory."
    output_node = True
    inputs = {"images": Input(Types.IMAGE)}
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = []

    def execute(self, ctx: NodeContext, images: torch.Tensor, prompt: Any = None,
                extra_pnginfo: Any = None) -> NodeOutput:
        suffix = "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
        results = _save(images, folder(ctx, "temp_dir"), f"ComfyUI_temp_{suffix}", "temp", 1, prompt, extra_pnginfo)
        return NodeOutput(ui={"images": results})


class ImageScale(Node):
    """Resize images to width × height (0 keeps the aspect ratio from the other side)."""

    display_name = "Upscale Image"
    category = "image/upscaling"
    inputs = {
        "image": Input(Types.IMAGE),
        "upscale_method": Input(Types.COMBO, choices=UPSCALE_METHODS_IMAGE),
        "width": Input(Types.INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        "height": Input(Types.INT, default=512, min=0, max=MAX_RESOLUTION, step=1),
        "crop": Input(Types.COMBO, choices=CROP_METHODS),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[Any, ...]:
        if width == 0 and height == 0:
            return (image,)
        x = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(x.shape[3] * height / x.shape[2]))
        elif height == 0:
            height = max(1, round(x.shape[2] * width / x.shape[3]))
        return (common_upscale(x, width, height, upscale_method, crop).movedim(1, -1),)


class ImageScaleBy(Node):
    """Resize images by a factor."""

    display_name = "Upscale Image By"
    category = "image/upscaling"
    inputs = {
        "image": Input(Types.IMAGE),
        "upscale_method": Input(Types.COMBO, choices=UPSCALE_METHODS_IMAGE),
        "scale_by": Input(Types.FLOAT, default=1.0, min=0.01, max=8.0, step=0.01),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[Any, ...]:
        x = image.movedim(-1, 1)
        width, height = round(x.shape[3] * scale_by), round(x.shape[2] * scale_by)
        return (common_upscale(x, width, height, upscale_method, "disabled").movedim(1, -1),)


class ImageInvert(Node):
    """1 − image."""

    display_name = "Invert Image"
    category = "image"
    inputs = {"image": Input(Types.IMAGE)}
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image: torch.Tensor) -> tuple[Any, ...]:
        return (1.0 - image,)


class ImageBatch(Node):
    """Concatenate two image batches (the second is resized and centre-cropped to the first's size)."""

    display_name = "Batch Images"
    category = "image"
    inputs = {"image1": Input(Types.IMAGE), "image2": Input(Types.IMAGE)}
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor) -> tuple[Any, ...]:
        if image1.shape[1:] != image2.shape[1:]:
            image2 = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear",
                                    "center").movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


class EmptyImage(Node):
    """A batch of images filled with one colour (0xRRGGBB)."""

    category = "image"
    inputs = {
        "width": Input(Types.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        "height": Input(Types.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        "batch_size": Input(Types.INT, default=1, min=1, max=4096),
        "color": Input(Types.INT, default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"}),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple[Any, ...]:
        rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        return (torch.tensor(rgb, dtype=torch.float32).expand(batch_size, height, width, 3).clone(),)


def outpaint_mask(h: int, w: int, left: int, top: int, right: int, bottom: int, feathering: int) -> torch.Tensor:
    """ImagePadForOutpaint's mask over the original area: (feathering - d)² / feathering² near padded edges."""
    t = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        j = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        far_h, far_w = torch.full((h, w), float(h)), torch.full((h, w), float(w))
        d = torch.minimum(torch.minimum(i if top else far_h, (h - i) if bottom else far_h),
                          torch.minimum(j if left else far_w, (w - j) if right else far_w))
        v = (feathering - d) / feathering
        t = torch.where(d < feathering, v * v, t)
    return t


class ImagePadForOutpaint(Node):
    """Pad images with grey (0.5) and return the mask of the new area, feathered into the original."""

    display_name = "Pad Image for Outpainting"
    category = "image"
    inputs = {
        "image": Input(Types.IMAGE),
        "left": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "top": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "right": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "bottom": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "feathering": Input(Types.INT, default=40, min=0, max=MAX_RESOLUTION, step=1),
    }
    outputs = [Output(Types.IMAGE), Output(Types.MASK)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                feathering: int) -> tuple[Any, ...]:
        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        out[:, top : top + h, left : left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        mask[top : top + h, left : left + w] = outpaint_mask(h, w, left, top, right, bottom, feathering)
        return out, mask[None]


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
              multiplier: int, resize_source: bool) -> torch.Tensor:
    """ComfyUI's masked paste of (B, C, h, w) `source` into `destination` (modified in place and returned)."""
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = _repeat_batch(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(),
                                               size=source.shape[-2:], mode="bilinear")
        mask = _repeat_batch(mask, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[..., :visible_h, :visible_w]
    src = mask * source[..., :visible_h, :visible_w]
    dst = (1.0 - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = src + dst
    return destination


def _repeat_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] > batch:
        return t[:batch]
    if t.shape[0] < batch:
        return t.repeat(-(-batch // t.shape[0]), *[1] * (t.ndim - 1))[:batch]
    return t


class ImageCompositeMasked(Node):
    """Paste `source` into `destination` at (x, y), through an optional mask."""

    display_name = "ImageCompositeMasked"
    category = "image"
    inputs = {
        "destination": Input(Types.IMAGE),
        "source": Input(Types.IMAGE),
        "x": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        "y": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        "resize_source": Input(Types.BOOLEAN, default=False),
        "mask": Input(Types.MASK, optional=True),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                resize_source: bool, mask: torch.Tensor | None = None) -> tuple[Any, ...]:
        dst = destination[..., :3].clone().movedim(-1, 1)
        out = composite(dst, source[..., :3].movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


NODES: tuple[type[Node], ...] = (
    LoadImage, LoadImageMask, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageInvert, ImageBatch, EmptyImage,
    ImagePadForOutpaint, ImageCompositeMasked,
)
