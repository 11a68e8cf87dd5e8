"""Conditioning nodes: text encoding (ComfyUI prompt weighting) and ComfyUI's area / mask / average / timestep edits.

CONDITIONING is a list of `CondItem`s. Settings that depend on the model or the latent size are recorded on the
item's `extra` dict and resolved when sampling (`sampling.resolve_conditioning`): `start_percent`/`end_percent`
(ConditioningSetTimestepRange) and `set_area_to_bounds` (ConditioningSetMask "mask bounds").
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import pipeline
from ..engine.denoiser import CondItem
from ..graph import Input, Node, NodeContext, Output, Types
from .refs import ClipRef, check_type, use_clip
from .services import service

MAX_RESOLUTION = 16384
Conditioning = list[CondItem]


def encode(ctx: NodeContext, clip: ClipRef, text: str) -> Conditioning:
    """Encode `text` with ComfyUI's weighting through the CLIP's checkpoint, LoRAs and last layer."""
    check_type(clip, ClipRef, "clip", ctx.class_type)
    engine = service(ctx, "engine")
    ckpt = use_clip(engine, clip)
    return pipeline.encode_text(ckpt, text, style="comfy", clip_skip=clip.clip_skip(), embeddings=engine.embeddings())


def _pad_with_empty(ctx: NodeContext, clip: ClipRef, cond: torch.Tensor, length: int, lo: int, hi: int) -> torch.Tensor:
    """Append encodings of the empty prompt (channels lo:hi) until `cond` has `length` tokens."""
    if cond.shape[1] >= length:
        return cond
    empty = encode(ctx, clip, "")[0].cross_attn[..., lo:hi]
    reps = -(-(length - cond.shape[1]) // empty.shape[1])
    return torch.cat([cond, empty.repeat(1, reps, 1)], dim=1)[:, :length]


def _set_values(conditioning: Conditioning, **values: Any) -> Conditioning:
    """Copies of every item with these fields set (the input list is never modified)."""
    return [item.with_(**values) for item in conditioning]


def _set_extra(conditioning: Conditioning, **values: Any) -> Conditioning:
    """Copies of every item with these keys set in `extra`."""
    return [item.with_(extra={**item.extra, **values}) for item in conditioning]


class CLIPTextEncode(Node):
    """Encode a prompt with ComfyUI's `(text:weight)` syntax and `embedding:name` textual inversions."""

    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.")
    inputs = {
        "text": Input(Types.STRING, multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
        "clip": Input(Types.CLIP, tooltip="The CLIP model used for encoding the text."),
    }
    outputs = [Output(Types.CONDITIONING, tooltip="A conditioning containing the embedded text used to guide the "
                                                  "diffusion model.")]

    def execute(self, ctx: NodeContext, text: str, clip: ClipRef) -> tuple[Any, ...]:
        return (encode(ctx, clip, text),)


class CLIPTextEncodeA1111(Node):
    """darkroom: encode a prompt with A1111's rules — `(x)`/`[x]`/`(x:1.3)` emphasis with mean restore, BREAK,
    75-token chunks with comma backtrack, embeddings by file name. Workflows made from A1111-style requests use it so
    they reproduce the A1111-style image exactly; `is_negative` gives A1111's zeroed empty SDXL negative."""

    display_name = "CLIP Text Encode (A1111 syntax)"
    category = "conditioning"
    python_module = "darkroom_nodes.a1111"
    inputs = {
        "text": Input(Types.STRING, multiline=True, dynamic_prompts=False, tooltip="Prompt in A1111 syntax."),
        "clip": Input(Types.CLIP),
        "is_negative": Input(Types.BOOLEAN, default=False, optional=True,
                             tooltip="A1111 encodes an empty SDXL negative prompt as zeros."),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, text: str, clip: ClipRef, is_negative: bool = False) -> tuple[Any, ...]:
        check_type(clip, ClipRef, "clip", self.name)
        engine = service(ctx, "engine")
        ckpt = use_clip(engine, clip)
        return (pipeline.encode_text(ckpt, text, style="a1111", clip_skip=clip.clip_skip(),
                                     embeddings=engine.embeddings(), negative=is_negative),)


class CLIPTextEncodeSDXL(Node):
    """SDXL base: separate prompts for CLIP-G and CLIP-L plus size/crop micro-conditioning."""

    category = "advanced/conditioning"
    inputs = {
        "clip": Input(Types.CLIP),
        "width": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "height": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "crop_w": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION),
        "crop_h": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION),
        "target_width": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "target_height": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "text_g": Input(Types.STRING, multiline=True, dynamic_prompts=True),
        "text_l": Input(Types.STRING, multiline=True, dynamic_prompts=True),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, clip: ClipRef, width: int, height: int, crop_w: int, crop_h: int,
                target_width: int, target_height: int, text_g: str, text_l: str) -> tuple[Any, ...]:
        check_type(clip, ClipRef, "clip", self.name)
        if len(clip.checkpoint.text_encoders) != 2:
            raise ValueError(f"CLIPTextEncodeSDXL needs an SDXL base model's CLIP (CLIP-L and CLIP-G); "
                             f"{clip.checkpoint.name} is {clip.family.value}")
        g = encode(ctx, clip, text_g)[0]
        width_l = int(clip.checkpoint.text_encoders[0].config.hidden_size)
        if text_l == text_g:
            cross = g.cross_attn
        else:
            # Each side keeps its own prompt's tokens; the shorter one is padded with empty-prompt chunks.
            l_part = encode(ctx, clip, text_l)[0].cross_attn[..., :width_l]
            g_part = g.cross_attn[..., width_l:]
            length = max(l_part.shape[1], g_part.shape[1])
            l_part = _pad_with_empty(ctx, clip, l_part, length, 0, width_l)
            g_part = _pad_with_empty(ctx, clip, g_part, length, width_l, g.cross_attn.shape[-1])
            cross = torch.cat([l_part, g_part], dim=-1)
        adm = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
               "target_width": target_width, "target_height": target_height}
        return ([CondItem(cross_attn=cross, pooled=g.pooled, adm=adm)],)


class CLIPTextEncodeSDXLRefiner(Node):
    """SDXL refiner: prompt plus aesthetic score and original size."""

    category = "advanced/conditioning"
    inputs = {
        "ascore": Input(Types.FLOAT, default=6.0, min=0.0, max=1000.0, step=0.01),
        "width": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "height": Input(Types.INT, default=1024, min=0, max=MAX_RESOLUTION),
        "text": Input(Types.STRING, multiline=True, dynamic_prompts=True),
        "clip": Input(Types.CLIP),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, ascore: float, width: int, height: int, text: str,
                clip: ClipRef) -> tuple[Any, ...]:
        item = encode(ctx, clip, text)[0]
        adm = {"aesthetic_score": float(ascore), "width": width, "height": height}
        return ([item.with_(adm=adm)],)


class ConditioningCombine(Node):
    """Both conditionings side by side (each is evaluated and the predictions blended by weight)."""

    display_name = "Conditioning (Combine)"
    category = "conditioning"
    inputs = {"conditioning_1": Input(Types.CONDITIONING), "conditioning_2": Input(Types.CONDITIONING)}
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning_1: Conditioning,
                conditioning_2: Conditioning) -> tuple[Any, ...]:
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningAverage(Node):
    """Blend each `conditioning_to` item toward the first `conditioning_from` item (tokens and pooled)."""

    display_name = "ConditioningAverage"
    category = "conditioning"
    inputs = {
        "conditioning_to": Input(Types.CONDITIONING),
        "conditioning_from": Input(Types.CONDITIONING),
        "conditioning_to_strength": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning_to: Conditioning, conditioning_from: Conditioning,
                conditioning_to_strength: float) -> tuple[Any, ...]:
        if not conditioning_from:
            raise ValueError("ConditioningAverage: conditioning_from is empty")
        src = conditioning_from[0]
        w = float(conditioning_to_strength)
        out = []
        for item in conditioning_to:
            t1 = item.cross_attn
            t0 = src.cross_attn[:, : t1.shape[1]]
            if t0.shape[1] < t1.shape[1]:  # zero-pad a shorter source, as ComfyUI
                t0 = torch.cat([t0, torch.zeros((1, t1.shape[1] - t0.shape[1], t1.shape[2]))], dim=1)
            pooled_to = item.pooled if item.pooled is not None else src.pooled
            if src.pooled is not None and pooled_to is not None:
                pooled = pooled_to * w + src.pooled * (1.0 - w)
            else:
                pooled = item.pooled
            out.append(item.with_(cross_attn=t1 * w + t0 * (1.0 - w), pooled=pooled))
        return (out,)


class ConditioningSetArea(Node):
    """Restrict conditioning to a rectangle (pixels, multiples of 8) with a strength."""

    display_name = "Conditioning (Set Area)"
    category = "conditioning"
    inputs = {
        "conditioning": Input(Types.CONDITIONING),
        "width": Input(Types.INT, default=64, min=64, max=MAX_RESOLUTION, step=8),
        "height": Input(Types.INT, default=64, min=64, max=MAX_RESOLUTION, step=8),
        "x": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "y": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "strength": Input(Types.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning: Conditioning, width: int, height: int, x: int, y: int,
                strength: float) -> tuple[Any, ...]:
        area = (height // 8, width // 8, y // 8, x // 8)  # (h, w, y, x) in latent pixels
        out = _set_values(conditioning, area=area, strength=float(strength))
        return (_set_extra(out, set_area_to_bounds=False),)


class ConditioningSetMask(Node):
    """Restrict conditioning to a mask (any resolution; resized to the latent) with a strength."""

    display_name = "Conditioning (Set Mask)"
    category = "conditioning"
    inputs = {
        "conditioning": Input(Types.CONDITIONING),
        "mask": Input(Types.MASK),
        "strength": Input(Types.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
        "set_cond_area": Input(Types.COMBO, choices=("default", "mask bounds")),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning: Conditioning, mask: torch.Tensor, strength: float,
                set_cond_area: str) -> tuple[Any, ...]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        out = _set_values(conditioning, mask=mask, mask_strength=float(strength))
        return (_set_extra(out, set_area_to_bounds=set_cond_area != "default"),)


class ConditioningZeroOut(Node):
    """All-zero embeddings (and pooled vectors) of the same shapes."""

    category = "advanced/conditioning"
    inputs = {"conditioning": Input(Types.CONDITIONING)}
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning: Conditioning) -> tuple[Any, ...]:
        return ([item.with_(cross_attn=torch.zeros_like(item.cross_attn),
                            pooled=None if item.pooled is None else torch.zeros_like(item.pooled))
                 for item in conditioning],)


class ConditioningSetTimestepRange(Node):
    """Apply conditioning only between `start` and `end` (fractions of the sampling run)."""

    category = "advanced/conditioning"
    inputs = {
        "conditioning": Input(Types.CONDITIONING),
        "start": Input(Types.FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        "end": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning: Conditioning, start: float, end: float) -> tuple[Any, ...]:
        return (_set_extra(conditioning, start_percent=float(start), end_percent=float(end)),)


NODES: tuple[type[Node], ...] = (
    CLIPTextEncode, CLIPTextEncodeA1111, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, ConditioningCombine, ConditioningSetArea,
    ConditioningSetMask, ConditioningAverage, ConditioningZeroOut, ConditioningSetTimestepRange,
)
