"""End to end: for the same tiny weights, prompt, seed and an equivalent scheduler, darkroom's txt2img and img2img give
the same images (before 8-bit quantisation) as diffusers' StableDiffusion(XL) pipelines.

The equivalent scheduler: ComfyUI's `normal` schedule with 4 steps samples timesteps 999, 666, 333, 0 — integers, so
diffusers' EulerDiscreteScheduler given `timesteps=[999, 666, 333, 0]` uses exactly the same sigmas and UNet timesteps.
diffusers rounds to uint8 and ComfyUI truncates, so floats are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from darkroom.engine import pipeline
from darkroom.sampling.noise import prepare_noise

from engine_tiny import tiny_sd1, tiny_sdxl

TIMESTEPS = [999, 666, 333, 0]
PROMPT = "a red circle at the top left, (blue background)"  # weights are 1 here: A1111 parsing keeps the text
PLAIN = "a red circle at the top left, blue background"


def _scheduler(prediction: str = "epsilon") -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, timestep_spacing="linspace", prediction_type=prediction,
                                  steps_offset=1)


def _diffusers_latents(noise: torch.Tensor) -> torch.Tensor:
    """diffusers multiplies given latents by init_noise_sigma (σ_max for linspace spacing); ComfyUI scales txt2img
    noise by sqrt(1 + σ_max²). Pre-scale so both start from the same x."""
    sigma_max = float(_scheduler().sigmas.max())
    return noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)


def _ours(ckpt, prompt, negative, *, seed, steps, cfg, latent, denoise=1.0):
    pos = pipeline.encode_text(ckpt, prompt)
    neg = pipeline.encode_text(ckpt, negative)
    out = pipeline.ksample(ckpt, latent, pos, neg, seed=seed, steps=steps, cfg=cfg, sampler="euler",
                           scheduler="normal", denoise=denoise)
    return pipeline.decode(ckpt, out).numpy()  # (B, H, W, 3) in [0, 1]


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_txt2img_matches_stable_diffusion_pipeline(prediction):
    ckpt = tiny_sd1(seed=1, prediction=prediction)
    h = w = 32
    latent = torch.zeros((1, 4, h // 2, w // 2))
    ours = _ours(ckpt, PLAIN, "ugly", seed=42, steps=4, cfg=6.0, latent=latent)
    pipe = StableDiffusionPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0],
                                   unet=ckpt.unet, scheduler=_scheduler("epsilon" if prediction == "eps" else
                                                                        "v_prediction"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    noise = prepare_noise((1, 4, h // 2, w // 2), 42)
    ref = pipe(PLAIN, negative_prompt="ugly", height=h, width=w, timesteps=TIMESTEPS, guidance_scale=6.0,
               latents=_diffusers_latents(noise), output_type="np").images
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    # And a different seed really changes the picture (the comparison could fail).
    other = _ours(ckpt, PLAIN, "ugly", seed=43, steps=4, cfg=6.0, latent=latent)
    assert np.abs(other - ours).max() > 1e-2


def test_img2img_matches_stable_diffusion_img2img_pipeline():
    ckpt = tiny_sd1(seed=2)
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 32, 32, 3), generator=g)
    init = pipeline.encode(ckpt, image)  # raw latent (mode of the posterior)
    ours = _ours(ckpt, PLAIN, "", seed=7, steps=2, cfg=5.0, latent=init, denoise=0.5)
    pipe = StableDiffusionImg2ImgPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0],
                                          tokenizer=ckpt.tokenizers[0], unet=ckpt.unet, scheduler=_scheduler(),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # ComfyUI: steps 2 at denoise 0.5 → a 4-step schedule, last 3 sigmas; diffusers: strength 0.5 of 4 timesteps.
    ref = pipe(PLAIN, negative_prompt="", image=init * ckpt.latent_scale, strength=0.5, timesteps=TIMESTEPS,
               guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="np").images
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_sdxl_txt2img_matches_stable_diffusion_xl_pipeline():
    ckpt = tiny_sdxl(seed=3)
    h = w = 32
    latent = torch.zeros((1, 4, h // 2, w // 2))
    ours = _ours(ckpt, PLAIN, "blurry", seed=5, steps=4, cfg=4.0, latent=latent)
    pipe = StableDiffusionXLPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0],
                                     text_encoder_2=ckpt.text_encoders[1], tokenizer=ckpt.tokenizers[0],
                                     tokenizer_2=ckpt.tokenizers[1], unet=ckpt.unet, scheduler=_scheduler(),
                                     force_zeros_for_empty_prompt=False)
    noise = prepare_noise((1, 4, h // 2, w // 2), 5)
    ref = pipe(PLAIN, negative_prompt="blurry", height=h, width=w, timesteps=TIMESTEPS, guidance_scale=4.0,
               latents=_diffusers_latents(noise), output_type="np").images
    np.testing.assert_allclose(ours, ref, atol=2e-4)
