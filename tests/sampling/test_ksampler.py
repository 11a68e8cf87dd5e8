"""The KSampler / KSamplerAdvanced flow and the inpainting wrapper, against hand-assembled steps."""

from __future__ import annotations

import math

import pytest
import torch

from darkroom.sampling import (
    SAMPLERS,
    calculate_sigmas,
    inpaint_denoiser,
    ksampler_sigmas,
    prepare_noise,
    sample,
)

SHAPE = (2, 4, 8, 8)


class Recorder:
    """Wraps a denoiser and keeps every (x, sigma) it was called with."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, sigma):
        self.calls.append((x.clone(), sigma.clone()))
        return self.inner(x, sigma)


def _latent(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * 0.3


def test_txt2img_is_noise_times_sqrt_one_plus_sigma_squared_then_sampler(sd_ms, gaussian):
    zeros = torch.zeros(SHAPE)
    out = sample(gaussian.denoise, zeros, sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=10, seed=3)
    sig = calculate_sigmas(sd_ms, "normal", 10)
    x = prepare_noise(SHAPE, 3) * torch.sqrt(1.0 + sig[0] ** 2.0)
    assert torch.equal(out, SAMPLERS["euler"](gaussian.denoise, x, sig))
    assert out.dtype == torch.float32


def test_img2img_starts_at_noise_times_sigma_plus_latent(sd_ms, gaussian):
    latent = _latent()
    rec = Recorder(gaussian.denoise)
    out = sample(rec, latent, sampler="dpmpp_2m", scheduler="karras", model_sampling=sd_ms, steps=8, seed=4, denoise_strength=0.5)
    sig = calculate_sigmas(sd_ms, "karras", 16)[-9:]
    x0 = prepare_noise(SHAPE, 4) * sig[0] + latent
    assert torch.equal(rec.calls[0][0], x0)
    assert float(rec.calls[0][1][0]) == float(sig[0])
    assert len(rec.calls) == 8
    assert torch.equal(out, SAMPLERS["dpmpp_2m"](gaussian.denoise, x0, sig))


def test_advanced_start_end_and_leftover_noise(sd_ms, gaussian):
    latent = torch.zeros(SHAPE)
    full = calculate_sigmas(sd_ms, "karras", 10)
    noise = prepare_noise(SHAPE, 5)
    # first half, returning leftover noise: stops at sigma[5] > 0
    rec = Recorder(gaussian.denoise)
    half = sample(rec, latent, sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=10, seed=5, end_step=5)
    assert len(rec.calls) == 5
    assert torch.equal(half, SAMPLERS["euler"](gaussian.denoise, noise * torch.sqrt(1.0 + full[0] ** 2.0), full[:6]))
    assert float(half.std()) == pytest.approx(math.sqrt(0.25 + float(full[5]) ** 2), rel=0.1)  # still noisy
    # second half continues without adding noise: KSamplerAdvanced(add_noise=disable, start_at_step=5)
    rest = sample(gaussian.denoise, half, sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=10, seed=5, start_step=5, add_noise=False)
    whole = sample(gaussian.denoise, latent, sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=10, seed=5)
    assert torch.allclose(rest, whole, atol=1e-5)
    # force_full_denoise: the truncated schedule's last sigma becomes 0
    forced = sample(gaussian.denoise, latent, sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=10, seed=5, end_step=5, force_full_denoise=True)
    sig = full[:6].clone()
    sig[-1] = 0
    assert torch.equal(forced, SAMPLERS["euler"](gaussian.denoise, noise * torch.sqrt(1.0 + full[0] ** 2.0), sig))
    # end_at_step past the end changes nothing
    assert torch.equal(sample(gaussian.denoise, latent, sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=10, seed=5, end_step=10000, force_full_denoise=True), whole)


def test_nothing_to_do_returns_the_latent(sd_ms, gaussian):
    latent = _latent()
    for kwargs in ({"start_step": 10}, {"start_step": 99}, {"denoise_strength": 0.0}):
        rec = Recorder(gaussian.denoise)
        out = sample(rec, latent, sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=10, seed=1, **kwargs)
        assert torch.equal(out, latent) and not rec.calls


def test_not_max_denoise_after_start_step(sd_ms, gaussian):
    rec = Recorder(gaussian.denoise)
    latent = _latent()
    sample(rec, latent, sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=10, seed=2, start_step=3)
    sig = calculate_sigmas(sd_ms, "normal", 10)
    assert torch.equal(rec.calls[0][0], prepare_noise(SHAPE, 2) * sig[3] + latent)


def test_explicit_noise_and_sigmas_override(sd_ms, gaussian):
    noise = torch.ones(SHAPE)
    sig = torch.tensor([3.0, 1.0, 0.0])
    rec = Recorder(gaussian.denoise)
    sample(rec, torch.zeros(SHAPE), sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=5, seed=0, noise=noise, sigmas=sig)
    assert len(rec.calls) == 2
    assert torch.allclose(rec.calls[0][0], torch.full(SHAPE, 3.0))
    with pytest.raises(ValueError, match="noise shape"):
        sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=5, seed=0, noise=torch.ones(1, 4, 8, 8))


def test_batch_index_noise(sd_ms, gaussian):
    rec = Recorder(gaussian.denoise)
    sample(rec, torch.zeros(SHAPE), sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=2, seed=9, batch_index=[1, 4])
    sig0 = calculate_sigmas(sd_ms, "normal", 2)[0]
    assert torch.equal(rec.calls[0][0], prepare_noise(SHAPE, 9, batch_index=[1, 4]) * torch.sqrt(1.0 + sig0**2.0))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde", "uni_pc"])
def test_inpaint_mask_keeps_the_source_outside(sd_ms, gaussian, sampler):
    """With an elementwise denoiser the regenerated half equals an unmasked run and the kept half
    is exactly the source latent."""
    latent = _latent(3)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0
    kw = dict(sampler=sampler, scheduler="karras", model_sampling=sd_ms, steps=8, seed=6, denoise_strength=0.6)
    masked = sample(gaussian.denoise, latent, denoise_mask=mask, **kw)
    free = sample(gaussian.denoise, latent, **kw)
    tol = 5e-3 if sampler == "uni_pc" else 1e-5  # UniPC stops at sigma 0.001, not 0 (as ComfyUI)
    assert torch.allclose(masked[..., :4], latent[..., :4], atol=tol)
    assert torch.allclose(masked[..., 4:], free[..., 4:], atol=1e-5)
    assert not torch.allclose(masked[..., 4:], latent[..., 4:], atol=1e-2)


def test_inpaint_denoiser_renoises_kept_region(sd_ms):
    latent = torch.full((1, 1, 2, 2), 0.5)
    noise = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    seen = {}

    def inner(x, sigma):
        seen["x"] = x.clone()
        return torch.full_like(x, -1.0)

    wrapped = inpaint_denoiser(inner, latent, noise, mask, sd_ms)
    x = torch.full((1, 1, 2, 2), 7.0)
    out = wrapped(x, torch.tensor([2.0]))
    assert seen["x"][..., 0].eq(7.0).all() and seen["x"][..., 1].eq(2.5).all()  # 0.5 + 1 * 2
    assert out[..., 0].eq(-1.0).all() and out[..., 1].eq(0.5).all()


def test_ddim_inpaints_with_noise_from_seed_plus_one(sd_ms, gaussian):
    latent = torch.zeros(SHAPE)
    mask = torch.zeros(1, 8, 8)  # keep everything: the model only ever sees re-noised source
    rec = Recorder(gaussian.denoise)
    sample(rec, latent, sampler="ddim", scheduler="ddim_uniform", model_sampling=sd_ms, steps=4, seed=10, denoise_mask=mask, denoise_strength=0.5)
    x, sigma = rec.calls[1]
    inpaint_noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(x, inpaint_noise * sigma[0], atol=1e-6)
    rec_e = Recorder(gaussian.denoise)
    sample(rec_e, latent, sampler="euler", scheduler="ddim_uniform", model_sampling=sd_ms, steps=4, seed=10, denoise_mask=mask, denoise_strength=0.5)
    assert torch.allclose(rec_e.calls[1][0], prepare_noise(SHAPE, 10) * sigma[0], atol=1e-6)


def test_pixel_size_mask_is_resized(sd_ms, gaussian):
    latent = _latent(4)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1.0  # top half regenerated
    out = sample(gaussian.denoise, latent, sampler="euler", scheduler="normal", model_sampling=sd_ms, steps=4, seed=1, denoise_mask=mask)
    assert torch.allclose(out[:, :, 4:], latent[:, :, 4:], atol=1e-5)
    assert not torch.allclose(out[:, :, :4], latent[:, :, :4], atol=1e-2)


def test_callback_gets_total_steps_and_can_cancel(sd_ms, gaussian):
    seen = []
    sample(gaussian.denoise, torch.zeros(SHAPE), sampler="dpm_2", scheduler="karras", model_sampling=sd_ms, steps=6, seed=1, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(6))
    assert {d["total_steps"] for d in seen} == {6}

    class Stop(Exception):
        pass

    def stop(d):
        raise Stop

    with pytest.raises(Stop):
        sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler", scheduler="karras", model_sampling=sd_ms, steps=6, seed=1, callback=stop)


def test_sampler_options_pass_through(sd_ms, gaussian):
    kw = dict(scheduler="karras", model_sampling=sd_ms, steps=6, seed=1)
    a = sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler_ancestral", **kw)
    b = sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler_ancestral", sampler_options={"eta": 0.0}, **kw)
    c = sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler", **kw)
    assert not torch.allclose(a, b)
    assert torch.allclose(b, c, atol=1e-6)


def test_bad_arguments_raise(sd_ms, gaussian):
    kw = dict(model_sampling=sd_ms, steps=4, seed=1)
    with pytest.raises(ValueError, match="valid samplers"):
        sample(gaussian.denoise, torch.zeros(SHAPE), sampler="dpm_fast", scheduler="normal", **kw)
    with pytest.raises(ValueError, match="valid schedulers"):
        sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler", scheduler="Karras", **kw)
    with pytest.raises(ValueError, match="latent"):
        sample(gaussian.denoise, torch.zeros(4, 8, 8), sampler="euler", scheduler="normal", **kw)
    with pytest.raises(ValueError, match="start_step"):
        sample(gaussian.denoise, torch.zeros(SHAPE), sampler="euler", scheduler="normal", start_step=-1, **kw)


def test_sampling_a_gaussian_end_to_end(sd_ms, gaussian):
    """Latent 0 and the exact denoiser: KSampler output ~ N(0.5, 0.5^2) (2 x 4 x 32 x 32 values)."""
    out = sample(gaussian.denoise, torch.zeros(2, 4, 32, 32), sampler="dpmpp_2m", scheduler="karras", model_sampling=sd_ms, steps=25, seed=12)
    assert float(out.mean()) == pytest.approx(0.5, abs=0.03)
    # sqrt(1 + sigma_max^2) vs the exact marginal sqrt(s^2 + sigma_max^2): 0.07% larger start
    assert float(out.std()) == pytest.approx(0.5 * math.sqrt(1 + 14.6146**2) / math.sqrt(0.25 + 14.6146**2), rel=0.03)
