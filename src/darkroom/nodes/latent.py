"""Latent nodes: empty latents, VAE decode/encode (plain, tiled, for inpainting), noise masks, resizing, batches.

A LATENT is a dict `{"samples": (B, 4, H/8, W/8) raw VAE latent, "noise_mask"?: (B|1, 1, H, W) in [0, 1],
"batch_index"?: list[int]}`; nodes return new dicts and never modify their inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..engine.vae import vae_decode, vae_encode
from ..graph import Input, Node, NodeContext, Output, Types
from .refs import VaeRef, check_type
from ..engine.resize import CROP_METHODS, UPSCALE_METHODS_LATENT, common_upscale, tiled_scale

MAX_RESOLUTION = 16384
Latent = dict[str, Any]


def _vae_param(vae: Any) -> torch.nn.Parameter:
    return next(vae.parameters())


@torch.no_grad()
def decode_raw(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """Raw latents (B, C, h, w) → decoder output (B, 3, H, W) float32 in about [-1, 1] (no clamping)."""
    p = _vae_param(vae)
    z = z.to(p.device, p.dtype)
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    return vae.decode(z).sample.float().cpu()


@torch.no_grad()
def encode_raw(vae: Any, x: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] → raw latents (B, C, H/8, W/8) float32 (posterior mode)."""
    p = _vae_param(vae)
    z = vae.encode(x.to(p.device, p.dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z - shift
    return z.cpu()


def crop_to_multiple(pixels: torch.Tensor, f: int) -> tuple[torch.Tensor, int, int]:
    """Centre-crop (B, H, W, C) to multiples of f (offsets (H % f) // 2, as ComfyUI); returns (pixels, y0, x0)."""
    h, w = pixels.shape[1] // f * f, pixels.shape[2] // f * f
    if h == 0 or w == 0:
        raise ValueError(f"image of {pixels.shape[2]}x{pixels.shape[1]} px is smaller than one latent pixel ({f} px)")
    y0, x0 = (pixels.shape[1] % f) // 2, (pixels.shape[2] % f) // 2
    return pixels[:, y0 : y0 + h, x0 : x0 + w], y0, x0


def _latent(samples: Any, node: str) -> Latent:
    if not isinstance(samples, dict) or "samples" not in samples:
        raise TypeError(f"{node}: expected a LATENT dict with 'samples', got {type(samples).__name__}")
    return samples


class EmptyLatentImage(Node):
    """A batch of all-zero latents for txt2img."""

    display_name = "Empty Latent Image"
    category = "latent"
    description = "Create a new batch of empty latent images to be denoised via sampling."
    inputs = {
        "width": Input(Types.INT, default=512, min=16, max=MAX_RESOLUTION, step=8,
                       tooltip="The width of the latent images in pixels."),
        "height": Input(Types.INT, default=512, min=16, max=MAX_RESOLUTION, step=8,
                        tooltip="The height of the latent images in pixels."),
        "batch_size": Input(Types.INT, default=1, min=1, max=4096, tooltip="The number of latent images in the batch."),
    }
    outputs = [Output(Types.LATENT, tooltip="The empty latent image batch.")]

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[Any, ...]:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class VAEDecode(Node):
    """Latents → images."""

    display_name = "VAE Decode"
    category = "latent"
    description = "Decodes latent images back into pixel space images."
    inputs = {"samples": Input(Types.LATENT, tooltip="The latent to be decoded."),
              "vae": Input(Types.VAE, tooltip="The VAE model used for decoding the latent.")}
    outputs = [Output(Types.IMAGE, tooltip="The decoded image.")]

    def execute(self, ctx: NodeContext, samples: Latent, vae: VaeRef) -> tuple[Any, ...]:
        check_type(vae, VaeRef, "vae", self.name)
        with vae.padding():
            return (vae_decode(vae.vae, _latent(samples, self.name)["samples"]),)


class VAEEncode(Node):
    """Images → latents (sizes cropped to multiples of 8)."""

    display_name = "VAE Encode"
    category = "latent"
    inputs = {"pixels": Input(Types.IMAGE), "vae": Input(Types.VAE)}
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeRef) -> tuple[Any, ...]:
        check_type(vae, VaeRef, "vae", self.name)
        pixels, _, _ = crop_to_multiple(pixels[..., :3], vae.downscale)
        with vae.padding():
            return ({"samples": vae_encode(vae.vae, pixels)},)


class VAEDecodeTiled(Node):
    """Decode in overlapping tiles (three tilings averaged, as ComfyUI) to bound memory."""

    display_name = "VAE Decode (Tiled)"
    category = "_for_testing"
    inputs = {
        "samples": Input(Types.LATENT),
        "vae": Input(Types.VAE),
        "tile_size": Input(Types.INT, default=512, min=64, max=4096, step=32),
        "overlap": Input(Types.INT, default=64, min=0, max=4096, step=32),
        "temporal_size": Input(Types.INT, default=64, min=8, max=4096, step=4,
                               tooltip="Only used for video VAEs: Amount of frames to decode at a time."),
        "temporal_overlap": Input(Types.INT, default=8, min=4, max=4096, step=4,
                                  tooltip="Only used for video VAEs: Amount of frames to overlap."),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, samples: Latent, vae: VaeRef, tile_size: int, overlap: int = 64,
                temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[Any, ...]:
        check_type(vae, VaeRef, "vae", self.name)
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        f = vae.downscale
        t, o = tile_size // f, overlap // f
        z = _latent(samples, self.name)["samples"].float()

        def fn(part: torch.Tensor) -> torch.Tensor:
            return decode_raw(vae.vae, part)

        passes = [(t * 2, t // 2), (t // 2, t * 2), (t, t)]  # (tile_h, tile_w)
        with vae.padding():
            out = sum(tiled_scale(z, fn, p, o, f, 3) for p in passes) / 3.0  # (B, 3, H, W)
        return (((out + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1),)


class VAEEncodeTiled(Node):
    """Encode in overlapping tiles (three tilings averaged, as ComfyUI)."""

    display_name = "VAE Encode (Tiled)"
    category = "_for_testing"
    inputs = {
        "pixels": Input(Types.IMAGE),
        "vae": Input(Types.VAE),
        "tile_size": Input(Types.INT, default=512, min=64, max=4096, step=64),
        "overlap": Input(Types.INT, default=64, min=0, max=4096, step=32),
        "temporal_size": Input(Types.INT, default=64, min=8, max=4096, step=4,
                               tooltip="Only used for video VAEs: Amount of frames to encode at a time."),
        "temporal_overlap": Input(Types.INT, default=8, min=4, max=4096, step=4,
                                  tooltip="Only used for video VAEs: Amount of frames to overlap."),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeRef, tile_size: int, overlap: int,
                temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[Any, ...]:
        check_type(vae, VaeRef, "vae", self.name)
        if overlap >= tile_size // 2:  # the half-size tiling would not advance (ComfyUI fails here)
            overlap = tile_size // 4
        f = vae.downscale
        pixels, _, _ = crop_to_multiple(pixels[..., :3], f)
        x = pixels.movedim(-1, 1).float() * 2.0 - 1.0  # (B, 3, H, W)

        def fn(part: torch.Tensor) -> torch.Tensor:
            return encode_raw(vae.vae, part)

        passes = [(tile_size, tile_size), (tile_size // 2, tile_size * 2), (tile_size * 2, tile_size // 2)]
        with vae.padding():
            z = sum(tiled_scale(x, fn, p, overlap, 1.0 / f, vae.latent_channels) for p in passes) / 3.0
        return ({"samples": z},)


class VAEEncodeForInpaint(Node):
    """Encode with the masked pixels set to grey, and attach the (grown, binarised) mask as the noise mask."""

    display_name = "VAE Encode (for Inpainting)"
    category = "latent/inpaint"
    inputs = {
        "pixels": Input(Types.IMAGE),
        "vae": Input(Types.VAE),
        "mask": Input(Types.MASK),
        "grow_mask_by": Input(Types.INT, default=6, min=0, max=64, step=1),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeRef, mask: torch.Tensor,
                grow_mask_by: int = 6) -> tuple[Any, ...]:
        check_type(vae, VaeRef, "vae", self.name)
        f = vae.downscale
        H, W = pixels.shape[1], pixels.shape[2]
        m = torch.nn.functional.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(),
                                            size=(H, W), mode="bilinear")  # (B|1, 1, H, W)
        pixels, y0, x0 = crop_to_multiple(pixels[..., :3].clone(), f)
        h, w = pixels.shape[1], pixels.shape[2]
        m = m[:, :, y0 : y0 + h, x0 : x0 + w]
        if grow_mask_by == 0:
            grown = m
        else:  # grow by a box filter on the binarised mask, so the seam stays inside the regenerated area
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            pad = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(torch.nn.functional.conv2d(m.round(), kernel, padding=pad), 0, 1)
        keep = (1.0 - m.round()).squeeze(1)[..., None]  # (B|1, h, w, 1)
        pixels = (pixels - 0.5) * keep + 0.5
        with vae.padding():
            latent = vae_encode(vae.vae, pixels)
        return ({"samples": latent, "noise_mask": grown[:, :, :h, :w].round()},)


class SetLatentNoiseMask(Node):
    """Attach a mask: sampling regenerates only where it is 1 and keeps the latent elsewhere."""

    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    inputs = {"samples": Input(Types.LATENT), "mask": Input(Types.MASK)}
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples: Latent, mask: torch.Tensor) -> tuple[Any, ...]:
        s = dict(_latent(samples, self.name))
        s["noise_mask"] = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        return (s,)


class LatentUpscale(Node):
    """Resize latents to a pixel size (0 keeps the aspect ratio from the other side)."""

    display_name = "Upscale Latent"
    category = "latent"
    inputs = {
        "samples": Input(Types.LATENT),
        "upscale_method": Input(Types.COMBO, choices=UPSCALE_METHODS_LATENT),
        "width": Input(Types.INT, default=512, min=0, max=MAX_RESOLUTION, step=8),
        "height": Input(Types.INT, default=512, min=0, max=MAX_RESOLUTION, step=8),
        "crop": Input(Types.COMBO, choices=CROP_METHODS),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples: Latent, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[Any, ...]:
        samples = _latent(samples, self.name)
        if width == 0 and height == 0:
            return (samples,)
        z = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(z.shape[3] * height / z.shape[2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(z.shape[2] * width / z.shape[3]))
        else:
            width, height = max(64, width), max(64, height)
        s = dict(samples)
        s["samples"] = common_upscale(z, width // 8, height // 8, upscale_method, crop)
        return (s,)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    display_name = "Upscale Latent By"
    category = "latent"
    inputs = {
        "samples": Input(Types.LATENT),
        "upscale_method": Input(Types.COMBO, choices=UPSCALE_METHODS_LATENT),
        "scale_by": Input(Types.FLOAT, default=1.5, min=0.01, max=8.0, step=0.01),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Any, ...]:
        z = _latent(samples, self.name)["samples"]
        width, height = round(z.shape[3] * scale_by), round(z.shape[2] * scale_by)
        s = dict(samples)
        s["samples"] = common_upscale(z, width, height, upscale_method, "disabled")
        return (s,)


class LatentComposite(Node):
    """Paste `samples_from` into `samples_to` at (x, y) pixels, optionally feathering the inner edges."""

    display_name = "Latent Composite"
    category = "latent"
    inputs = {
        "samples_to": Input(Types.LATENT),
        "samples_from": Input(Types.LATENT),
        "x": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "y": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "feather": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples_to: Latent, samples_from: Latent, x: int, y: int,
                feather: int = 0) -> tuple[Any, ...]:
        x, y, feather = x // 8, y // 8, feather // 8
        dst = _latent(samples_to, self.name)["samples"]
        src = _latent(samples_from, self.name)["samples"][:, :, : dst.shape[2] - y, : dst.shape[3] - x]
        out = dst.clone()
        region = out[:, :, y : y + src.shape[2], x : x + src.shape[3]]
        if feather == 0:
            region[:] = src
        else:
            mask = torch.ones_like(src)
            for t in range(feather):
                a = (t + 1) / feather
                if y != 0:
                    mask[:, :, t : t + 1, :] *= a
                if y + src.shape[2] < dst.shape[2]:
                    mask[:, :, mask.shape[2] - 1 - t : mask.shape[2] - t, :] *= a
                if x != 0:
                    mask[:, :, :, t : t + 1] *= a
                if x + src.shape[3] < dst.shape[3]:
                    mask[:, :, :, mask.shape[3] - 1 - t : mask.shape[3] - t] *= a
            region[:] = src * mask + region * (1.0 - mask)
        s = dict(samples_to)
        s["samples"] = out
        return (s,)


def _batched_masks(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a (b, …) mask batch to at least `batch` entries."""
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), *[1] * (masks.ndim - 1))[:batch]
    return masks


class LatentFromBatch(Node):
    """Take `length` latents from `batch_index` on (remembering their batch indices for the noise)."""

    display_name = "Latent From Batch"
    category = "latent/batch"
    inputs = {
        "samples": Input(Types.LATENT),
        "batch_index": Input(Types.INT, default=0, min=0, max=63),
        "length": Input(Types.INT, default=1, min=1, max=64),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples: Latent, batch_index: int, length: int) -> tuple[Any, ...]:
        s = dict(_latent(samples, self.name))
        z = samples["samples"]
        start = min(z.shape[0] - 1, batch_index)
        length = min(z.shape[0] - start, length)
        s["samples"] = z[start : start + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                s["noise_mask"] = masks.clone()
            else:
                s["noise_mask"] = _batched_masks(masks, z.shape[0])[start : start + length].clone()
        if "batch_index" not in samples:
            s["batch_index"] = list(range(start, start + length))
        else:
            s["batch_index"] = list(samples["batch_index"][start : start + length])
        return (s,)


class RepeatLatentBatch(Node):
    """Repeat the latent batch `amount` times (batch indices continue so each copy gets its own noise)."""

    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    inputs = {"samples": Input(Types.LATENT), "amount": Input(Types.INT, default=1, min=1, max=64)}
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, samples: Latent, amount: int) -> tuple[Any, ...]:
        s = dict(_latent(samples, self.name))
        z = samples["samples"]
        s["samples"] = z.repeat((amount, 1, 1, 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            masks = _batched_masks(samples["noise_mask"], z.shape[0])
            s["noise_mask"] = masks.repeat((amount, *[1] * (masks.ndim - 1)))
        if "batch_index" in samples:
            idx = list(samples["batch_index"])
            offset = max(idx) - min(idx) + 1
            s["batch_index"] = idx + [i + k * offset for k in range(1, amount) for i in idx]
        return (s,)


NODES: tuple[type[Node], ...] = (
    EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled, VAEEncodeForInpaint, SetLatentNoiseMask,
    LatentUpscale, LatentUpscaleBy, LatentComposite, LatentFromBatch, RepeatLatentBatch,
)
