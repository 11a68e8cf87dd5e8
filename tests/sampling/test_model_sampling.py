"""ModelSampling: the SD sigma table, sigma <-> timestep, and the eps/v parameterisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkroom.models.bundle import BetaSchedule
from darkroom.sampling import ModelSampling


def test_sigma_table_matches_independent_float64_computation(sd_ms):
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    ref = np.sqrt((1 - ac) / ac)
    assert sd_ms.sigmas.dtype == torch.float32 and sd_ms.sigmas.shape == (1000,)
    np.testing.assert_allclose(sd_ms.sigmas.numpy(), ref.astype(np.float32), rtol=2e-7)
    np.testing.assert_allclose(sd_ms.log_sigmas.numpy(), np.log(ref).astype(np.float32), rtol=2e-7, atol=1e-7)
    assert float(sd_ms.sigma_min) == pytest.approx(0.0291675, abs=1e-6)
    assert float(sd_ms.sigma_max) == pytest.approx(14.614642, abs=2e-5)


def test_sigma_table_matches_diffusers_alphas_cumprod(sd_ms):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ac = sched.alphas_cumprod.double()  # diffusers accumulates in float32
    np.testing.assert_allclose(sd_ms.sigmas.numpy(), (((1 - ac) / ac) ** 0.5).numpy(), rtol=2e-5)


def test_linear_beta_schedule_is_diffusers_linear():
    ms = ModelSampling(BetaSchedule(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"))
    betas = np.linspace(0.0001, 0.02, 1000)
    ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(ms.sigmas.numpy(), np.sqrt((1 - ac) / ac), rtol=1e-6)


def test_bad_construction_arguments_raise():
    with pytest.raises(ValueError, match="prediction"):
        ModelSampling(prediction="x0")
    with pytest.raises(ValueError, match="beta_schedule"):
        ModelSampling(BetaSchedule(beta_schedule="quadratic"))


def test_timestep_is_nearest_log_sigma_index(sd_ms):
    idx = torch.arange(1000)
    assert torch.equal(sd_ms.timestep(sd_ms.sigmas), idx)
    # just below / above the log-midpoint between two entries
    lo, hi = sd_ms.log_sigmas[500].double(), sd_ms.log_sigmas[501].double()
    mid = (lo + hi) / 2
    below = torch.tensor([math.exp(mid - 1e-4), math.exp(mid + 1e-4)], dtype=torch.float32)
    assert sd_ms.timestep(below).tolist() == [500, 501]
    # karras values land on integers; out-of-range values clamp to the ends
    out = sd_ms.timestep(torch.tensor([[100.0, 1e-4]]))
    assert out.shape == (1, 2) and out.dtype == torch.int64 and out.tolist() == [[999, 0]]


def test_sigma_interpolates_log_sigma_and_clamps(sd_ms):
    # exp(float32 log table) is the table up to float32 rounding (as in ComfyUI)
    assert torch.allclose(sd_ms.sigma(torch.arange(1000)), sd_ms.sigmas, rtol=1e-6, atol=0)
    half = sd_ms.sigma(torch.tensor(10.5))
    geo = math.sqrt(float(sd_ms.sigmas[10]) * float(sd_ms.sigmas[11]))
    assert float(half) == pytest.approx(geo, rel=1e-6)
    assert float(sd_ms.sigma(torch.tensor(2000.0))) == pytest.approx(float(sd_ms.sigma_max), rel=1e-6)
    assert float(sd_ms.sigma(torch.tensor(-5.0))) == pytest.approx(float(sd_ms.sigma_min), rel=1e-6)


def test_percent_to_sigma(sd_ms):
    assert sd_ms.percent_to_sigma(0.0) == 999999999.9
    assert sd_ms.percent_to_sigma(1.0) == 0.0
    assert sd_ms.percent_to_sigma(0.5) == pytest.approx(float(sd_ms.sigma(torch.tensor(499.5))), rel=1e-6)
    assert sd_ms.percent_to_sigma(0.25) > sd_ms.percent_to_sigma(0.75)


def test_calculate_input_scales_per_sample(sd_ms):
    x = torch.ones(2, 4, 3, 3)
    sigma = torch.tensor([0.0, 3.0])
    out = sd_ms.calculate_input(sigma, x)
    assert torch.allclose(out[0], torch.ones(4, 3, 3))
    assert torch.allclose(out[1], torch.full((4, 3, 3), 1 / math.sqrt(10.0)))


def test_eps_and_v_denoised_recover_x0():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g)
    eps = torch.randn(3, 4, 5, 5, generator=g)
    sigma = torch.tensor([0.1, 1.0, 14.0])
    sg = sigma.view(3, 1, 1, 1)
    x = x0 + sg * eps  # k-diffusion sample
    eps_ms, v_ms = ModelSampling(prediction="eps"), ModelSampling(prediction="v")
    assert torch.allclose(eps_ms.calculate_denoised(sigma, eps, x), x0, atol=1e-5)
    # v target in VP terms: v = alpha * eps - sigma_vp * x0 with alpha = 1/sqrt(1+s^2), sigma_vp = s * alpha
    alpha = 1 / (1 + sg**2) ** 0.5
    v = alpha * eps - sg * alpha * x0
    assert torch.allclose(v_ms.calculate_denoised(sigma, v, x), x0, atol=1e-5)


def test_noise_scaling_and_max_denoise(sd_ms):
    noise = torch.ones(1, 4, 2, 2)
    latent = torch.full((1, 4, 2, 2), 0.25)
    s = torch.tensor(3.0)
    assert torch.allclose(sd_ms.noise_scaling(s, noise, latent, max_denoise=True), torch.full_like(noise, math.sqrt(10) + 0.25))
    assert torch.allclose(sd_ms.noise_scaling(s, noise, latent), torch.full_like(noise, 3.25))
    assert torch.equal(noise, torch.ones(1, 4, 2, 2)), "noise_scaling must not modify its input"
    assert sd_ms.inverse_noise_scaling(s, latent) is latent
    assert sd_ms.is_max_denoise(torch.tensor([float(sd_ms.sigma_max) * (1 + 5e-6), 0.0]))
    assert sd_ms.is_max_denoise(torch.tensor([20.0, 0.0]))
    assert not sd_ms.is_max_denoise(torch.tensor([14.0, 0.0]))


def test_engine_recipe_with_v_model_matches_diffusers_euler(gaussian):
    """The module docstring's recipe (calculate_input -> model -> calculate_denoised) with a v-model
    gives diffusers' EulerDiscrete(prediction_type='v_prediction') trajectory."""
    from diffusers import EulerDiscreteScheduler

    from darkroom.sampling import SAMPLERS

    ms_v = ModelSampling(prediction="v")

    def v_model(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # the optimal v for Gaussian data
        sg = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma
        x_k = x_in * (1 + sg**2) ** 0.5
        x0 = gaussian.denoise(x_k, sigma.reshape(-1) if sigma.ndim else sigma.reshape(1))
        eps = (x_k - x0) / sg
        return (eps - sg * x0) / (1 + sg**2) ** 0.5

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return ms_v.calculate_denoised(sigma, v_model(ms_v.calculate_input(sigma, x), sigma), x)

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    sched.set_timesteps(8)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    x = z * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        x = sched.step(v_model(x_in, sched.sigmas[sched.step_index]), t, x).prev_sample
    ours = SAMPLERS["euler"](denoise, z * sched.sigmas[0], sched.sigmas)
    assert torch.allclose(ours, x, atol=2e-5)


def test_zero_terminal_snr_and_cosine_tables():
    base, z = ModelSampling(), ModelSampling(zsnr=True)
    assert float(z.sigma_min) == pytest.approx(float(base.sigma_min), rel=1e-4)  # first alpha kept
    assert float(z.sigma_max) == pytest.approx(math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel=1e-5)
    cos = ModelSampling(BetaSchedule(beta_schedule="squaredcos_cap_v2"))
    assert torch.all(cos.sigmas[1:] > cos.sigmas[:-1]) and torch.isfinite(cos.sigmas).all()


def test_from_sigmas_table(sd_ms):
    ms = ModelSampling.from_sigmas(sd_ms.sigmas.double(), prediction="v")
    assert torch.equal(ms.sigmas, sd_ms.sigmas) and ms.prediction == "v"
    assert torch.equal(ms.timestep(sd_ms.sigmas[[3, 700]]), torch.tensor([3, 700]))
    with pytest.raises(ValueError):
        ModelSampling.from_sigmas(torch.tensor([1.0]))
