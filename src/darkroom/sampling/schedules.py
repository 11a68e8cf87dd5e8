"""Noise schedules by ComfyUI name: each returns float32 sigmas, descending, ending in 0.

`calculate_sigmas(ms, name, steps)` is ComfyUI's `comfy.samplers.calculate_sigmas`;
`ksampler_sigmas(ms, name, steps, sampler, denoise)` adds what its `KSampler` does on top:
one extra step then dropping the next-to-last sigma for the samplers that want it, and the
img2img rule (denoise d < 1 builds int(steps / d) steps and keeps the last steps + 1 sigmas).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .model_sampling import ModelSampling

#: ComfyUI's scheduler names, in its order.
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

#: Samplers for which KSampler computes steps + 1 sigmas and drops the next-to-last one.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """x with a trailing 0."""
    return torch.cat([x, x.new_zeros([1])])


# --- schedules on (n, sigma_min, sigma_max) ---------------------------------------------------


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): sigma_max^(1/rho) .. sigma_min^(1/rho) linearly, to the power rho."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log-sigma from sigma_max to sigma_min."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return append_zero(sigmas)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log-sigma (A1111 "Polyexponential"; rho 1 is exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas)


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (AYS paper's KL-optimal schedule)."""
    adj_idxs = torch.arange(n, dtype=torch.float).div_(max(n - 1, 1))  # ComfyUI divides by 0 (NaN) for n = 1
    sigmas = adj_idxs.new_zeros(n + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


# --- schedules on the model's sigma table ------------------------------------------------------


def simple_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every len/steps-th table sigma from the top."""
    sigs = []
    ss = len(ms.sigmas) / steps
    for x in range(steps):
        sigs += [float(ms.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def ddim_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Table sigmas at indices 1, 1 + k, 1 + 2k, ... (k = len // steps), reversed, then 0."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    ss = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs += [float(ms.sigmas[x])]
        x += ss
    sigs = sigs[::-1]
    return torch.FloatTensor(sigs)


def normal_scheduler(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps linear from timestep(sigma_max) to timestep(sigma_min), mapped back to sigmas."""
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append:
        sigs += [0.0]
    return torch.FloatTensor(sigs)


def sgm_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """`normal` over steps + 1 points without the last (SDXL-Lightning/Turbo style)."""
    return normal_scheduler(ms, steps, sgm=True)


def beta_scheduler(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Table sigmas at Beta(alpha, beta) quantiles of the timestep range (arXiv 2407.12173), deduplicated."""
    import scipy.stats

    total_timesteps = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total_timesteps)
    sigs = []
    last_t = -1
    for t in ts:
        if t != last_t:
            sigs += [float(ms.sigmas[int(t)])]
        last_t = t
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def linear_quadratic_scheduler(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's linear-then-quadratic schedule in [0, 1], scaled by sigma_max."""
    if steps == 1:
        sigma_schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        sigma_schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(sigma_schedule) * ms.sigma_max.cpu()


def _uses_range(fn: Callable[..., torch.Tensor]) -> Callable[[ModelSampling, int], torch.Tensor]:
    """Adapt an (n, sigma_min, sigma_max) schedule to (model_sampling, steps)."""

    def call(ms: ModelSampling, steps: int) -> torch.Tensor:
        return fn(n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


#: name -> f(model_sampling, steps) -> sigmas.
SCHEDULERS: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": _uses_range(get_sigmas_karras),
    "exponential": _uses_range(get_sigmas_exponential),
    "ddim_uniform": ddim_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": _uses_range(kl_optimal_scheduler),
}


def check_scheduler(name: str) -> str:
    """The name if it is a known scheduler, else ValueError listing them."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid schedulers: {', '.join(SCHEDULER_NAMES)}")
    return name


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return steps


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """Sigmas (steps + 1 values, last 0; ddim_uniform may give more) for a ComfyUI scheduler name."""
    fn = SCHEDULERS[check_scheduler(scheduler)]
    return fn(ms, _check_steps(steps)).float()


def ksampler_sigmas(
    ms: ModelSampling,
    scheduler: str,
    steps: int,
    sampler: str | None = None,
    denoise: float | None = 1.0,
) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler uses: penultimate-sigma rule, then the img2img (denoise < 1) rule."""
    check_scheduler(scheduler)
    _check_steps(steps)

    def full(n: int) -> torch.Tensor:
        discard = sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = calculate_sigmas(ms, scheduler, n + 1 if discard else n)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    new_steps = int(steps / denoise)
    return full(new_steps)[-(steps + 1) :]
