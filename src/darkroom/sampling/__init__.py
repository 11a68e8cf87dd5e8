"""darkroom.sampling: ComfyUI-exact schedules, samplers and the KSampler flow as pure functions.

    ms = ModelSampling(checkpoint.schedule, checkpoint.kind.prediction)
    out = sample(denoise, latent, sampler="euler", scheduler="normal", model_sampling=ms, steps=20, seed=1)

where `denoise(x, sigma) -> x0` wraps the UNet and CFG (see `model_sampling` for the recipe).
"""

from .ksampler import inpaint_denoiser, run_sampler, sample
from .model_sampling import ModelSampling
from .names import A1111_SAMPLERS, A1111_SCHEDULES, a1111_labels, parse_a1111_sampler, parse_a1111_schedule
from .noise import (
    BatchedBrownianTree,
    BrownianTreeNoiseSampler,
    brownian_noise_sampler,
    default_noise_sampler,
    prepare_noise,
    reshape_mask,
)
from .registry import COMFY_SAMPLER_NAMES, SAMPLER_NAMES, SAMPLERS, STOCHASTIC_SAMPLERS, check_sampler, get_sampler
from .schedules import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    calculate_sigmas,
    check_scheduler,
    ksampler_sigmas,
)

__all__ = [
    "A1111_SAMPLERS",
    "A1111_SCHEDULES",
    "COMFY_SAMPLER_NAMES",
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "STOCHASTIC_SAMPLERS",
    "BatchedBrownianTree",
    "BrownianTreeNoiseSampler",
    "ModelSampling",
    "a1111_labels",
    "brownian_noise_sampler",
    "calculate_sigmas",
    "check_sampler",
    "check_scheduler",
    "default_noise_sampler",
    "get_sampler",
    "inpaint_denoiser",
    "ksampler_sigmas",
    "parse_a1111_sampler",
    "parse_a1111_schedule",
    "prepare_noise",
    "reshape_mask",
    "run_sampler",
    "sample",
]
