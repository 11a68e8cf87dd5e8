"""The discrete noise schedule of an SD model in k-diffusion form (ComfyUI `ModelSamplingDiscrete` + EPS/V).

A sample at noise level sigma is `x = x0 + sigma * eps` ("k-diffusion space"). The UNet sees
`x / sqrt(sigma^2 + 1)` (the DDPM/VP sample) and an integer timestep, and predicts eps or v.
The engine's denoiser is, for every sampler here:

    x_in = ms.calculate_input(sigma, x)                 # (B, C, H, W)
    t = ms.timestep(sigma).float()                      # (B,) nearest training timestep
    out = unet(x_in, t, cond)                           # eps or v
    x0 = ms.calculate_denoised(sigma, out, x)           # (B, C, H, W)

The 1000-entry sigma table is built exactly as ComfyUI does: betas and their cumulative product
in float64, `sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)`, then stored as float32 (and the
log table is the float64 log cast to float32).
"""

from __future__ import annotations

import math

import torch

from darkroom.models.bundle import BetaSchedule

PREDICTIONS = ("eps", "v")

#: percent_to_sigma's value for "before the first step" (ComfyUI uses the same sentinel).
SIGMA_INFINITY = 999999999.9


def make_betas(schedule: BetaSchedule) -> torch.Tensor:
    """Training betas in float64 for a diffusers-style schedule name (LDM `make_beta_schedule`)."""
    n = int(schedule.num_train_timesteps)
    if n < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {n}")
    name = schedule.beta_schedule
    start, end = float(schedule.beta_start), float(schedule.beta_end)
    if name == "scaled_linear":  # LDM "linear": linear in sqrt(beta)
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if name == "linear":  # LDM "sqrt_linear": linear in beta
        return torch.linspace(start, end, n, dtype=torch.float64)
    if name == "squaredcos_cap_v2":  # improved-DDPM cosine, max beta 0.999
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(
        f"unsupported beta_schedule {name!r}; expected one of 'scaled_linear', 'linear', 'squaredcos_cap_v2'"
    )


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Rescale a sigma table so the last timestep has (almost) zero SNR (ComfyUI `zsnr`)."""
    alphas_cumprod = 1 / ((sigmas * sigmas) + 1)
    sqrt_ac = alphas_cumprod.sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac -= last
    sqrt_ac *= first / (first - last)
    ac = sqrt_ac**2
    ac[-1] = 4.8973451890853435e-08
    return ((1 - ac) / ac) ** 0.5


def _reshape_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A scalar sigma becomes 0-dim; a per-sample sigma (B,) becomes (B, 1, ..., 1)."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class ModelSampling:
    """Sigma table and eps/v parameterisation of a discrete-time SD model (immutable after construction)."""

    sigma_data = 1.0

    def __init__(
        self,
        schedule: BetaSchedule | None = None,
        prediction: str = "eps",
        *,
        zsnr: bool = False,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.schedule = schedule if schedule is not None else BetaSchedule()
        self.prediction = prediction
        self.zsnr = bool(zsnr)
        betas = make_betas(self.schedule)  # float64
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # float64
        if self.zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.sigmas = sigmas.float()  # (1000,) ascending
        self.log_sigmas = sigmas.log().float()  # (1000,)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, prediction: str = "eps") -> "ModelSampling":
        """A ModelSampling over an explicit ascending sigma table (tests, exotic schedules)."""
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError("sigmas must be a 1-D table with at least 2 entries")
        ms = cls.__new__(cls)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        ms.schedule = None
        ms.prediction = prediction
        ms.zsnr = False
        ms.sigmas = sigmas.float()
        ms.log_sigmas = sigmas.double().log().float()
        return ms

    def __repr__(self) -> str:
        return (
            f"ModelSampling(prediction={self.prediction!r}, sigma_min={float(self.sigma_min):.6f}, "
            f"sigma_max={float(self.sigma_max):.6f}, n={len(self.sigmas)})"
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> torch.Tensor:
        """Smallest table sigma (0-dim float32 tensor; 0.029168 for SD)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        """Largest table sigma (0-dim float32 tensor; 14.614642 for SD)."""
        return self.sigmas[-1]

    # --- sigma <-> timestep -------------------------------------------------------------------

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest log-sigma in the table (int64, same shape and device as sigma)."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep by linear interpolation of log-sigma."""
        timestep = torch.as_tensor(timestep)
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 -> above sigma_max, 1 -> 0)."""
        if percent <= 0.0:
            return SIGMA_INFINITY
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return self.sigma(torch.tensor(percent * 999.0)).item()

    # --- model input / output -----------------------------------------------------------------

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The UNet input: x / sqrt(sigma^2 + sigma_data^2)."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        """x0 from the UNet's eps or v prediction; model_input is the unscaled x."""
        sigma = _reshape_sigma(sigma, model_output.ndim)
        if self.prediction == "eps":
            return model_input - model_output * sigma
        sd = self.sigma_data
        return model_input * sd**2 / (sigma**2 + sd**2) - model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5

    def noise_scaling(
        self,
        sigma: torch.Tensor,
        noise: torch.Tensor,
        latent_image: torch.Tensor,
        max_denoise: bool = False,
    ) -> torch.Tensor:
        """Starting sample: noise * sqrt(1 + sigma^2) when starting at sigma_max, else noise * sigma; plus latent."""
        sigma = _reshape_sigma(torch.as_tensor(sigma), noise.ndim)
        if max_denoise:
            out = noise * torch.sqrt(1.0 + sigma**2.0)
        else:
            out = noise * sigma
        out += latent_image
        return out

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of noise_scaling on the final sample (identity for eps/v models)."""
        return latent

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        """ComfyUI's max_denoise test: the first sigma is sigma_max (rel. 1e-5) or above it."""
        max_sigma = float(self.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma
