"""ComfyUI's KSampler / KSamplerAdvanced flow as one pure function, plus the inpainting denoiser wrapper.

`sample()` reproduces `nodes.common_ksampler` -> `comfy.sample.sample` -> `KSampler.sample` ->
`CFGGuider` -> `KSAMPLER.sample` for one denoiser:

1. noise: `prepare_noise(latent.shape, seed)` (zeros when add_noise is False);
2. sigmas: the scheduler's, with the next-to-last sigma dropped for dpm_2/uni_pc samplers and the
   img2img rule for denoise_strength < 1; end_step truncates (its last sigma forced to 0 when
   force_full_denoise), start_step skips; nothing left -> the latent is returned unchanged;
3. x = noise * (sqrt(1 + s0^2) if s0 is sigma_max else s0) + latent;
4. with a denoise_mask, the denoiser is wrapped so that masked-out regions follow the source
   latent re-noised to the current sigma (`inpaint_denoiser`);
5. the sampler runs; the result is un-scaled (identity for eps/v) and returned as float32.

Latents are in the model's scaled space (VAE latent times its scaling factor); the engine scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .model_sampling import ModelSampling
from .noise import cpu_generator, prepare_noise, reshape_mask
from .registry import check_sampler, get_sampler
from .samplers_k import Callback, Denoiser
from .schedules import check_scheduler, ksampler_sigmas


def inpaint_denoiser(
    denoise: Denoiser,
    latent_image: torch.Tensor,
    noise: torch.Tensor,
    denoise_mask: torch.Tensor,
    model_sampling: ModelSampling,
) -> Denoiser:
    """ComfyUI's KSamplerX0Inpaint: outside the mask (mask 0) keep the source latent.

    Before the model call, the kept region of x is replaced by `latent + noise * sigma`; after it,
    the kept region of x0 is replaced by the latent. mask 1 = regenerate, broadcastable to x.
    """
    latent_mask = 1.0 - denoise_mask

    def wrapped(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma_b = sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1))
        renoised = model_sampling.noise_scaling(sigma_b, noise, latent_image)
        x = x * denoise_mask + renoised * latent_mask
        out = denoise(x, sigma)
        return out * denoise_mask + latent_image * latent_mask

    return wrapped


def _check_step(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    return value


def sample(
    denoise: Denoiser,
    latent: torch.Tensor,
    *,
    sampler: str,
    scheduler: str,
    model_sampling: ModelSampling,
    steps: int,
    seed: int,
    denoise_strength: float = 1.0,
    noise: torch.Tensor | None = None,
    add_noise: bool = True,
    start_step: int | None = None,
    end_step: int | None = None,
    force_full_denoise: bool = False,
    denoise_mask: torch.Tensor | None = None,
    callback: Callback = None,
    sigmas: torch.Tensor | None = None,
    batch_index: Sequence[int] | None = None,
    sampler_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run ComfyUI's KSampler semantics with `denoise(x, sigma) -> x0`; returns the final latent (B, C, H, W).

    KSampler node: defaults. KSamplerAdvanced: add_noise, start_step (start_at_step), end_step
    (end_at_step), force_full_denoise = not return_with_leftover_noise. `sigmas` overrides the
    schedule (SamplerCustom). `callback` gets {"i", "x", "sigma", "sigma_hat", "denoised", "total_steps"}.
    """
    check_sampler(sampler)
    check_scheduler(scheduler)
    if latent.ndim != 4:
        raise ValueError(f"latent must be (B, C, H, W), got shape {tuple(latent.shape)}")
    start_step = _check_step("start_step", start_step)
    end_step = _check_step("end_step", end_step)
    device = latent.device
    latent = latent.to(torch.float32)

    if noise is None:
        if add_noise:
            noise = prepare_noise(latent.shape, seed, batch_index)
        else:
            noise = torch.zeros(latent.shape, dtype=torch.float32)
    elif tuple(noise.shape) != tuple(latent.shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match latent shape {tuple(latent.shape)}")

    if sigmas is None:
        sigmas = ksampler_sigmas(model_sampling, scheduler, steps, sampler, denoise_strength)
    else:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).clone()

    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return latent
    if sigmas.shape[-1] == 0:
        return latent

    return run_sampler(
        denoise,
        latent,
        noise.to(device=device, dtype=torch.float32),
        sigmas.to(device),
        sampler=sampler,
        model_sampling=model_sampling,
        seed=seed,
        denoise_mask=None if denoise_mask is None else reshape_mask(denoise_mask, latent.shape).to(device),
        callback=callback,
        sampler_options=sampler_options,
    )


def run_sampler(
    denoise: Denoiser,
    latent: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    sampler: str,
    model_sampling: ModelSampling,
    seed: int | None,
    denoise_mask: torch.Tensor | None = None,
    callback: Callback = None,
    sampler_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """ComfyUI's KSAMPLER.sample: scale the noise, wrap for inpainting, run the sampler, un-scale.

    `noise` is unit noise shaped like `latent`; `denoise_mask` already at latent shape (or None).
    """
    fn = get_sampler(sampler)
    if len(sigmas) == 0:
        return latent
    wrapped = denoise
    if denoise_mask is not None:
        inpaint_noise = noise
        if sampler == "ddim":  # ComfyUI: inpaint_options {"random": True}
            gen = cpu_generator((41 if seed is None else seed) + 1)
            inpaint_noise = torch.randn(noise.shape, generator=gen).to(noise)
        wrapped = inpaint_denoiser(denoise, latent, inpaint_noise, denoise_mask, model_sampling)

    x = model_sampling.noise_scaling(sigmas[0], noise, latent, model_sampling.is_max_denoise(sigmas))

    step_callback: Callable[[dict[str, Any]], None] | None = None
    if callback is not None:
        total = len(sigmas) - 1

        def step_callback(d: dict[str, Any]) -> None:
            callback({**d, "total_steps": total})

    out = fn(wrapped, x, sigmas, seed=seed, callback=step_callback, **(sampler_options or {}))
    out = model_sampling.inverse_noise_scaling(sigmas[-1], out)
    return out.to(torch.float32)
