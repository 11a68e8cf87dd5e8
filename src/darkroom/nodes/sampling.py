"""KSampler and KSamplerAdvanced: ComfyUI's `common_ksampler` over the engine's `pipeline.ksample`.

Batch noise is ComfyUI's: one `prepare_noise` of the whole latent batch (per-image draws when the latent carries a
`batch_index`), zeros when noise is disabled. Progress goes to `ctx.progress(step, total, preview)` with a cheap
latent→RGB preview image; an interrupt stops sampling at the next step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine import pipeline
from ..engine.denoiser import CondItem
from ..graph import Input, Interrupted, Node, NodeContext, Output, Types
from ..models.family import Family
from ..sampling import SAMPLER_NAMES, SCHEDULER_NAMES, prepare_noise
from .refs import ModelRef, check_type, model_padding, use_model
from .services import service

#: ComfyUI's latent → RGB factors for previews (rows: latent channels; columns: R, G, B) and biases.
_RGB_FACTORS = {
    "sd": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


def latent_preview(x0: torch.Tensor, family: Family) -> Image.Image | None:
    """A latent-sized RGB preview of the first image of a (scaled) x0 prediction (B, 4, h, w)."""
    if x0 is None or x0.ndim != 4 or x0.shape[1] != 4:
        return None
    factors, bias = _RGB_FACTORS["sdxl" if family in (Family.SDXL, Family.SDXL_REFINER) else "sd"]
    rgb = torch.nn.functional.linear(x0[0].detach().float().cpu().movedim(0, -1), torch.tensor(factors).T,
                                     torch.tensor(bias))  # (h, w, 3)
    arr = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def resolve_conditioning(items: list[CondItem], latent_hw: tuple[int, int], model_sampling: Any) -> list[CondItem]:
    """Turn model/size-dependent settings into what the denoiser reads.

    `start_percent`/`end_percent` → sigma_start/sigma_end with the model's schedule; a mask is resized to the latent
    (bilinear) and, with `set_area_to_bounds`, the area becomes the bounding box of mask values > 0.5
    (ComfyUI's `resolve_areas_and_cond_masks`).
    """
    out = []
    h, w = latent_hw
    for item in items:
        extra = item.extra
        changes: dict[str, Any] = {}
        if "start_percent" in extra or "end_percent" in extra:
            changes["sigma_start"] = model_sampling.percent_to_sigma(float(extra.get("start_percent", 0.0)))
            changes["sigma_end"] = model_sampling.percent_to_sigma(float(extra.get("end_percent", 1.0)))
        if item.mask is not None:
            mask = item.mask.float()
            if mask.ndim == 2:
                mask = mask[None]
            if tuple(mask.shape[-2:]) != (h, w):
                mask = torch.nn.functional.interpolate(mask[:, None], size=(h, w), mode="bilinear",
                                                       align_corners=False)[:, 0]
            changes["mask"] = mask
            if extra.get("set_area_to_bounds"):
                bounds = mask.abs().max(dim=0).values
                coords = torch.nonzero(bounds > 0.5)
                if coords.numel() == 0:
                    changes["area"] = (8, 8, 0, 0)
                else:
                    y0, x0 = (int(v) for v in coords.min(dim=0).values)
                    y1, x1 = (int(v) for v in coords.max(dim=0).values)
                    changes["area"] = (y1 - y0 + 1, x1 - x0 + 1, y0, x0)
        out.append(item.with_(**changes) if changes else item)
    return out


def common_ksampler(
    ctx: NodeContext,
    model: ModelRef,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[CondItem],
    negative: list[CondItem],
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> dict[str, Any]:
    """ComfyUI's `nodes.common_ksampler`: returns a copy of the LATENT dict with new samples."""
    check_type(model, ModelRef, "model", ctx.class_type)
    if not isinstance(latent, dict) or "samples" not in latent:
        raise TypeError(f"{ctx.class_type}: latent_image must be a LATENT dict with 'samples'")
    engine = service(ctx, "engine")
    ckpt = model.checkpoint
    samples = latent["samples"].float()  # (B, C, h, w) raw
    if samples.shape[1] != ckpt.latent_channels and torch.count_nonzero(samples) == 0:
        samples = torch.zeros((samples.shape[0], ckpt.latent_channels, *samples.shape[2:]))  # fix_empty_latent
    if samples.shape[1] != ckpt.latent_channels:
        raise ValueError(f"{ctx.class_type}: the latent has {samples.shape[1]} channels but {ckpt.name} works on "
                         f"{ckpt.latent_channels}")
    if disable_noise:
        noise = torch.zeros_like(samples)
    else:
        noise = prepare_noise(samples.shape, int(seed), latent.get("batch_index"))
    ms = pipeline.model_sampling_for(ckpt)
    hw = (samples.shape[2], samples.shape[3])
    pos = resolve_conditioning(positive, hw, ms)
    neg = resolve_conditioning(negative, hw, ms)
    family = ckpt.kind.family
    want_previews = bool(getattr(ctx, "services", {}).get("previews", False))

    def progress(step: int, total: int, x0: torch.Tensor | None) -> None:
        preview = latent_preview(x0, family) if want_previews and x0 is not None else None
        ctx.progress(step, total, preview)

    noise_mask = latent.get("noise_mask")
    if noise_mask is not None:  # (B|1, 1, H, W) or (B|1, H, W) at any resolution → (B|1, H, W)
        noise_mask = noise_mask.reshape(-1, noise_mask.shape[-2], noise_mask.shape[-1])
    if model.ipadapters:  # reference images: items marked here, processors on the UNet for this run only
        from ..ipadapter.attention import attach
        pos, neg = attach(pos, model.ipadapters, ms), attach(neg, model.ipadapters, ms)
    use_model(engine, model)
    try:
        # seamless tiling (circular UNet convolutions) and IP-Adapter processors: for this run only
        with model_padding(model), _ip_processors(ckpt.unet, model.ipadapters):
            out = pipeline.ksample(
                ckpt, samples, pos, neg, seed=int(seed), steps=steps, cfg=cfg, sampler=sampler_name,
                scheduler=scheduler, denoise=denoise, add_noise=not disable_noise, start_step=start_step,
                end_step=last_step, force_full_denoise=force_full_denoise, noise_mask=noise_mask,
                noise=noise, progress=progress, cancelled=lambda: ctx.interrupted,
            )
    except pipeline.Interrupted as ex:
        raise Interrupted(f"interrupted while sampling in node {ctx.node_id}") from ex
    result = dict(latent)
    result["samples"] = out
    return result


def _ip_processors(unet: Any, uses: tuple[Any, ...]) -> Any:
    """IP-Adapter attention processors on the UNet while sampling (a no-op without uses)."""
    from contextlib import nullcontext

    if not uses:
        return nullcontext()
    from ..ipadapter.attention import installed

    return installed(unet, uses)


SAMPLER_INPUTS = {
    "steps": Input(Types.INT, default=20, min=1, max=10000, tooltip="The number of steps used in the denoising "
                                                                     "process."),
    "cfg": Input(Types.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                 tooltip="The Classifier-Free Guidance scale balances creativity and adherence to the prompt."),
    "sampler_name": Input(Types.COMBO, choices=SAMPLER_NAMES, tooltip="The algorithm used when sampling."),
    "scheduler": Input(Types.COMBO, choices=SCHEDULER_NAMES,
                       tooltip="The scheduler controls how noise is gradually removed to form the image."),
}


class KSampler(Node):
    """Denoise a latent with a model, positive and negative conditioning."""

    category = "sampling"
    description = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    inputs = {
        "model": Input(Types.MODEL, tooltip="The model used for denoising the input latent."),
        "seed": Input(Types.INT, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                      tooltip="The random seed used for creating the noise."),
        **SAMPLER_INPUTS,
        "positive": Input(Types.CONDITIONING, tooltip="The conditioning describing the attributes you want to "
                                                      "include in the image."),
        "negative": Input(Types.CONDITIONING, tooltip="The conditioning describing the attributes you want to "
                                                      "exclude from the image."),
        "latent_image": Input(Types.LATENT, tooltip="The latent image to denoise."),
        "denoise": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                         tooltip="The amount of denoising applied, lower values will maintain the structure of the "
                                 "initial image allowing for image to image sampling."),
    }
    outputs = [Output(Types.LATENT, tooltip="The denoised latent.")]

    def execute(self, ctx: NodeContext, model: ModelRef, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, positive: list[CondItem], negative: list[CondItem], latent_image: dict[str, Any],
                denoise: float = 1.0) -> tuple[Any, ...]:
        return (common_ksampler(ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                latent_image, denoise=denoise),)


class KSamplerAdvanced(Node):
    """KSampler over a step range, with optional initial noise and leftover noise (SDXL base → refiner)."""

    display_name = "KSampler (Advanced)"
    category = "sampling"
    inputs = {
        "model": Input(Types.MODEL),
        "add_noise": Input(Types.COMBO, choices=("enable", "disable")),
        "noise_seed": Input(Types.INT, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        **{k: Input(v.type, default=v.default, min=v.min, max=v.max, step=v.step, round=v.round, choices=v.choices)
           for k, v in SAMPLER_INPUTS.items()},
        "positive": Input(Types.CONDITIONING),
        "negative": Input(Types.CONDITIONING),
        "latent_image": Input(Types.LATENT),
        "start_at_step": Input(Types.INT, default=0, min=0, max=10000),
        "end_at_step": Input(Types.INT, default=10000, min=0, max=10000),
        "return_with_leftover_noise": Input(Types.COMBO, choices=("disable", "enable")),
    }
    outputs = [Output(Types.LATENT)]

    def execute(self, ctx: NodeContext, model: ModelRef, add_noise: str, noise_seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, positive: list[CondItem], negative: list[CondItem],
                latent_image: dict[str, Any], start_at_step: int, end_at_step: int,
                return_with_leftover_noise: str) -> tuple[Any, ...]:
        return (common_ksampler(ctx, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                latent_image, disable_noise=add_noise == "disable", start_step=start_at_step,
                                last_step=end_at_step,
                                force_full_denoise=return_with_leftover_noise != "enable"),)


NODES: tuple[type[Node], ...] = (KSampler, KSamplerAdvanced)
