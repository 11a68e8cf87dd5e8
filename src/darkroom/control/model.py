"""Loaded control models: a diffusers `ControlNetModel` or `T2IAdapter` plus what applying it needs to know.

A ControlNet turns (noisy latent, timestep, text context, hint image) into residuals added to the UNet's skip
connections and middle block (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").
A T2I-Adapter turns the hint alone into features added inside the UNet's down blocks (Mou et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.family import FAMILY_LABELS, Family


class ControlModelError(ValueError):
    """A control model cannot be used as asked (wrong family for the checkpoint, missing base model …)."""


@dataclass(eq=False)
class ControlModel:
    """Base of ControlNet and T2IAdapter: the module, its name and family, and how big its hint must be."""

    module: Any  # diffusers ControlNetModel | T2IAdapter, eval mode
    name: str
    family: Family | None = None
    path: Path | None = None
    #: ControlNet "shuffle" models average their residuals over space (ComfyUI: file name ends in `_shuffle`).
    global_average_pooling: bool = False

    kind = "control"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.family.value if self.family else '?'})"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def label(self) -> str:
        """'SD1.x ControlNet', 'SDXL T2I-Adapter', …"""
        fam = FAMILY_LABELS.get(self.family, "?") if self.family else "?"
        return f"{fam} {'ControlNet' if self.kind == 'controlnet' else 'T2I-Adapter'}"

    @property
    def hint_scale(self) -> int:
        """Hint pixels per latent pixel (8 for every released model)."""
        raise NotImplementedError

    @property
    def hint_channels(self) -> int:
        """Channels the hint image must have (3, or 1 for sketch/canny T2I-Adapters)."""
        raise NotImplementedError

    def check_context(self, context_dim: int) -> None:
        """Raise ControlModelError when this model cannot work with a UNet whose text context is this wide."""


class ControlNet(ControlModel):
    """A diffusers ControlNetModel."""

    kind = "controlnet"

    @property
    def hint_scale(self) -> int:
        return 2 ** (len(self.module.config.conditioning_embedding_out_channels) - 1)

    @property
    def hint_channels(self) -> int:
        return int(self.module.config.conditioning_channels)

    def check_context(self, context_dim: int) -> None:
        want = int(self.module.config.cross_attention_dim)
        if want != context_dim:
            fam = FAMILY_LABELS.get(self.family, "another model family") if self.family else "another model family"
            raise ControlModelError(
                f"ControlNet {self.name!r} is made for {fam} (text context width {want}) but the checkpoint's "
                f"text context is {context_dim} wide: use a ControlNet made for the checkpoint's family")

    def residuals(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hint: torch.Tensor,
                  added_cond_kwargs: dict[str, torch.Tensor] | None = None
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (N, 4, h, w) scaled model input, t (N,), context (N, T, D), hint (N, C, h·s, w·s) →
        (down residuals, one per UNet skip connection; mid residual), unscaled."""
        dtype, device = self.dtype, self.device
        kwargs: dict[str, Any] = {}
        if added_cond_kwargs is not None and self.module.config.addition_embed_type is not None:
            kwargs["added_cond_kwargs"] = {k: v.to(device, dtype) for k, v in added_cond_kwargs.items()}
        down, mid = self.module(x.to(device, dtype), t.to(device), encoder_hidden_states=context.to(device, dtype),
                                controlnet_cond=hint.to(device, dtype), return_dict=False, **kwargs)
        return list(down), mid


class T2IAdapter(ControlModel):
    """A diffusers T2IAdapter (full, full XL or light)."""

    kind = "t2i_adapter"

    @property
    def adapter_type(self) -> str:
        return str(self.module.config.adapter_type)

    @property
    def unshuffle(self) -> int:
        """The pixel-unshuffle factor; hint sides must be multiples of it."""
        return int(self.module.config.downscale_factor)

    @property
    def hint_scale(self) -> int:
        # The XL adapter unshuffles by 16 and its first feature sits after SDXL's first downsampler.
        return self.unshuffle // 2 if self.adapter_type == "full_adapter_xl" else self.unshuffle

    @property
    def hint_channels(self) -> int:
        return int(self.module.config.in_channels)

    def features(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """hint (N, C, H, W) in [0, 1] → feature maps, one per UNet down level, unscaled."""
        return list(self.module(hint.to(self.device, self.dtype)))
