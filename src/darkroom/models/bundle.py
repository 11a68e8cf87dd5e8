"""The loaded form of a checkpoint: what every other layer (conditioning, sampling, engine, nodes) receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .family import ModelKind


@dataclass(frozen=True)
class BetaSchedule:
    """The training noise schedule (LDM `linear_start/linear_end`, diffusers `scaled_linear`)."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"


@dataclass
class Checkpoint:
    """A loaded Stable Diffusion checkpoint with diffusers/transformers modules.

    text_encoders / tokenizers, in order:
      SD1.x:        [CLIPTextModel (CLIP ViT-L)]                       pad `<|endoftext|>`
      SD2.x:        [CLIPTextModel (OpenCLIP ViT-H, converted)]        pad `!`
      SDXL base:    [CLIPTextModel (CLIP-L), CLIPTextModelWithProjection (OpenCLIP bigG)]
      SDXL refiner: [CLIPTextModelWithProjection (OpenCLIP bigG)]
    """

    name: str
    kind: ModelKind
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoders: list[Any]
    tokenizers: list[Any]
    schedule: BetaSchedule = field(default_factory=BetaSchedule)
    path: Path | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vae_name: str | None = None
    #: diffusers config dicts of each component, as loaded (for re-saving and for `darkroom models`).
    configs: dict[str, dict] = field(default_factory=dict)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
