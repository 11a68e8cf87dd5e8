"""Noise as ComfyUI draws it: initial latent noise, per-step ancestral noise, Brownian-tree SDE noise.

- Initial noise (`prepare_noise`): a CPU generator seeded with the seed, one `randn` of the whole
  batch shape in float32 (ComfyUI seeds the *global* generator with `torch.manual_seed`; a fresh
  `torch.Generator` seeded the same way yields the same numbers without touching global state).
- Ancestral noise (`default_noise_sampler`): a fresh generator on the sample's device seeded with
  the same seed, so on the CPU the first ancestral draw equals the initial noise (ComfyUI 0.3.x;
  later ComfyUI, PR #11528, seeds CPU ancestral noise with seed + 1 instead).
- SDE noise (`BrownianTreeNoiseSampler`): one `torchsde.BrownianTree` per seed, built on the CPU
  over [sigma_min, sigma_max] of the schedule, increments normalised by sqrt(|t1 - t0|).
A noise sampler is a callable `(sigma, sigma_next) -> Tensor` shaped like the sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_seed(seed: int) -> int:
    """Seeds are non-negative integers below 2**64 (torch's generator range)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator in the state `torch.manual_seed(seed)` would leave the global one."""
    return torch.Generator(device="cpu").manual_seed(_check_seed(seed))


def prepare_noise(
    shape: Sequence[int],
    seed: int,
    batch_index: Sequence[int] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Initial latent noise on the CPU, identical to ComfyUI's `comfy.sample.prepare_noise`.

    Without batch_index: one randn of the full shape (B, C, H, W). With batch_index (a latent's
    "batch_index" list): per-image draws of (1, C, H, W) in order 0..max(index), picking those listed.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"noise shape must have at least 2 positive dimensions, got {shape}")
    generator = cpu_generator(seed)
    if batch_index is None:
        return torch.randn(shape, dtype=dtype, generator=generator, device="cpu")
    inds = [int(i) for i in batch_index]
    if not inds or min(inds) < 0:
        raise ValueError(f"batch_index must be a non-empty list of non-negative ints, got {list(batch_index)}")
    unique = sorted(set(inds))
    drawn: dict[int, torch.Tensor] = {}
    for i in range(unique[-1] + 1):
        n = torch.randn((1,) + shape[1:], dtype=dtype, generator=generator, device="cpu")
        if i in unique:
            drawn[i] = n
    return torch.cat([drawn[i] for i in inds], dim=0)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Per-step Gaussian noise from a generator on x's device seeded with `seed` (global RNG if None)."""
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(_check_seed(seed))
    else:
        generator = None

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BatchedBrownianTree:
    """torchsde.BrownianTree(s) over [t0, t1] returning W(t_b) - W(t_a) for any a, b in the interval."""

    def __init__(
        self,
        x: torch.Tensor,
        t0: torch.Tensor,
        t1: torch.Tensor,
        seed: int | Sequence[int] | None = None,
        *,
        cpu: bool = True,
    ) -> None:
        import torchsde  # local: keeps `import darkroom.sampling` light

        self.cpu_tree = cpu
        t0, t1, self.sign = self._sort(torch.as_tensor(t0), torch.as_tensor(t1))
        w0 = torch.zeros_like(x)
        self.batched = False
        if seed is None:
            seeds: tuple[int, ...] = (int(torch.randint(0, 2**63 - 1, ()).item()),)
        elif isinstance(seed, (tuple, list)):
            if len(seed) != x.shape[0]:
                raise ValueError("a list of seeds needs one seed per batch item")
            seeds = tuple(_check_seed(s) for s in seed)
            self.batched = True
            w0 = w0[0]
        else:
            seeds = (_check_seed(seed),)
        if self.cpu_tree:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.trees = tuple(torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds)

    @staticmethod
    def _sort(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = self._sort(torch.as_tensor(t0), torch.as_tensor(t1))
        device, dtype = t0.device, t0.dtype
        if self.cpu_tree:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        with warnings.catch_warnings():
            # torchsde warns when a float32 query end rounds just outside the tree's float ends; harmless.
            warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)
            w = torch.stack([tree(t0, t1) for tree in self.trees]).to(device=device, dtype=dtype) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """Unit-variance SDE noise from a Brownian tree: (W(s_next) - W(s)) / sqrt(|s_next - s|)."""

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: torch.Tensor | float,
        sigma_max: torch.Tensor | float,
        seed: int | Sequence[int] | None = None,
        *,
        cpu: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> None:
        self.transform = transform
        t0 = self.transform(torch.as_tensor(sigma_min))
        t1 = self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, *, cpu: bool = True) -> BrownianTreeNoiseSampler:
    """The SDE samplers' default: a tree over [min positive sigma, max sigma] of the schedule."""
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=cpu)


def reshape_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A (B|1, H', W') or (B, 1, H', W') mask resized bilinearly to the latent shape (B, C, H, W), as ComfyUI."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"latent shape must be (B, C, H, W), got {shape}")
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dimensions (H, W), got shape {tuple(mask.shape)}")
    m = mask.float().reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    m = torch.nn.functional.interpolate(m, size=shape[2:], mode="bilinear")
    if m.shape[1] < shape[1]:
        m = m.repeat((1, shape[1], 1, 1))[:, : shape[1]]
    b = shape[0]
    if m.shape[0] > b:
        m = m[:b]
    elif m.shape[0] < b:
        reps = -(-b // m.shape[0])
        m = m.repeat((reps, 1, 1, 1))[:b]
    return m
