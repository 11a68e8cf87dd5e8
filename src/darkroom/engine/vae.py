"""Pixels ↔ latents with ComfyUI's conventions: images are (B, H, W, 3) float in [0, 1]; latents are raw VAE latents."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _vae_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def _vae_device(vae) -> torch.device:
    return next(vae.parameters()).device


@torch.no_grad()
def vae_decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """Raw latents (B, C, h, w) → images (B, H, W, 3) float32 in [0, 1] on CPU: clamp((x + 1) / 2, 0, 1)."""
    z = latent.to(_vae_device(vae), _vae_dtype(vae))  # (B, C, h, w)
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    out = vae.decode(z).sample.float()  # (B, 3, H, W) in [-1, 1]
    return torch.clamp((out + 1.0) / 2.0, 0.0, 1.0).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (B, H, W, 3) in [0, 1] → raw latents (B, C, H/8, W/8) float32 on CPU (posterior mode, no sampling)."""
    x = images.permute(0, 3, 1, 2).to(_vae_device(vae), _vae_dtype(vae)) * 2.0 - 1.0  # (B, 3, H, W)
    z = vae.encode(x).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z - shift
    return z.cpu()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image → (1, H, W, 3) float32 in [0, 1] (RGB / 255, as ComfyUI's LoadImage)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, H, W, 3) float in [0, 1] → PIL images with ComfyUI's truncation: clip(255·x, 0, 255).astype(uint8)."""
    arr = np.clip(255.0 * images.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
