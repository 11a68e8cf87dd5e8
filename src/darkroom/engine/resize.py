"""Resizing and tiling shared by image and latent nodes, with ComfyUI's semantics (`comfy.utils`).

- `common_upscale`: optional centre crop to the target aspect, then torch interpolation ("nearest-exact",
  "bilinear", "area", "bicubic"), spherical-linear "bislerp" (latents) or Pillow "lanczos" (8-bit round trip,
  images);
- `tiled_scale`: run a function tile by tile with overlap and feathered blending (tiled VAE decode/encode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

UPSCALE_METHODS_LATENT = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
UPSCALE_METHODS_IMAGE = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")


def _slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of row vectors b1, b2 (N, C) by ratios r (N, 1), norms interpolated linearly."""
    c = b1.shape[-1]
    n1 = torch.norm(b1, dim=-1, keepdim=True)
    n2 = torch.norm(b2, dim=-1, keepdim=True)
    u1 = b1 / n1
    u2 = b2 / n2
    u1[n1.expand(-1, c) == 0.0] = 0.0
    u2[n2.expand(-1, c) == 0.0] = 0.0
    dot = (u1 * u2).sum(1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    res = (torch.sin((1.0 - r.squeeze(1)) * omega) / so).unsqueeze(1) * u1 + \
        (torch.sin(r.squeeze(1) * omega) / so).unsqueeze(1) * u2
    res *= (n1 * (1.0 - r) + n2 * r).expand(-1, c)
    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    res[same] = b1[same]
    res[opposite] = (b1 * (1.0 - r) + b2 * r)[opposite]
    return res


def _bilinear_taps(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output position: interpolation ratio, left and right source indices (as bilinear resize picks them)."""
    c1 = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1)
    c1 = torch.nn.functional.interpolate(c1, size=(1, new), mode="bilinear")
    ratios = c1 - c1.floor()
    i1 = c1.to(torch.int64)
    c2 = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1) + 1
    c2[:, :, :, -1] -= 1
    i2 = torch.nn.functional.interpolate(c2, size=(1, new), mode="bilinear").to(torch.int64)
    return ratios, i1, i2


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (N, C, H, W) to (N, C, height, width) by slerp between the bilinear taps, width then height."""
    dtype = samples.dtype
    x = samples.float()
    n, c, h, w = x.shape
    r, i1, i2 = _bilinear_taps(w, width)
    a = x.gather(-1, i1.expand(n, c, h, -1)).movedim(1, -1).reshape(-1, c)
    b = x.gather(-1, i2.expand(n, c, h, -1)).movedim(1, -1).reshape(-1, c)
    rr = r.expand(n, 1, h, -1).movedim(1, -1).reshape(-1, 1)
    x = _slerp(a, b, rr).reshape(n, h, width, c).movedim(-1, 1)

    r, i1, i2 = _bilinear_taps(h, height)
    i1 = i1.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    i2 = i2.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    rr = r.reshape(1, 1, -1, 1).expand(n, 1, -1, width).movedim(1, -1).reshape(-1, 1)
    a = x.gather(-2, i1).movedim(1, -1).reshape(-1, c)
    b = x.gather(-2, i2).movedim(1, -1).reshape(-1, c)
    return _slerp(a, b, rr).reshape(n, height, width, c).movedim(-1, 1).to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (N, C, H, W) images in [0, 1] with Pillow's Lanczos filter (through 8 bits, as ComfyUI)."""
    if samples.shape[1] == 1:
        frames = samples[:, 0]
    else:
        frames = samples.movedim(1, -1)
    out = []
    for frame in frames:
        img = Image.fromarray(np.clip(255.0 * frame.cpu().float().numpy(), 0, 255).astype(np.uint8))
        arr = np.asarray(img.resize((width, height), resample=Image.Resampling.LANCZOS)).astype(np.float32) / 255.0
        t = torch.from_numpy(arr)
        out.append(t.movedim(-1, 0) if t.ndim == 3 else t[None])
    return torch.stack(out).to(samples.device, samples.dtype)


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop (…, H, W) symmetrically to the aspect ratio width:height (ComfyUI's crop="center")."""
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize (N, C, H, W) to (N, C, height, width) by `method`, optionally centre-cropping first."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}: both sides must be at least 1")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop method {crop!r}; choose one of {', '.join(CROP_METHODS)}")
    s = center_crop(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(s, width, height)
    if method == "lanczos":
        return lanczos(s, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"unknown upscale method {method!r}")
    return torch.nn.functional.interpolate(s, size=(height, width), mode=method)


def tiled_scale(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile: tuple[int, int],
    overlap: int,
    scale: float,
    out_channels: int,
) -> torch.Tensor:
    """Apply `function` to overlapping (tile_h, tile_w) tiles of (N, C, H, W) and blend with feathered weights.

    `function` maps a tile to one `scale` times its size with `out_channels` channels (a VAE decode: scale 8;
    encode: 1/8). Positions, feathering and normalisation follow ComfyUI's `tiled_scale_multidim`.
    """
    n = samples.shape[0]
    dims = samples.shape[2:]
    out_dims = [round(d * scale) for d in dims]
    output = torch.empty([n, out_channels, *out_dims])
    for b in range(n):
        s = samples[b : b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(2)):
            output[b : b + 1] = function(s).float().cpu()
            continue
        acc = torch.zeros([1, out_channels, *out_dims])
        weight = torch.zeros([1, out_channels, *out_dims])
        positions = [range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
                     for d in range(2)]
        for it in itertools.product(*positions):
            part = s
            starts = []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                length = min(tile[d], s.shape[d + 2] - pos)
                part = part.narrow(d + 2, pos, length)
                starts.append(round(pos * scale))
            ps = function(part).float().cpu()
            mask = torch.ones_like(ps)
            feather = round(overlap * scale)
            for d in (2, 3):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o = acc.narrow(2, starts[0], mask.shape[2]).narrow(3, starts[1], mask.shape[3])
            w = weight.narrow(2, starts[0], mask.shape[2]).narrow(3, starts[1], mask.shape[3])
            o.add_(ps * mask)
            w.add_(mask)
        output[b : b + 1] = acc / weight
    return output

