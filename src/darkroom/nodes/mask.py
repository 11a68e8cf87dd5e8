"""Mask nodes (ComfyUI `comfy_extras/nodes_mask.py`): solid, invert, grow/shrink, feather, mask ↔ image.

MASK is (B, H, W) float32; 1 marks the area to change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage
import torch

from ..graph import Input, Node, NodeContext, Output, Types

MAX_RESOLUTION = 16384
IMAGE_CHANNELS = ("red", "green", "blue", "alpha")


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """Any (…, H, W) mask → (B, H, W)."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


class SolidMask(Node):
    """A mask of one value."""

    category = "mask"
    inputs = {
        "value": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        "width": Input(Types.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        "height": Input(Types.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
    }
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, value: float, width: int, height: int) -> tuple[Any, ...]:
        return (torch.full((1, height, width), float(value), dtype=torch.float32),)


class InvertMask(Node):
    """1 − mask."""

    category = "mask"
    inputs = {"mask": Input(Types.MASK)}
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, mask: torch.Tensor) -> tuple[Any, ...]:
        return (1.0 - mask,)


class GrowMask(Node):
    """Dilate (expand > 0) or erode (expand < 0) by |expand| pixels; tapered corners use a cross footprint."""

    category = "mask"
    inputs = {
        "mask": Input(Types.MASK),
        "expand": Input(Types.INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        "tapered_corners": Input(Types.BOOLEAN, default=True),
    }
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[Any, ...]:
        c = 0 if tapered_corners else 1
        footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
        out = []
        for m in as_batch(mask):
            arr = m.detach().cpu().float().numpy()
            for _ in range(abs(expand)):
                op = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
                arr = op(arr, footprint=footprint)
            out.append(torch.from_numpy(np.ascontiguousarray(arr)))
        return (torch.stack(out, dim=0),)


class FeatherMask(Node):
    """Fade the mask linearly to 0 over the given number of pixels at each edge."""

    category = "mask"
    inputs = {
        "mask": Input(Types.MASK),
        "left": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        "top": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        "right": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        "bottom": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
    }
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, mask: torch.Tensor, left: int, top: int, right: int,
                bottom: int) -> tuple[Any, ...]:
        out = as_batch(mask).clone().float()
        h, w = out.shape[-2:]
        left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
        for x in range(left):
            out[:, :, x] *= (x + 1.0) / left
        for x in range(right):
            out[:, :, -(x + 1)] *= (x + 1.0) / right
        for y in range(top):
            out[:, y, :] *= (y + 1.0) / top
        for y in range(bottom):
            out[:, -(y + 1), :] *= (y + 1.0) / bottom
        return (out,)


class MaskToImage(Node):
    """A grey image of the mask."""

    display_name = "Convert Mask to Image"
    category = "mask"
    inputs = {"mask": Input(Types.MASK)}
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, mask: torch.Tensor) -> tuple[Any, ...]:
        return (as_batch(mask)[..., None].expand(-1, -1, -1, 3).clone(),)


class ImageToMask(Node):
    """One channel of an image as a mask."""

    display_name = "Convert Image to Mask"
    category = "mask"
    inputs = {"image": Input(Types.IMAGE), "channel": Input(Types.COMBO, choices=IMAGE_CHANNELS)}
    outputs = [Output(Types.MASK)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, channel: str) -> tuple[Any, ...]:
        index = IMAGE_CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask: the image has no {channel} channel (it has {image.shape[-1]} channels)")
        return (image[:, :, :, index].clone(),)


NODES: tuple[type[Node], ...] = (SolidMask, InvertMask, GrowMask, FeatherMask, MaskToImage, ImageToMask)
