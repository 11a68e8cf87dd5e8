"""Generation steps over a loaded checkpoint, with ComfyUI's semantics: encode text, sample latents, decode, upscale.

These are the building blocks both the typed requests (`Engine.generate`) and the workflow nodes call, so a request
and its equivalent workflow give the same pixels. Latents passed between steps are raw VAE latents (B, C, H/8, W/8);
the model's latent scale is applied only around sampling, as ComfyUI does.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.bundle import Checkpoint
from ..sampling.ksampler import sample as ksampler_sample
from ..sampling.model_sampling import ModelSampling
from ..sampling.noise import prepare_noise
from .denoiser import CondItem, CondSchedule, UNetDenoiser
from .vae import vae_decode, vae_encode

ProgressFn = Callable[[int, int, torch.Tensor | None], None]  # (step, total, x0 preview latent (scaled) | None)


class Interrupted(Exception):
    """Raised from inside sampling when the caller asked to stop."""


def model_sampling_for(ckpt: Checkpoint) -> ModelSampling:
    """The sigma table and prediction conventions of a checkpoint."""
    return ModelSampling(ckpt.schedule, prediction=ckpt.kind.prediction)


def encode_text(ckpt: Checkpoint, text: str, *, style: str = "a1111", clip_skip: int = 1, embeddings=None,
                used_embeddings: dict | None = None, negative: bool = False) -> list[CondItem]:
    """Prompt text → CONDITIONING (one item). `used_embeddings` collects the textual inversions the text used."""
    from ..conditioning.encode import encode_prompt

    c = encode_prompt(ckpt, text, style=style, clip_skip=clip_skip, embeddings=embeddings, negative=negative)
    if used_embeddings is not None:
        used_embeddings.update(getattr(c, "embeddings_used", {}) or {})
    return [CondItem(cross_attn=c.cross_attn, pooled=c.pooled)]


def encode_prompt_schedule(ckpt: Checkpoint, text: str, steps: int, *, clip_skip: int = 1, embeddings=None,
                           used_embeddings: dict | None = None) -> list[CondItem] | CondSchedule:
    """An A1111 prompt with `[from:to:when]` / `[a|b]` editing → a per-step schedule (or one item if static)."""
    from ..conditioning.encode import encode_schedule

    entries = encode_schedule(ckpt, text, steps, style="a1111", clip_skip=clip_skip, embeddings=embeddings)
    if used_embeddings is not None:
        for _, c in entries:
            used_embeddings.update(getattr(c, "embeddings_used", {}) or {})
    items = [(end, [CondItem(cross_attn=c.cross_attn, pooled=c.pooled)]) for end, c in entries]
    return items[0][1] if len(items) == 1 else CondSchedule(items)


def inpaint_concat(ckpt: Checkpoint, latent: torch.Tensor, noise_mask: torch.Tensor | None,
                   concat_latent: torch.Tensor | None = None) -> torch.Tensor | None:
    """The 5 extra input channels of a 9-channel inpainting UNet: (mask, masked-image latent·scale), or None.

    With no mask (plain txt2img/img2img on an inpainting model) the whole image is 'to inpaint' and the masked image is
    the latent of a blank image, as ComfyUI does."""
    if not ckpt.kind.inpaint:
        return None
    B, _, h, w = latent.shape
    if noise_mask is None:
        mask = torch.ones((B, 1, h, w))
    else:
        mask = _latent_mask(noise_mask, (h, w), B)
    if concat_latent is None:
        # Gray image's latent under the SD VAE (ComfyUI's blank_inpaint_image_like), raw space.
        gray = torch.tensor([0.8223, -0.6876, 0.6364, 0.1380])[: latent.shape[1]].view(1, -1, 1, 1)
        concat_latent = torch.ones_like(latent) * gray
    masked = concat_latent.float() * ckpt.latent_scale
    return torch.cat([mask, masked.expand(B, -1, -1, -1)], dim=1)  # (B, 1 + C, h, w)


def _latent_mask(mask: torch.Tensor, hw: tuple[int, int], batch: int) -> torch.Tensor:
    """A pixel- or latent-resolution mask (B|1, H, W) → (batch, 1, h, w) resized bilinearly."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    m = m[:, None]
    if m.shape[-2:] != hw:
        m = torch.nn.functional.interpolate(m, size=hw, mode="bilinear")
    if m.shape[0] < batch:
        m = m.repeat((batch + m.shape[0] - 1) // m.shape[0], 1, 1, 1)[:batch]
    return m


def ksample(
    ckpt: Checkpoint,
    latent: torch.Tensor,
    positive: list[CondItem] | CondSchedule,
    negative: list[CondItem],
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    denoise: float = 1.0,
    add_noise: bool = True,
    start_step: int | None = None,
    end_step: int | None = None,
    force_full_denoise: bool = False,
    noise_mask: torch.Tensor | None = None,
    concat_latent: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """ComfyUI's common_ksampler: raw latent (B, C, h, w) in, raw latent out."""
    ms = model_sampling_for(ckpt)
    B, C, h, w = latent.shape
    if noise is None:
        noise = prepare_noise(latent.shape, seed) if add_noise else torch.zeros_like(latent)
    denoiser = UNetDenoiser(
        ckpt.unet, ms, positive, negative, cfg,
        sdxl=ckpt.kind.is_sdxl, refiner=ckpt.kind.family.value == "sdxl_refiner",
        concat=inpaint_concat(ckpt, latent, noise_mask, concat_latent),
        latent_size_px=(w * ckpt.vae_downscale, h * ckpt.vae_downscale),
    )
    def callback(info: dict) -> None:
        if isinstance(positive, CondSchedule):
            positive.step = int(info["i"]) + 1
        if cancelled is not None and cancelled():
            raise Interrupted("generation was interrupted")
        if progress is not None:
            progress(int(info["i"]) + 1, int(info["total_steps"]), info.get("denoised"))

    if isinstance(positive, CondSchedule):
        positive.step = 0
    mask = None if noise_mask is None else _latent_mask(noise_mask, (h, w), B)
    scale = ckpt.latent_scale
    out = ksampler_sample(
        denoiser, latent.float() * scale,
        sampler=sampler, scheduler=scheduler, model_sampling=ms, steps=steps, seed=seed,
        denoise_strength=denoise, noise=noise, add_noise=add_noise, start_step=start_step, end_step=end_step,
        force_full_denoise=force_full_denoise, denoise_mask=mask, callback=callback,
    )
    return out.float() / scale


def decode(ckpt: Checkpoint, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent → images (B, H, W, 3) in [0, 1]."""
    return vae_decode(ckpt.vae, latent)


def encode(ckpt: Checkpoint, images: torch.Tensor) -> torch.Tensor:
    """Images (B, H, W, 3) in [0, 1] → raw latent; sizes are cropped to a multiple of the VAE's downscale."""
    f = ckpt.vae_downscale
    H, W = images.shape[1] // f * f, images.shape[2] // f * f
    if (H, W) != images.shape[1:3]:
        y, x = (images.shape[1] - H) // 2, (images.shape[2] - W) // 2
        images = images[:, y : y + H, x : x + W]
    return vae_encode(ckpt.vae, images)


def upscale_latent(latent: torch.Tensor, width: int, height: int, method: str = "bilinear") -> torch.Tensor:
    """Resize raw latents to (height/8, width/8) — ComfyUI's LatentUpscale (methods: nearest-exact, bilinear, area,
    bicubic, bislerp≈bilinear here)."""
    mode = {"bislerp": "bilinear"}.get(method, method)
    size = (max(1, height // 8), max(1, width // 8))
    if mode in ("bilinear", "bicubic"):
        return torch.nn.functional.interpolate(latent, size=size, mode=mode, align_corners=False)
    return torch.nn.functional.interpolate(latent, size=size, mode=mode)
