"""Schedules by ComfyUI name: known values, endpoints, the KSampler sigma rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkroom.sampling import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    calculate_sigmas,
    ksampler_sigmas,
)

COMFY_ORDER = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"]


def test_names_in_comfy_order():
    assert list(SCHEDULER_NAMES) == COMFY_ORDER
    assert list(SCHEDULERS) == COMFY_ORDER
    assert DISCARD_PENULTIMATE_SIGMA_SAMPLERS == {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


@pytest.mark.parametrize("name", COMFY_ORDER)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_every_schedule_is_float32_descending_to_zero(sd_ms, name, steps):
    sig = calculate_sigmas(sd_ms, name, steps)
    assert sig.dtype == torch.float32 and sig.ndim == 1
    assert float(sig[-1]) == 0.0
    assert torch.all(sig[:-1] > 0)
    assert torch.all(sig[1:] <= sig[:-1])
    if name == "beta":
        assert len(sig) <= steps + 1  # repeated timesteps are dropped
    elif name == "ddim_uniform":
        assert len(sig) >= steps + 1
    else:
        assert len(sig) == steps + 1
    assert float(sig[0]) <= float(sd_ms.sigma_max) * (1 + 1e-6)


def test_karras_known_values(sd_ms):
    sig = calculate_sigmas(sd_ms, "karras", 10)
    assert float(sig[0]) == pytest.approx(14.614643, abs=1e-6)
    assert float(sig[-2]) == pytest.approx(0.029167, abs=1e-6)
    smin, smax = float(sd_ms.sigma_min), float(sd_ms.sigma_max)
    ramp = np.linspace(0, 1, 10)
    ref = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig[:-1].numpy(), ref, rtol=2e-6)


def test_exponential_is_log_uniform(sd_ms):
    sig = calculate_sigmas(sd_ms, "exponential", 9)[:-1].double()
    ratios = sig[1:] / sig[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-5)
    assert float(sig[0]) == pytest.approx(float(sd_ms.sigma_max), rel=1e-6)
    assert float(sig[-1]) == pytest.approx(float(sd_ms.sigma_min), rel=1e-6)


def test_normal_maps_timesteps_999_to_0(sd_ms):
    sig = calculate_sigmas(sd_ms, "normal", 5)
    ts = torch.linspace(999, 0, 5)
    expected = torch.tensor([float(sd_ms.sigma(t)) for t in ts] + [0.0])
    assert torch.equal(sig, expected)
    assert float(sig[2]) == pytest.approx(math.sqrt(float(sd_ms.sigmas[499]) * float(sd_ms.sigmas[500])), rel=1e-6)
    # 1000 steps visit every table entry
    full = calculate_sigmas(sd_ms, "normal", 1000)
    assert torch.allclose(full[:-1], sd_ms.sigmas.flip(0), rtol=1e-6, atol=0)


def test_sgm_uniform_drops_the_last_of_steps_plus_one(sd_ms):
    sig = calculate_sigmas(sd_ms, "sgm_uniform", 4)
    expected = [float(sd_ms.sigma(t)) for t in torch.linspace(999, 0, 5)[:-1]] + [0.0]
    assert sig.tolist() == pytest.approx(expected, rel=1e-7)
    assert float(sig[-2]) == pytest.approx(float(sd_ms.sigma(torch.tensor(249.75))), rel=1e-6)


def test_simple_takes_every_kth_table_sigma(sd_ms):
    sig = calculate_sigmas(sd_ms, "simple", 4)
    assert sig.tolist() == [float(sd_ms.sigmas[i]) for i in (999, 749, 499, 249)] + [0.0]


def test_ddim_uniform_matches_diffusers_ddim_timesteps(sd_ms):
    sig = calculate_sigmas(sd_ms, "ddim_uniform", 10)
    assert sig.tolist() == [float(sd_ms.sigmas[i]) for i in range(901, 0, -100)] + [0.0]
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == list(range(901, 0, -100))
    # ComfyUI quirk kept: when 1000 is not a multiple of steps, stride 1000 // steps gives extra steps
    assert len(calculate_sigmas(sd_ms, "ddim_uniform", 30)) == 32


def test_beta_schedule_values(sd_ms):
    import scipy.stats

    sig = calculate_sigmas(sd_ms, "beta", 10)
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, 10, endpoint=False), 0.6, 0.6) * 999)
    assert sig[:-1].tolist() == [float(sd_ms.sigmas[int(t)]) for t in ts]
    assert float(sig[0]) == float(sd_ms.sigma_max)


def test_kl_optimal_and_linear_quadratic(sd_ms):
    kl = calculate_sigmas(sd_ms, "kl_optimal", 6).double()
    angles = torch.atan(kl[:-1])
    steps = angles[:-1] - angles[1:]
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)
    assert float(kl[0]) == pytest.approx(float(sd_ms.sigma_max), rel=1e-5)
    assert float(kl[-2]) == pytest.approx(float(sd_ms.sigma_min), rel=1e-5)
    assert calculate_sigmas(sd_ms, "kl_optimal", 1).tolist() == pytest.approx([float(sd_ms.sigma_max), 0.0], rel=1e-5)
    lq = calculate_sigmas(sd_ms, "linear_quadratic", 10)
    assert float(lq[0]) == pytest.approx(float(sd_ms.sigma_max))
    # first half linear: equal decrements of sigma_max * 0.025 / 5
    d = (lq[:-1][:6] - lq[:-1][1:7])[:5]
    assert torch.allclose(d, torch.full_like(d, float(sd_ms.sigma_max) * 0.005), rtol=1e-4)


def test_bad_scheduler_or_steps_raise(sd_ms):
    with pytest.raises(ValueError, match="valid schedulers: simple, sgm_uniform"):
        calculate_sigmas(sd_ms, "linear", 10)
    with pytest.raises(ValueError, match="at least 1"):
        calculate_sigmas(sd_ms, "karras", 0)
    with pytest.raises(TypeError):
        calculate_sigmas(sd_ms, "karras", 2.5)


def test_ksampler_discards_penultimate_sigma_for_dpm2_and_unipc(sd_ms):
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        sig = ksampler_sigmas(sd_ms, "karras", 10, sampler)
        ref = calculate_sigmas(sd_ms, "karras", 11)
        assert len(sig) == 11
        assert torch.equal(sig, torch.cat([ref[:-2], ref[-1:]]))
    assert torch.equal(ksampler_sigmas(sd_ms, "karras", 10, "euler"), calculate_sigmas(sd_ms, "karras", 10))


def test_img2img_denoise_rule(sd_ms):
    sig = ksampler_sigmas(sd_ms, "normal", 10, "euler", denoise=0.5)
    assert torch.equal(sig, calculate_sigmas(sd_ms, "normal", 20)[-11:])
    sig = ksampler_sigmas(sd_ms, "karras", 4, "euler", denoise=0.3)  # int(4 / 0.3) = 13
    assert torch.equal(sig, calculate_sigmas(sd_ms, "karras", 13)[-5:])
    assert float(sig[0]) < float(sd_ms.sigma_max)
    assert ksampler_sigmas(sd_ms, "normal", 10, "euler", denoise=0.0).numel() == 0
    assert torch.equal(ksampler_sigmas(sd_ms, "normal", 10, "euler", denoise=0.99995), calculate_sigmas(sd_ms, "normal", 10))
    # both rules together: dpm_2 at denoise 0.5 = last 11 of the 20-step discarded schedule
    dis = ksampler_sigmas(sd_ms, "karras", 10, "dpm_2", denoise=0.5)
    assert torch.equal(dis, ksampler_sigmas(sd_ms, "karras", 20, "dpm_2")[-11:])
