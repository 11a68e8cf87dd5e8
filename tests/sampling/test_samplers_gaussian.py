"""Samplers against the exact denoiser of Gaussian data (see conftest.Gaussian).

ODE samplers are checked per sample against the closed-form ODE solution, with a bound on the
discretisation error at 20 Karras steps and the error's decay from 10 to 20 steps (the method's
order: ~2x for first order, >3x for second order). Bounds are ~1.3-1.5x the errors measured when
the samplers were written; a wrong coefficient gives errors of 0.1-1 and order ~1.

Stochastic samplers are checked in distribution: the output mean and standard deviation of
N(0.5, 0.5^2) data from many samples. Euler-ancestral/DDPM and LCM are linear in (x, noise) for
this denoiser, so their exact output variance is computed by an independent scalar recursion.
"""

from __future__ import annotations

import math

import pytest
import torch

from darkroom.sampling import SAMPLER_NAMES, SAMPLERS, STOCHASTIC_SAMPLERS, ksampler_sigmas

# name: (max abs error at 20 karras steps, minimum err(10) / err(20))
ODE_BOUNDS = {
    "euler": (0.23, 1.8),
    "ddim": (0.23, 1.8),
    "heun": (0.035, 4.0),
    "dpm_2": (0.009, 4.5),
    "lms": (0.025, 5.0),
    "dpmpp_2m": (0.035, 3.2),
    "ipndm": (0.01, 5.0),
    "uni_pc": (0.01, 12.0),
    "uni_pc_bh2": (0.012, 8.0),
}

# The SDE/ancestral samplers with eta = 0 are ODE solvers too.
ETA0_BOUNDS = {
    "dpmpp_2m_sde": (0.035, 3.2),
    "dpmpp_2m_sde_heun": (0.055, 3.5),
    "dpmpp_3m_sde": (0.0015, 30.0),
    "dpmpp_sde": (0.025, 2.8),
    "dpmpp_2s_ancestral": (0.025, 2.8),
    "dpm_2_ancestral": (0.009, 4.5),
    "euler_ancestral": (0.23, 1.8),
}


def _ode_error(name, sd_ms, gaussian, z, steps, **options):
    sig = ksampler_sigmas(sd_ms, "karras", steps, name)
    out = SAMPLERS[name](gaussian.denoise, gaussian.start(z, sig[0]), sig, **options)
    return float((out - gaussian.ode_end(z)).abs().max())


def test_every_sampler_is_classified():
    assert set(ODE_BOUNDS) | set(STOCHASTIC_SAMPLERS) | {n for n in SAMPLER_NAMES if n.endswith("_gpu")} >= set(SAMPLER_NAMES)


@pytest.mark.parametrize("name", sorted(ODE_BOUNDS))
def test_ode_sampler_solves_the_probability_flow_ode(name, sd_ms, gaussian, make_noise):
    z = make_noise(2048)
    bound, min_ratio = ODE_BOUNDS[name]
    e10, e20 = _ode_error(name, sd_ms, gaussian, z, 10), _ode_error(name, sd_ms, gaussian, z, 20)
    assert e20 < bound
    assert e10 / e20 > min_ratio
    if name in ("euler", "ddim"):
        assert e10 / e20 < 2.3  # first order, not better


@pytest.mark.parametrize("name", sorted(ETA0_BOUNDS))
def test_stochastic_samplers_with_eta_zero_are_ode_solvers(name, sd_ms, gaussian, make_noise):
    z = make_noise(2048)
    bound, min_ratio = ETA0_BOUNDS[name]
    e10 = _ode_error(name, sd_ms, gaussian, z, 10, eta=0.0, seed=1)
    e20 = _ode_error(name, sd_ms, gaussian, z, 20, eta=0.0, seed=1)
    assert e20 < bound
    assert e10 / e20 > min_ratio


@pytest.mark.parametrize(
    "name",
    ["dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"],
)
def test_stochastic_sampler_output_distribution(name, sd_ms, gaussian, make_noise):
    """8192 samples, 40 Karras steps: mean within 0.03 of 0.5 (SE 0.0055) and std within 3.5% of 0.5
    (SE 0.8%; the SDE discretisation bias at 40 steps is under 1.5%)."""
    z = make_noise(8192, seed=1)
    sig = ksampler_sigmas(sd_ms, "karras", 40, name)
    out = SAMPLERS[name](gaussian.denoise, gaussian.start(z, sig[0]), sig, seed=5)
    assert float(out.mean()) == pytest.approx(gaussian.mu, abs=0.03)
    assert float(out.std()) == pytest.approx(gaussian.s, rel=0.035)
    # the noise really is fresh: the output is not the deterministic ODE image of the start
    assert float((out - gaussian.ode_end(z)).abs().mean()) > 0.1


def _euler_ancestral_variance(sigmas, s):
    """Exact Var(x_final) of Euler-ancestral with the linear denoiser, computed on scalars."""
    var = s**2 + sigmas[0] ** 2
    for sig, nxt in zip(sigmas[:-1], sigmas[1:]):
        c = s**2 / (s**2 + sig**2)
        up = min(nxt, math.sqrt(nxt**2 * (sig**2 - nxt**2) / sig**2))
        down = math.sqrt(nxt**2 - up**2)
        a = c if down == 0 else 1 + (1 - c) / sig * (down - sig)
        var = a * a * var + up * up
    return var


def _lcm_variance(sigmas, s):
    var = s**2 + sigmas[0] ** 2
    for sig, nxt in zip(sigmas[:-1], sigmas[1:]):
        c = s**2 / (s**2 + sig**2)
        var = c * c * var + nxt**2
    return var


@pytest.mark.parametrize(
    ("name", "reference"),
    [("euler_ancestral", _euler_ancestral_variance), ("ddpm", _euler_ancestral_variance), ("lcm", _lcm_variance)],
)
def test_linear_stochastic_samplers_match_exact_variance(name, reference, sd_ms, gaussian, make_noise):
    """65536 samples: relative SE of the variance is 0.55%, tolerance 2.5%. DDPM's posterior step
    equals Euler-ancestral's in k-diffusion space, so both share the reference."""
    z = make_noise(65536, seed=2)
    sig = ksampler_sigmas(sd_ms, "karras", 12, name)
    out = SAMPLERS[name](gaussian.denoise, gaussian.start(z, sig[0]), sig, seed=9)
    expected = reference([float(v) for v in sig], gaussian.s)
    assert float(out.var()) == pytest.approx(expected, rel=0.025)
    assert float(out.mean()) == pytest.approx(gaussian.mu, abs=0.01)
    if name != "lcm":
        assert expected < gaussian.s**2 * 0.95  # the known variance deficit at 12 steps is really tested


def test_ddpm_equals_euler_ancestral_per_sample(sd_ms, gaussian, make_noise):
    z = make_noise(1024)
    sig = ksampler_sigmas(sd_ms, "normal", 15, "ddpm")
    x = gaussian.start(z, sig[0])
    a = SAMPLERS["euler_ancestral"](gaussian.denoise, x, sig, seed=4)
    b = SAMPLERS["ddpm"](gaussian.denoise, x, sig, seed=4)
    assert torch.allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_callback_seed_and_batch_contract(name, sd_ms, gaussian):
    sig = ksampler_sigmas(sd_ms, "karras", 6, name)
    x = gaussian.start(torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)), sig[0])
    seen = []
    calls = []

    def denoise(xx, sigma):
        assert sigma.shape == (3,) and sigma.dtype == torch.float32
        assert torch.all(sigma == sigma[0])
        calls.append(float(sigma[0]))
        return gaussian.denoise(xx, sigma)

    out = SAMPLERS[name](denoise, x, sig, seed=1, callback=seen.append)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [d["i"] for d in seen] == list(range(len(sig) - 1))
    assert [float(d["sigma"]) for d in seen] == pytest.approx(sig[:-1].tolist())
    assert all(d["x"].shape == x.shape and d["denoised"].shape == x.shape for d in seen)
    assert calls[0] == pytest.approx(float(sig[0]))
    again = SAMPLERS[name](gaussian.denoise, x, sig, seed=1)
    assert torch.equal(out, again), "same seed, same result"
    other = SAMPLERS[name](gaussian.denoise, x, sig, seed=2)
    assert torch.equal(out, other) == (name not in STOCHASTIC_SAMPLERS)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m_sde", "uni_pc"])
def test_raising_from_the_callback_cancels(name, sd_ms, gaussian):
    class Cancelled(Exception):
        pass

    sig = ksampler_sigmas(sd_ms, "karras", 8, name)
    steps = []

    def cb(d):
        steps.append(d["i"])
        if d["i"] == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        SAMPLERS[name](gaussian.denoise, gaussian.start(torch.zeros(1, 1, 2, 2), sig[0]), sig, seed=0, callback=cb)
    assert steps == [0, 1, 2]


def test_churn_adds_noise_only_when_asked(sd_ms, gaussian, make_noise):
    z = make_noise(512)
    sig = ksampler_sigmas(sd_ms, "karras", 10, "euler")
    x = gaussian.start(z, sig[0])
    plain = SAMPLERS["euler"](gaussian.denoise, x, sig, seed=3)
    churned = SAMPLERS["euler"](gaussian.denoise, x, sig, seed=3, s_churn=1.0)
    again = SAMPLERS["euler"](gaussian.denoise, x, sig, seed=3, s_churn=1.0)
    assert not torch.allclose(plain, churned)
    assert torch.equal(churned, again)
