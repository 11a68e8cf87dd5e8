"""Shared fixtures for the sampling tests: the SD noise schedule and a closed-form Gaussian denoiser."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from darkroom.sampling import ModelSampling


@pytest.fixture(autouse=True, scope="module")
def _modest_threads():
    """Tiny tensors: one thread is plenty and leaves the shared cores to others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sd_ms() -> ModelSampling:
    """SD1.x/SDXL sampling: scaled-linear betas 0.00085..0.012, eps prediction."""
    return ModelSampling()


@dataclass(frozen=True)
class Gaussian:
    """Data ~ N(mu, s^2) per element; its optimal denoiser is linear in x.

    E[x0 | x_sigma] = mu + s^2 / (s^2 + sigma^2) * (x - mu). The probability-flow ODE maps a point
    at sigma0 to mu + (x - mu) * s / sqrt(s^2 + sigma0^2) at sigma 0, so a sample started as
    mu + sqrt(s^2 + sigma0^2) * z must end exactly at mu + s * z.
    """

    mu: float = 0.5
    s: float = 0.5

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sg = sigma.reshape([sigma.shape[0]] + [1] * (x.ndim - 1))
        return self.mu + self.s**2 / (self.s**2 + sg**2) * (x - self.mu)

    def start(self, z: torch.Tensor, sigma0: torch.Tensor | float) -> torch.Tensor:
        """A sample of the exact marginal at sigma0 built from unit noise z."""
        return self.mu + (self.s**2 + float(sigma0) ** 2) ** 0.5 * z

    def ode_end(self, z: torch.Tensor) -> torch.Tensor:
        """Where the exact ODE takes `start(z, sigma0)` at sigma 0."""
        return self.mu + self.s * z


@pytest.fixture(scope="session")
def gaussian() -> Gaussian:
    return Gaussian()


def unit_noise(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 1, 1) standard normal noise from a private generator."""
    return torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def make_noise():
    return unit_noise
