"""Typed generation requests: what the CLI, the A1111 API and the studio page ask the engine for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..control.units import ControlNetUnit

PromptStyle = Literal["a1111", "comfy"]


@dataclass
class LoraRef:
    """One `<lora:name:te[:unet]>` use: the file's name (stem) and its text-encoder and UNet multipliers."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


@dataclass
class HiresParams:
    """A1111 hires fix: upscale the first pass (latent or image), then a second pass at `denoise`."""

    scale: float = 2.0
    upscaler: str = "Latent"  # "Latent" (bilinear latent), "Latent (nearest-exact)", … or an image upscaler name
    steps: int = 0  # 0: same as the first pass
    denoise: float = 0.7
    width: int | None = None  # explicit target size overrides `scale`
    height: int | None = None


@dataclass
class GenerationParams:
    """One txt2img/img2img request. Sampler and scheduler use ComfyUI's names (`euler`, `karras`, …)."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # checkpoint name under checkpoints/ (None: the only/default one)
    vae: str | None = None  # separate VAE file name under vae/
    sampler: str = "euler"
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 7.0
    seed: int = -1  # -1: random; the chosen seed is recorded
    width: int = 512
    height: int = 512
    batch_size: int = 1
    clip_skip: int = 1
    init_image: Path | None = None  # img2img source
    denoise: float = 1.0  # img2img denoising strength (1.0 for txt2img)
    hires: HiresParams | None = None
    refiner: str | None = None  # SDXL refiner checkpoint name
    refiner_switch: float = 0.8  # fraction of steps after which the refiner takes over
    prompt_style: PromptStyle = "a1111"
    loras: list[LoraRef] = field(default_factory=list)  # filled from <lora:…> tags by the prompt parser
    tiling: bool = False  # seamless texture: circular padding in the UNet and VAE convolutions (A1111 "Tiling")
    #: ControlNet / T2I-Adapter units (darkroom.control.units.ControlNetUnit), applied to the first pass and, per
    #: unit's hr_option, the hires pass; the embedded workflow adds the same nodes.
    controlnets: list[ControlNetUnit] = field(default_factory=list)
