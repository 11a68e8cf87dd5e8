"""Samplers by ComfyUI name: `SAMPLERS[name](denoise, x, sigmas, *, seed=None, callback=None, **options)`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any

import torch

from . import samplers_dpmpp as dp
from . import samplers_k as k
from .unipc import sample_uni_pc, sample_uni_pc_bh2

SamplerFn = Callable[..., torch.Tensor]

#: Every sampler name ComfyUI 0.3.x offers, in its order (KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2).
COMFY_SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3",
    "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip


def _variant(fn: SamplerFn, name: str, **fixed: Any) -> SamplerFn:
    """fn with some options fixed, keeping fn's docstring (a named ComfyUI variant)."""
    out = partial(fn, **fixed)
    update_wrapper(out, fn)
    out.__name__ = f"sample_{name}"  # type: ignore[attr-defined]
    return out


_IMPLEMENTED: dict[str, SamplerFn] = {
    "euler": k.sample_euler,
    "euler_ancestral": k.sample_euler_ancestral,
    "heun": k.sample_heun,
    "dpm_2": k.sample_dpm_2,
    "dpm_2_ancestral": k.sample_dpm_2_ancestral,
    "lms": k.sample_lms,
    "dpmpp_2s_ancestral": dp.sample_dpmpp_2s_ancestral,
    "dpmpp_sde": dp.sample_dpmpp_sde,
    "dpmpp_sde_gpu": _variant(dp.sample_dpmpp_sde, "dpmpp_sde_gpu", cpu=False),
    "dpmpp_2m": dp.sample_dpmpp_2m,
    "dpmpp_2m_sde": dp.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _variant(dp.sample_dpmpp_2m_sde, "dpmpp_2m_sde_gpu", cpu=False),
    "dpmpp_2m_sde_heun": _variant(dp.sample_dpmpp_2m_sde, "dpmpp_2m_sde_heun", solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": _variant(dp.sample_dpmpp_2m_sde, "dpmpp_2m_sde_heun_gpu", solver_type="heun", cpu=False),
    "dpmpp_3m_sde": dp.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _variant(dp.sample_dpmpp_3m_sde, "dpmpp_3m_sde_gpu", cpu=False),
    "ddpm": dp.sample_ddpm,
    "lcm": dp.sample_lcm,
    "ipndm": k.sample_ipndm,
    # ComfyUI's "ddim" is the Euler sampler (exactly DDIM with eta 0 in k-diffusion space);
    # KSampler only differs in drawing inpainting noise from seed + 1.
    "ddim": _variant(k.sample_euler, "ddim"),
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

#: The samplers darkroom implements, in ComfyUI's order.
SAMPLER_NAMES: tuple[str, ...] = tuple(n for n in COMFY_SAMPLER_NAMES if n in _IMPLEMENTED)

#: name -> sampler function.
SAMPLERS: dict[str, SamplerFn] = {n: _IMPLEMENTED[n] for n in SAMPLER_NAMES}

#: Samplers whose result depends on the seed beyond the initial noise (ancestral / SDE noise).
STOCHASTIC_SAMPLERS = frozenset(
    {
        "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu",
        "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    }
)  # fmt: skip


def check_sampler(name: str) -> str:
    """The name if darkroom implements that sampler, else ValueError listing the valid names."""
    if name in SAMPLERS:
        return name
    hint = " (a ComfyUI sampler darkroom does not implement)" if name in COMFY_SAMPLER_NAMES else ""
    raise ValueError(f"unknown sampler {name!r}{hint}; valid samplers: {', '.join(SAMPLER_NAMES)}")


def get_sampler(name: str) -> SamplerFn:
    """The sampler function for a ComfyUI sampler name."""
    return SAMPLERS[check_sampler(name)]
