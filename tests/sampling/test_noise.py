"""Noise conventions: initial noise, ancestral noise, Brownian-tree SDE noise, mask reshaping."""

from __future__ import annotations

import pytest
import torch

from darkroom.sampling import (
    BrownianTreeNoiseSampler,
    brownian_noise_sampler,
    default_noise_sampler,
    prepare_noise,
    reshape_mask,
)


def test_prepare_noise_equals_manual_seed_then_randn():
    shape = (2, 4, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        ref = torch.randn(shape)
    out = prepare_noise(shape, 123)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, ref)


def test_prepare_noise_leaves_global_rng_alone():
    with torch.random.fork_rng():
        torch.manual_seed(5)
        state = torch.get_rng_state()
        prepare_noise((1, 4, 8, 8), 99)
        assert torch.equal(torch.get_rng_state(), state)


def test_batch_is_one_draw_of_the_full_shape():
    full = prepare_noise((3, 4, 8, 8), 7)
    assert torch.equal(full[:1], prepare_noise((1, 4, 8, 8), 7))
    assert not torch.equal(full[1], full[0])
    flat = torch.randn(3 * 4 * 8 * 8, generator=torch.Generator().manual_seed(7)).view(3, 4, 8, 8)
    assert torch.equal(full, flat)


def test_batch_index_picks_per_image_draws():
    gen = torch.Generator().manual_seed(11)
    per_image = [torch.randn((1, 4, 4, 4), generator=gen) for _ in range(4)]
    out = prepare_noise((3, 4, 4, 4), 11, batch_index=[3, 0, 3])
    assert torch.equal(out, torch.cat([per_image[3], per_image[0], per_image[3]]))
    with pytest.raises(ValueError):
        prepare_noise((1, 4, 4, 4), 11, batch_index=[-1])


def test_seed_determinism_and_validation():
    assert torch.equal(prepare_noise((1, 4, 8, 8), 42), prepare_noise((1, 4, 8, 8), 42))
    assert not torch.equal(prepare_noise((1, 4, 8, 8), 42), prepare_noise((1, 4, 8, 8), 43))
    prepare_noise((1, 1, 2, 2), 2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        prepare_noise((1, 4, 8, 8), -1)
    with pytest.raises(TypeError, match="seed"):
        prepare_noise((1, 4, 8, 8), "42")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        prepare_noise((0, 4, 8, 8), 1)


def test_ancestral_noise_restarts_from_the_seed():
    """ComfyUI 0.3.x: a fresh generator seeded with the same seed, so on the CPU the first
    ancestral draw equals the initial noise."""
    x = torch.zeros(2, 4, 8, 8)
    ns = default_noise_sampler(x, seed=77)
    first, second = ns(torch.tensor(1.0), torch.tensor(0.5)), ns(torch.tensor(0.5), torch.tensor(0.2))
    assert torch.equal(first, prepare_noise(x.shape, 77))
    assert not torch.equal(first, second)
    assert torch.equal(default_noise_sampler(x, seed=77)(None, None), first)  # type: ignore[arg-type]


def test_brownian_tree_noise_is_deterministic_and_unit_variance():
    x = torch.zeros(8192, 1, 1, 1)
    sig = torch.tensor([14.6, 5.0, 1.0, 0.1, 0.0])
    a = brownian_noise_sampler(x, sig, seed=3)
    b = brownian_noise_sampler(x, sig, seed=3)
    c = brownian_noise_sampler(x, sig, seed=4)
    n1 = a(sig[0], sig[1])
    assert torch.equal(n1, b(sig[0], sig[1]))
    assert not torch.equal(n1, c(sig[0], sig[1]))
    # normalised increments: mean 0, std 1 (SE of std ~ 1/sqrt(2 * 8192) = 0.8%)
    assert abs(float(n1.mean())) < 0.05
    assert float(n1.std()) == pytest.approx(1.0, abs=0.04)
    # increments over disjoint intervals are independent
    n2 = a(sig[1], sig[2])
    corr = float((n1 * n2).mean())
    assert abs(corr) < 0.05
    # a Brownian path: the increment over [1, 14.6] is the sum of its parts (unnormalised)
    w = lambda s0, s1: a(torch.tensor(s0), torch.tensor(s1)) * abs(s1 - s0) ** 0.5  # noqa: E731
    assert torch.allclose(w(14.6, 1.0), w(14.6, 5.0) + w(5.0, 1.0), atol=1e-4)
    # reversing the interval flips the sign
    assert torch.allclose(a(sig[2], sig[1]), -a(sig[1], sig[2]))


@pytest.mark.filterwarnings("ignore:Should have t")
def test_brownian_tree_matches_diffusers_copy_of_k_diffusion():
    """diffusers ships k-diffusion's BrownianTreeNoiseSampler; with the same seed it must agree."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler as Reference

    x = torch.zeros(2, 4, 8, 8)
    ours = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=21)
    ref = Reference(x, 0.03, 14.6, seed=21)
    for s0, s1 in [(14.6, 9.0), (9.0, 3.0), (3.0, 0.03)]:
        assert torch.allclose(ours(torch.tensor(s0), torch.tensor(s1)), ref(torch.tensor(s0), torch.tensor(s1)), atol=1e-5)


def test_reshape_mask_bilinear_channels_and_batch():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1.0
    out = reshape_mask(mask, (3, 4, 2, 2))
    assert out.shape == (3, 4, 2, 2)
    assert out[:, :, :, 0].eq(0).all() and out[:, :, :, 1].eq(1).all()
    # fractional values survive (no rounding), as in ComfyUI's reshape_mask
    soft = reshape_mask(torch.tensor([[0.0, 1.0]]), (1, 1, 1, 4))
    assert soft.flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    # a longer mask batch is cut to the latent batch
    assert reshape_mask(torch.rand(5, 8, 8), (2, 4, 8, 8)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError):
        reshape_mask(torch.ones(8), (1, 4, 8, 8))
