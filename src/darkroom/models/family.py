"""Model families darkroom knows, and what each implies (text encoders, latent scale, prediction type)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

Prediction = Literal["eps", "v"]


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"


#: Human labels, as shown by `darkroom models` and in errors.
FAMILY_LABELS = {
    Family.SD1: "SD1.x",
    Family.SD2: "SD2.x",
    Family.SDXL: "SDXL",
    Family.SDXL_REFINER: "SDXL refiner",
}

#: VAE latent scaling factor per family (LDM `scale_factor`).
LATENT_SCALE = {
    Family.SD1: 0.18215,
    Family.SD2: 0.18215,
    Family.SDXL: 0.13025,
    Family.SDXL_REFINER: 0.13025,
}


@dataclass(frozen=True)
class ModelKind:
    """What a checkpoint is: family, prediction target and whether its UNet takes the 9-channel inpaint input."""

    family: Family
    prediction: Prediction = "eps"
    inpaint: bool = False

    @property
    def label(self) -> str:
        s = FAMILY_LABELS[self.family]
        if self.prediction == "v":
            s += " (v-prediction)"
        if self.inpaint:
            s += " inpainting"
        return s

    @property
    def is_sdxl(self) -> bool:
        return self.family in (Family.SDXL, Family.SDXL_REFINER)

    @property
    def latent_scale(self) -> float:
        return LATENT_SCALE[self.family]


class UnsupportedModelError(ValueError):
    """The file is a model, but not one darkroom can run (message: 'unsupported model: looks like <X>')."""
