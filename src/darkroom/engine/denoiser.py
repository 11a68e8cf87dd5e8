"""The UNet as a denoiser `denoise(x, sigma) -> x0` with classifier-free guidance and ComfyUI's conditioning rules.

Conditioning is a list of `CondItem`s per side (positive / negative), as ComfyUI's CONDITIONING: each item may cover
an area or a mask of the latent, have a strength and a timestep range; overlapping items are blended by weight.
CFG is applied to the x0 predictions: uncond + cfg · (cond − uncond), cond and uncond in one UNet batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

#: Feather width (in latent pixels) at the inner edges of an area condition, as ComfyUI.
_AREA_FEATHER = 8


@dataclass
class CondItem:
    """One conditioning entry: text embeddings plus where and when it applies."""

    cross_attn: torch.Tensor  # (1, T, D)
    pooled: torch.Tensor | None = None  # (1, P) — SDXL
    strength: float = 1.0
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent pixels
    mask: torch.Tensor | None = None  # (1 or B, h, w) in latent resolution, values 0..1
    mask_strength: float = 1.0
    sigma_start: float | None = None  # applies while sigma <= sigma_start
    sigma_end: float | None = None  # … and sigma >= sigma_end
    #: SDXL size conditioning: width, height, crop_w, crop_h, target_width, target_height, aesthetic_score (refiner).
    adm: dict[str, float] = field(default_factory=dict)
    #: Extra per-item model inputs. "control": control units (`darkroom.control.apply.AppliedControl`), each called
    #: per UNet call on its rows and summed into the UNet's additional residuals (see `UNetDenoiser._control`);
    #: "ipadapter": IP-Adapter uses with sigma windows (`darkroom.ipadapter.attention.attach` / `unet_kwargs`).
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **kw) -> "CondItem":
        return replace(self, **kw)


@dataclass
class CondSchedule:
    """A1111 prompt editing: a conditioning per step range. At sampler step s (0-based) the first entry with
    s <= end_step applies, as A1111's reconstruct_cond_batch."""

    entries: list[tuple[int, list[CondItem]]]
    step: int = 0

    def current(self) -> list[CondItem]:
        for end, items in self.entries:
            if self.step <= end:
                return items
        return self.entries[-1][1]

    def last(self) -> list[CondItem]:
        return self.entries[-1][1]


def sdxl_time_ids(item: CondItem, *, width: int, height: int, refiner: bool, negative: bool) -> list[float]:
    """SDXL's micro-conditioning vector: (orig_h, orig_w, crop_top, crop_left, target_h, target_w) for the base model,
    (orig_h, orig_w, crop_top, crop_left, aesthetic_score) for the refiner. Defaults: the image size, no crop."""
    a = item.adm
    w = a.get("width", width)
    h = a.get("height", height)
    ch = a.get("crop_h", 0)
    cw = a.get("crop_w", 0)
    if refiner:
        score = a.get("aesthetic_score", 2.5 if negative else 6.0)
        return [h, w, ch, cw, score]
    return [h, w, ch, cw, a.get("target_height", height), a.get("target_width", width)]


def _area_weight(item: CondItem, x: torch.Tensor) -> tuple[tuple[int, int, int, int], torch.Tensor]:
    """The item's area (h, w, y, x) and its weight map (B, 1, h, w) = mask · strength, feathered at area edges."""
    H, W = x.shape[2], x.shape[3]
    area = item.area or (H, W, 0, 0)
    ah, aw, ay, ax = area
    ah, aw = min(ah, H - ay), min(aw, W - ax)
    area = (ah, aw, ay, ax)
    B = x.shape[0]
    if item.mask is not None:
        m = item.mask.to(x.device, torch.float32)
        if m.ndim == 2:
            m = m[None]
        if m.shape[-2:] != (H, W):
            m = torch.nn.functional.interpolate(m[:, None], size=(H, W), mode="bilinear")[:, 0]
        if m.shape[0] < B:
            m = m.repeat(math.ceil(B / m.shape[0]), 1, 1)[:B]
        mult = (m[:B, ay : ay + ah, ax : ax + aw] * item.mask_strength)[:, None]  # (B, 1, h, w)
    else:
        mult = torch.ones((B, 1, ah, aw), device=x.device)
    mult = mult * item.strength
    if item.mask is None and item.area is not None:
        rr = _AREA_FEATHER
        for t in range(min(rr, ah, aw)):
            f = (t + 1) / rr
            if ay != 0:
                mult[:, :, t : t + 1, :] *= f
            if ay + ah < H:
                mult[:, :, ah - 1 - t : ah - t, :] *= f
            if ax != 0:
                mult[:, :, :, t : t + 1] *= f
            if ax + aw < W:
                mult[:, :, :, aw - 1 - t : aw - t] *= f
    return area, mult


class UNetDenoiser:
    """`denoise(x, sigma) -> x0` for a diffusers UNet under CFG. x and the result are in the model's scaled latent space.

    model_sampling: a `darkroom.sampling.model_sampling.ModelSampling` (input scaling, timestep, x0 from the output).
    concat: for 9-channel inpainting UNets, the extra input channels (B, 5, h, w): mask then masked-image latent.
    """

    def __init__(
        self,
        unet,
        model_sampling,
        positive: list[CondItem] | CondSchedule,
        negative: list[CondItem] | None,
        cfg: float,
        *,
        sdxl: bool = False,
        refiner: bool = False,
        concat: torch.Tensor | None = None,
        latent_size_px: tuple[int, int] | None = None,
    ) -> None:
        self.unet = unet
        self.ms = model_sampling
        self.positive = positive
        self.negative = negative or []
        self.cfg = float(cfg)
        self.sdxl = sdxl
        self.refiner = refiner
        self.concat = concat
        self.latent_size_px = latent_size_px  # (width, height) of the full image for SDXL defaults
        p = next(unet.parameters())
        self.dtype, self.device = p.dtype, p.device

    # -- one UNet call over a batch of (x crop, cond item) pairs -------------------------------------------
    def _unet(self, x_in: torch.Tensor, sigma: torch.Tensor, items: list[CondItem], negs: list[bool],
              concat: torch.Tensor | None, full_hw: tuple[int, int], batch: int = 1) -> torch.Tensor:
        """x_in (N, C, h, w) scaled latents; sigma (N,); one cond item per row (row r is image r % batch)
        → x0 (N, C, h, w) float32."""
        model_in = self.ms.calculate_input(sigma[:, None, None, None], x_in)
        t = self.ms.timestep(sigma).float()
        ctx_len = math.lcm(*{it.cross_attn.shape[1] for it in items})
        ctx = torch.cat([_pad_tokens(it.cross_attn, ctx_len) for it in items]).to(self.device, self.dtype)
        kwargs: dict[str, Any] = {}
        if self.sdxl:
            width, height = self.latent_size_px or (full_hw[1] * 8, full_hw[0] * 8)
            pooled = torch.cat([it.pooled for it in items]).to(self.device, self.dtype)
            ids = [sdxl_time_ids(it, width=width, height=height, refiner=self.refiner, negative=n)
                   for it, n in zip(items, negs)]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": torch.tensor(ids, device=self.device, dtype=self.dtype),
            }
        # Control models see the latent channels only (never an inpainting UNet's extra input channels).
        kwargs.update(self._control(items, negs, model_in, sigma, t, ctx, kwargs.get("added_cond_kwargs"), batch))
        if any("ipadapter" in it.extra for it in items):  # IP-Adapter image-prompt tokens per row
            from ..ipadapter.attention import unet_kwargs

            kwargs.update(unet_kwargs(items, negs, float(sigma[0]), (model_in.shape[2], model_in.shape[3])))
        if concat is not None:
            model_in = torch.cat([model_in, concat.to(model_in)], dim=1)
        out = self.unet(model_in.to(self.device, self.dtype), t.to(self.device), encoder_hidden_states=ctx,
                        **kwargs).sample.float()
        return self.ms.calculate_denoised(sigma[:, None, None, None], out, x_in)

    def _control(self, items: list[CondItem], negs: list[bool], model_in: torch.Tensor, sigma: torch.Tensor,
                 t: torch.Tensor, ctx: torch.Tensor, added: dict[str, torch.Tensor] | None,
                 batch: int) -> dict[str, Any]:
        """The UNet's additional-residual arguments from the control units of the rows' items: each unit runs once
        on the rows that carry it, and its outputs are summed into zero tensors at those rows."""
        groups: dict[int, tuple[Any, list[int]]] = {}
        for row, item in enumerate(items):
            for unit in item.extra.get("control", ()):
                groups.setdefault(id(unit), (unit, []))[1].append(row)
        if not groups:
            return {}
        n = model_in.shape[0]
        cond_rows = torch.tensor([not neg for neg in negs])
        images = torch.arange(n) % max(1, batch)
        sums: dict[str, list[torch.Tensor | None]] = {}
        for unit, rows in groups.values():
            idx = torch.tensor(rows)
            sub_added = None if added is None else {k: v[idx.to(v.device)] for k, v in added.items()}
            out = unit(model_in[idx], t[idx], float(sigma[0]), ctx[idx.to(ctx.device)], sub_added, images[idx],
                       cond_rows[idx], self.ms)
            if out is None:
                continue
            for name, parts in (("down", out.down), ("mid", None if out.mid is None else [out.mid]),
                                ("intrablock", out.intrablock)):
                if parts is None:
                    continue
                acc = sums.setdefault(name, [None] * len(parts))
                if len(acc) != len(parts):
                    raise ValueError(f"control units disagree on the number of {name} residuals "
                                     f"({len(acc)} vs {len(parts)}): they are made for different model families")
                for i, part in enumerate(parts):
                    part = part.to(self.device, torch.float32)
                    if acc[i] is None:
                        acc[i] = torch.zeros((n, *part.shape[1:]), device=self.device)
                    acc[i] = acc[i].index_add(0, idx.to(self.device), part)
        kwargs: dict[str, Any] = {}
        if "down" in sums or "mid" in sums:
            if "down" not in sums or "mid" not in sums:
                raise ValueError("a ControlNet unit gave down residuals without a mid residual (or the reverse)")
            kwargs["down_block_additional_residuals"] = tuple(r.to(self.dtype) for r in sums["down"])
            kwargs["mid_block_additional_residual"] = sums["mid"][0].to(self.dtype)
        if "intrablock" in sums:  # diffusers pops from this list: a fresh one per call
            kwargs["down_intrablock_additional_residuals"] = [r.to(self.dtype) for r in sums["intrablock"]]
        return kwargs

    def _calc(self, x: torch.Tensor, sigma: torch.Tensor, sides: list[list[CondItem]]) -> list[torch.Tensor]:
        """ComfyUI's calc_cond_batch: each side's x0 prediction, blending area/mask items by their weights."""
        B = x.shape[0]
        outs = [torch.zeros_like(x, dtype=torch.float32) for _ in sides]
        counts = [torch.full_like(x[:, :1], 1e-37, dtype=torch.float32) for _ in sides]
        s0 = float(sigma.reshape(-1)[0])
        jobs: dict[tuple, list] = {}
        for side_i, items in enumerate(sides):
            for item in items:
                if item.sigma_start is not None and s0 > item.sigma_start:
                    continue
                if item.sigma_end is not None and s0 < item.sigma_end:
                    continue
                area, mult = _area_weight(item, x)
                jobs.setdefault(area, []).append((side_i, item, mult))
        for area, group in jobs.items():
            ah, aw, ay, ax = area
            x_crop = x[:, :, ay : ay + ah, ax : ax + aw]
            concat = None if self.concat is None else self.concat[:, :, ay : ay + ah, ax : ax + aw]
            n = len(group)
            x_in = x_crop.repeat(n, 1, 1, 1)
            items = [it for _, it, _ in group for _ in range(B)]
            negs = [side_i == 1 for side_i, _, _ in group for _ in range(B)]
            cc = None if concat is None else concat.to(x).expand(B, -1, -1, -1).repeat(n, 1, 1, 1)
            x0 = self._unet(x_in, sigma.repeat(n), [i.with_(cross_attn=i.cross_attn[:1]) for i in items], negs, cc,
                            (x.shape[2], x.shape[3]), B)
            for k, (side_i, _, mult) in enumerate(group):
                part = x0[k * B : (k + 1) * B]
                outs[side_i][:, :, ay : ay + ah, ax : ax + aw] += part * mult
                counts[side_i][:, :, ay : ay + ah, ax : ax + aw] += mult
        return [o / c for o, c in zip(outs, counts)]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) noisy scaled latent, sigma (B,) → x0 (B, C, h, w)."""
        sigma = sigma.reshape(-1).to(torch.float32)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        x = x.float()
        positive = self.positive.current() if isinstance(self.positive, CondSchedule) else self.positive
        if math.isclose(self.cfg, 1.0) or not self.negative:
            (cond,) = self._calc(x, sigma, [positive])
            return cond
        cond, uncond = self._calc(x, sigma, [positive, self.negative])
        return uncond + (cond - uncond) * self.cfg


def _pad_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat a (1, T, D) context along tokens to `length` (a multiple of T). Attention over a context repeated k
    times equals attention over the original, so conds of different lengths batch exactly (ComfyUI's lcm rule)."""
    return t if t.shape[1] == length else t.repeat(1, length // t.shape[1], 1)
