"""Applying control models while sampling: units attached to conditioning, evaluated on every UNet call.

`apply_control` puts an `AppliedControl` in each conditioning item's `extra["control"]` list (ComfyUI's
ControlNetApplyAdvanced: one unit object shared by the positive and negative side, chained after any earlier ones).
The denoiser (`darkroom.engine.denoiser.UNetDenoiser`) groups the rows of each UNet batch by unit, calls the unit on
its rows and adds the summed residuals to the UNet — `down_block_additional_residuals` /
`mid_block_additional_residual` for ControlNets, `down_intrablock_additional_residuals` for T2I-Adapters.

Per call, a unit (ComfyUI's `ControlNet.get_control`):
- is skipped outside its sigma range (start/end percent of the run) or at strength 0;
- resizes its hint to the evaluated latent (crop) size × 8 with nearest-exact and a centre crop, once per size;
- evaluates the ControlNet on the model input, timestep and text context of its rows (the hint of image i of the
  batch goes with row i, a one-image hint with every row); a T2I-Adapter's features are computed once per size;
- scales the outputs by strength and, for A1111's control modes, by soft-injection weights ("My prompt is more
  important": 0.825^(12−i) over a ControlNet's 13 outputs, (0.25, 0.62, 0.825, 1) over an adapter's four) or
  only on the conditional rows ("ControlNet is more important"), as sd-webui-controlnet's hook does;
- averages over space for global-average-pooling models (shuffle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .model import ControlModel, ControlNet, T2IAdapter
from .modes import A1111_CONTROL_MODES, CONTROL_MODES, control_mode  # noqa: F401 (re-exported)

#: A1111's soft-injection decay per ControlNet output away from the middle block.
SOFT_DECAY = 0.825
SOFT_ADAPTER_SCALES = (0.25, 0.62, 0.825, 1.0)


@dataclass
class ControlOutput:
    """What one unit adds to one UNet call (tensors for the unit's rows, already scaled)."""

    down: list[torch.Tensor] | None = None  # ControlNet: one per UNet skip connection
    mid: torch.Tensor | None = None  # ControlNet: the middle block
    intrablock: list[torch.Tensor] | None = None  # T2I-Adapter: one per down level


@dataclass(eq=False)
class AppliedControl:
    """One control unit in a conditioning: a model, its hint image(s), strength, sigma range and mode."""

    model: ControlModel
    image: torch.Tensor  # (B, H, W, C) IMAGE in [0, 1]; -1 marks pixels to inpaint (inpaint ControlNet)
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    mode: str = "balanced"
    _hints: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _features: dict[tuple, list[torch.Tensor]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image.ndim == 3:
            self.image = self.image[None]
        if self.image.ndim != 4:
            raise ValueError(f"a control image must be (B, H, W, C), got shape {tuple(self.image.shape)}")
        if self.mode not in CONTROL_MODES:
            self.mode = control_mode(self.mode)

    def __repr__(self) -> str:
        return (f"AppliedControl({self.model!r}, strength={self.strength:g}, range=({self.start_percent:g}, "
                f"{self.end_percent:g}), mode={self.mode})")

    # -- when and where ---------------------------------------------------------------------------------------------
    def active(self, sigma: float, model_sampling: Any) -> bool:
        """Whether the unit applies at this sigma (ComfyUI: sigma_end ≤ sigma ≤ sigma_start)."""
        if self.strength == 0:
            return False
        hi = model_sampling.percent_to_sigma(self.start_percent)
        lo = model_sampling.percent_to_sigma(self.end_percent)
        return lo <= sigma <= hi

    def hint(self, h: int, w: int) -> torch.Tensor:
        """The whole hint batch sized for an (h, w) latent: (B, C, h·s, w·s) on the model's device."""
        from ..engine.resize import common_upscale

        key = (h, w)
        cached = self._hints.get(key)
        if cached is not None:
            return cached
        s = self.model.hint_scale
        height, width = h * s, w * s
        if isinstance(self.model, T2IAdapter):  # the pixel unshuffle needs multiples of its factor
            u = self.model.unshuffle
            height, width = math.ceil(height / u) * u, math.ceil(width / u) * u
        img = self.image.float().movedim(-1, 1)  # (B, C, H, W)
        img = common_upscale(img, width, height, "nearest-exact", "center")
        want = self.model.hint_channels
        if want == 1 and img.shape[1] > 1:
            img = img[:, :3].mean(dim=1, keepdim=True)
        elif img.shape[1] == 1 and want == 3:
            img = img.expand(-1, 3, -1, -1)
        elif img.shape[1] != want:
            img = img[:, :want]
        img = img.to(self.model.device, self.model.dtype)
        while len(self._hints) >= 2:  # area conditioning alternates crop sizes; keep a couple
            self._hints.pop(next(iter(self._hints)))
        self._hints[key] = img
        return img

    # -- evaluation -------------------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, t: torch.Tensor, sigma: float, context: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor] | None, images: torch.Tensor, cond_rows: torch.Tensor,
                 model_sampling: Any) -> ControlOutput | None:
        """The unit's residuals for its rows: x (n, 4, h, w) model input, t (n,), context (n, T, D), images (n,)
        index of each row's image in the batch, cond_rows (n,) True for positive-prompt rows."""
        if not self.active(sigma, model_sampling):
            return None
        h, w = x.shape[-2:]
        hint = self.hint(h, w)
        pick = (images.to(torch.long) % hint.shape[0]).to(hint.device)
        if isinstance(self.model, ControlNet):
            self.model.check_context(int(context.shape[-1]))
            down, mid = self.model.residuals(x, t, context, hint[pick], added_cond_kwargs)
            outs = [*down, mid]
            scales = self._scales(len(outs), adapter=False)
        elif isinstance(self.model, T2IAdapter):
            key = (h, w)
            feats = self._features.get(key)
            if feats is None:
                with torch.no_grad():
                    feats = self.model.features(hint)
                self._features.clear()
                self._features[key] = feats
            outs = [f[pick.to(f.device)] for f in feats]
            scales = self._scales(len(outs), adapter=True)
        else:
            raise TypeError(f"cannot apply a {type(self.model).__name__}")
        mask = None
        if self.mode == "control":  # A1111 "ControlNet is more important": the negative side runs without it
            mask = cond_rows.to(outs[0].device, outs[0].dtype).view(-1, 1, 1, 1)
        result = []
        for out, scale in zip(outs, scales):
            if self.model.global_average_pooling:
                out = out.mean(dim=(2, 3), keepdim=True).expand_as(out)
            out = out * scale
            if mask is not None:
                out = out * mask
            result.append(out)
        if isinstance(self.model, ControlNet):
            return ControlOutput(down=result[:-1], mid=result[-1])
        return ControlOutput(intrablock=result)

    def _scales(self, n: int, *, adapter: bool) -> list[float]:
        if self.mode != "prompt":
            return [self.strength] * n
        if adapter:
            return [self.strength * (SOFT_ADAPTER_SCALES[i] if i < len(SOFT_ADAPTER_SCALES) else 1.0)
                    for i in range(n)]
        return [self.strength * SOFT_DECAY ** float(n - 1 - i) for i in range(n)]


def apply_control(positive: list, negative: list | None, model: ControlModel, image: torch.Tensor, *,
                  strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                  mode: str = "balanced") -> tuple[list, list | None]:
    """ComfyUI's ControlNetApplyAdvanced: copies of both conditionings with one shared unit appended to each item's
    `extra["control"]` (strength 0 returns them unchanged). `negative=None` applies to the positive side only
    (ControlNetApply)."""
    if not isinstance(model, ControlModel):
        raise TypeError(f"control_net must be a loaded ControlNet or T2I-Adapter, got {type(model).__name__}")
    if not 0.0 <= start_percent <= 1.0 or not 0.0 <= end_percent <= 1.0:
        raise ValueError(f"start/end percent must be within 0..1 (got {start_percent}, {end_percent})")
    if strength == 0:
        return positive, negative
    unit = AppliedControl(model, image, float(strength), float(start_percent), float(end_percent), control_mode(mode))

    def attach(items: list) -> list:
        return [item.with_(extra={**item.extra, "control": [*item.extra.get("control", ()), unit]})
                for item in items]

    return attach(positive), (None if negative is None else attach(negative))


def map_conditioning(conditioning: Any, fn: Any) -> Any:
    """Apply `fn(list[CondItem]) -> list[CondItem]` to a conditioning list or each entry of an A1111 schedule."""
    from ..engine.denoiser import CondSchedule

    if isinstance(conditioning, CondSchedule):
        return CondSchedule([(end, fn(items)) for end, items in conditioning.entries], conditioning.step)
    return fn(conditioning)
