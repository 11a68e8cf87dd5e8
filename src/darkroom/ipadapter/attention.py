"""Applying IP-Adapters to a diffusers UNet without patching code: attention processors as data.

`installed(unet, uses)` sets an `IPAttnProcessor` on every cross-attention layer (wrapping the layer's own processor)
for the duration of a sampling call and restores the originals after. `attach` marks conditioning items with the uses
(as `CondItem.extra["ipadapter"]`, with their sigma windows); on each UNet call the denoiser turns the rows' marks into
`cross_attention_kwargs={"ip_hidden_states": ImagePromptCall}` with `unet_kwargs`: cond rows get the image tokens,
uncond rows the uncond tokens. Each processor adds `weight · attention(q, to_k_ip(tokens), to_v_ip(tokens))` before
the layer's output projection, as the IP-Adapter paper and diffusers' IPAdapterAttnProcessor2_0.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

#: IPAdapterAdvanced's weight types; those not in `SUPPORTED_WEIGHT_TYPES` (they need a second set of embeds) are
#: rejected with a message.
WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise")
SUPPORTED_WEIGHT_TYPES = WEIGHT_TYPES[:12]
COMBINE_EMBEDS = ("concat", "add", "subtract", "average", "norm average")
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


def check_weight_type(weight_type: str) -> None:
    """Raise ValueError for an unknown or unsupported weight type."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown weight_type {weight_type!r}; one of {', '.join(WEIGHT_TYPES)}")
    if weight_type not in SUPPORTED_WEIGHT_TYPES:
        raise ValueError(f"weight_type {weight_type!r} is not supported yet; use one of "
                         f"{', '.join(SUPPORTED_WEIGHT_TYPES)}")


def layer_weights(weight_type: str, weight: float, *, sdxl: bool) -> dict[int, float] | None:
    """The block-selecting weight types as {transformer index: weight} (other indices get 0); None for the rest.

    Indices count transformer blocks in execution order (down, mid, up). As the widely used IPAdapter node: SDXL's
    style lives in the second transformer of the first up block (index 6), its composition in the second of the
    last down block (index 3); SD1's composition in the last down block's (4, 5)."""
    check_weight_type(weight_type)
    w = float(weight)
    if weight_type == "style transfer":
        return {6: w} if sdxl else {i: w for i in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
    if weight_type == "composition":
        return {3: w} if sdxl else {4: w * 0.25, 5: w}
    if weight_type == "strong style transfer":  # every block but the composition ones
        return {i: w for i in range(11) if i != 3} if sdxl else {i: w for i in range(16) if i not in (4, 5)}
    return None


def block_weight(weight_type: str, weight: float, *, sdxl: bool, index: int, kind: str) -> float:
    """The weight at one transformer block: `index` in execution order, `kind` "input" / "middle" / "output"."""
    blocks = layer_weights(weight_type, weight, sdxl=sdxl)
    if blocks is not None:
        return float(blocks.get(index, 0.0))
    w, layers = float(weight), (11 if sdxl else 16)
    if weight_type == "ease in":
        return w * (0.05 + 0.95 * (1 - index / layers))
    if weight_type == "ease out":
        return w * (0.05 + 0.95 * (index / layers))
    if weight_type == "ease in-out":
        return w * (0.05 + 0.95 * (1 - abs(index - layers / 2) / (layers / 2)))
    if weight_type == "reverse in-out":
        return w * (0.05 + 0.95 * (abs(index - layers / 2) / (layers / 2)))
    weak = {"weak input": ("input",), "weak middle": ("middle",), "weak output": ("output",),
            "strong middle": ("input", "output")}.get(weight_type, ())
    return w * 0.2 if kind in weak else w


@dataclass(frozen=True, eq=False)
class IPAdapterUse:
    """One IP-Adapter applied to a MODEL: its image-prompt tokens, weight and timing."""

    adapter: Any  # darkroom.ipadapter.model.IPAdapterModel
    cond: torch.Tensor  # (1, T, C) image-prompt tokens
    uncond: torch.Tensor  # (1, T, C) tokens of the "no image" prompt
    weight: float = 1.0
    weight_type: str = "linear"
    sdxl: bool = False  # which block layout the block-selecting weight types refer to
    start_percent: float = 0.0
    end_percent: float = 1.0
    scaling: str = "V only"
    mask: torch.Tensor | None = None  # (1, H, W) where the reference applies (1) in image space; None: everywhere

    def weight_at(self, index: int, kind: str = "") -> float:
        """The weight at transformer block `index` (execution order) of `kind` "input" / "middle" / "output"."""
        return block_weight(self.weight_type, self.weight, sdxl=self.sdxl, index=index, kind=kind)


def combine(embeds: torch.Tensor, how: str) -> torch.Tensor:
    """Several images' CLIP embeds (B, …) → one (1, …): add, subtract (first − mean of the rest), average, norm
    average, as the IPAdapter node (concat is done on the projected tokens, in `make_use`)."""
    if how not in COMBINE_EMBEDS:
        raise ValueError(f"unknown combine_embeds {how!r}; one of {', '.join(COMBINE_EMBEDS)}")
    if embeds.shape[0] == 1 or how == "concat":
        return embeds
    if how == "add":
        return embeds.sum(0, keepdim=True)
    if how == "subtract":
        return embeds[:1] - embeds[1:].mean(0, keepdim=True)
    if how == "average":
        return embeds.mean(0, keepdim=True)
    return (embeds / embeds.norm(dim=0, keepdim=True)).mean(0, keepdim=True)  # norm average, as the IPAdapter node


def make_use(adapter: Any, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor, *, weight: float = 1.0,
             weight_type: str = "linear", combine_embeds: str = "concat", start_at: float = 0.0, end_at: float = 1.0,
             embeds_scaling: str = "V only", sdxl: bool = False, mask: torch.Tensor | None = None) -> IPAdapterUse:
    """An IPAdapterUse from CLIP embeds of the reference images (B, …) and of the empty image (1, …)."""
    if embeds_scaling not in EMBEDS_SCALING:
        raise ValueError(f"unknown embeds_scaling {embeds_scaling!r}; one of {', '.join(EMBEDS_SCALING)}")
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise ValueError(f"start_at/end_at must satisfy 0 <= start_at <= end_at <= 1, got {start_at}, {end_at}")
    check_weight_type(weight_type)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
            raise ValueError("attn_mask must be a MASK (B, H, W) or (H, W)")
        mask = (mask if mask.ndim == 3 else mask[None])[:1].float().cpu()  # (1, H, W)
    cond = adapter.project(combine(cond_embeds, combine_embeds))  # (B', T, C)
    uncond = adapter.project(uncond_embeds[:1])  # (1, T, C)
    if cond.shape[0] > 1:  # concat: every image's tokens side by side
        cond = cond.reshape(1, -1, cond.shape[-1])
        uncond = uncond.repeat(1, cond.shape[1] // uncond.shape[1], 1)
    return IPAdapterUse(adapter, cond, uncond, float(weight), weight_type, sdxl, float(start_at), float(end_at),
                        embeds_scaling, mask)


# -- the per-call data and the processor ------------------------------------------------------------------------
@dataclass
class ImagePromptRows:
    """One use's tokens for one UNet call: (N, T, C) tokens and (N,) row factors (0 for rows without it)."""

    use: IPAdapterUse
    tokens: torch.Tensor
    rows: torch.Tensor


@dataclass
class ImagePromptCall:
    """Everything the IP processors need for one UNet call (passed as cross_attention_kwargs["ip_hidden_states"])."""

    entries: list[ImagePromptRows]
    latent_hw: tuple[int, int] | None = None  # the UNet input's (h, w): places attention masks on each level


def _mask_tokens(mask: torch.Tensor, latent_hw: tuple[int, int] | None, length: int) -> torch.Tensor | None:
    """A (1, H, W) mask as (1, L, 1) weights over a layer's L image tokens (the level found from the latent size)."""
    if latent_hw is None:
        return None
    h, w = latent_hw
    for level in range(6):
        d = 2 ** level
        lh, lw = -(-h // d), -(-w // d)
        if lh * lw == length:
            m = torch.nn.functional.interpolate(mask[None], size=(lh, lw), mode="bilinear", align_corners=False)
            return m.reshape(1, length, 1)
    return None


class IPAttnProcessor:
    """A cross-attention processor: the wrapped processor's output plus the image-prompt attention of each use."""

    def __init__(self, base: Any, key: str, block: int, kind: str = "") -> None:
        self.base, self.key, self.block, self.kind = base, key, block, kind

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 ip_hidden_states: ImagePromptCall | None = None, **kwargs: Any) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if ip_hidden_states is None or hidden_states.ndim != 3:
            return out
        q = None
        extra = None
        for entry in ip_hidden_states.entries:
            w = entry.use.weight_at(self.block, self.kind)
            layer = entry.use.adapter.ip_adapter[self.key] if self.key in entry.use.adapter.ip_adapter else None
            if w == 0.0 or layer is None:
                continue
            if q is None:
                q = attn.to_q(hidden_states)  # (N, L, inner)
            n = q.shape[0]
            tokens = entry.tokens.to(q.device, layer.to_k_ip.weight.dtype)
            rows = entry.rows.to(q.device, q.dtype).view(n, 1, 1)  # (N, 1, 1): 1 where the row carries the use
            k = layer.to_k_ip(tokens).to(q.dtype)
            v = layer.to_v_ip(tokens).to(q.dtype)
            k, v = _scaled(k, v, w, entry.use.scaling)

            def heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, inner) → (N, h, L, d)
                return t.reshape(n, t.shape[1], attn.heads, -1).transpose(1, 2)

            ip = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
            ip = ip.transpose(1, 2).reshape(n, q.shape[1], -1) * rows
            if entry.use.mask is not None:
                m = _mask_tokens(entry.use.mask, ip_hidden_states.latent_hw, q.shape[1])
                if m is not None:
                    ip = ip * m.to(ip.device, ip.dtype)
            extra = ip if extra is None else extra + ip
        if extra is None:
            return out
        # to_out[0] is linear: to_out(a + b) = to_out(a) + W·b, so the image term joins after the base processor.
        return out + torch.nn.functional.linear(extra, attn.to_out[0].weight) / attn.rescale_output_factor


def _scaled(k: torch.Tensor, v: torch.Tensor, w: float, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The image keys/values (N, T, inner) weighted as the IPAdapter node's embeds_scaling modes."""
    if scaling == "V only":
        return k, v * w
    if scaling == "K+V":
        return k * w, v * w
    w = w * k.shape[-1] / 1280.0  # "C penalty": narrower layers get less
    if scaling == "K+V w/ C penalty":
        return k * w, v * w
    mean = v.mean(dim=1, keepdim=True)  # K+mean(V) w/ C penalty
    return k * w, (v - mean) + mean * w


def _transformer_order(names: Sequence[str]) -> dict[str, int]:
    """Transformer prefix (e.g. "down_blocks.1.attentions.0") → index in execution order (down, mid, up)."""
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    prefixes = set()
    for name in names:
        m = re.match(r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.(\d+)\.", name)
        if m:
            prefixes.add(f"{m.group(1)}.attentions.{m.group(2)}")

    def key(p: str) -> tuple[int, int, int]:
        parts = p.split(".")
        if parts[0] == "mid_block":
            return (1, 0, int(parts[2]))
        return (stage[parts[0]], int(parts[1]), int(parts[3]))

    return {p: i for i, p in enumerate(sorted(prefixes, key=key))}


def cross_attention_layers(unet: Any) -> list[tuple[str, str, int]]:
    """(processor name, ip_adapter key, transformer index, block kind) of each cross-attention layer, in processor
    order; kind is "input" / "middle" / "output" (ComfyUI's names for down / mid / up blocks)."""
    names = list(unet.attn_processors)
    order = _transformer_order(names)
    out, key = [], 1
    for name in names:
        if not name.endswith("attn2.processor") or "motion_modules" in name:
            continue
        m = re.match(r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.(\d+)\.", name)
        block = order[f"{m.group(1)}.attentions.{m.group(2)}"] if m else -1
        kind = {"d": "input", "m": "middle", "u": "output"}[name[0]] if m else ""
        out.append((name, str(key), block, kind))
        key += 2
    return out


def check_fits(adapter: Any, unet: Any) -> None:
    """Raise a clear ValueError when an IP-Adapter was made for another UNet (layer count or widths differ)."""
    layers = cross_attention_layers(unet)
    keys = {k for _, k, _, _ in layers}
    if set(adapter.ip_adapter.keys()) != keys:
        raise ValueError(f"IP-Adapter {adapter.name!r} has {len(adapter.ip_adapter)} cross-attention layers but the "
                         f"model has {len(layers)}: it was made for another model family (SD1.x vs SDXL)")
    for name, key, _, _ in layers:
        attn = unet.get_submodule(name[: -len(".processor")])
        layer = adapter.ip_adapter[key]
        if layer.to_k_ip.out_features != attn.to_k.out_features or \
                layer.to_k_ip.in_features != adapter.cross_dim:
            raise ValueError(f"IP-Adapter {adapter.name!r} does not fit this model's attention widths "
                             f"(layer {key}): it was made for another model family")


@contextmanager
def installed(unet: Any, uses: Sequence[IPAdapterUse]) -> Iterator[None]:
    """IP processors on the UNet's cross-attention layers while the block runs (nothing when `uses` is empty)."""
    if not uses:
        yield
        return
    for use in uses:
        check_fits(use.adapter, unet)
    originals = dict(unet.attn_processors)
    new = dict(originals)
    for name, key, block, kind in cross_attention_layers(unet):
        new[name] = IPAttnProcessor(originals[name], key, block, kind)
    unet.set_attn_processor(new)
    try:
        yield
    finally:
        unet.set_attn_processor(originals)


def attach(items: list, uses: Sequence[IPAdapterUse], model_sampling: Any) -> list:
    """Conditioning items marked with the uses and their sigma windows (extra["ipadapter"])."""
    if not uses:
        return items
    marks = tuple((u, model_sampling.percent_to_sigma(u.start_percent), model_sampling.percent_to_sigma(u.end_percent))
                  for u in uses)
    return [it.with_(extra={**it.extra, "ipadapter": (*it.extra.get("ipadapter", ()), *marks)}) for it in items]


def unet_kwargs(items: list, negs: list[bool], sigma: float,
                latent_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """The UNet's cross_attention_kwargs for one call: each active use's tokens per row (uncond on negative rows);
    `latent_hw`: the UNet input's size, for attention masks (masked uses apply everywhere without it)."""
    groups: dict[int, tuple[tuple, list[int]]] = {}
    for row, item in enumerate(items):
        for mark in item.extra.get("ipadapter", ()):
            groups.setdefault(id(mark[0]), (mark, []))[1].append(row)
    entries = []
    n = len(items)
    for (use, s_start, s_end), rows in groups.values():
        if not (s_end <= sigma <= s_start) or use.weight == 0.0:
            continue
        tokens = torch.zeros((n, use.cond.shape[1], use.cond.shape[2]))
        factor = torch.zeros(n)
        for r in rows:
            tokens[r] = (use.uncond if negs[r] else use.cond)[0]
            factor[r] = 1.0
        entries.append(ImagePromptRows(use, tokens, factor))
    if not entries:
        return {}
    return {"cross_attention_kwargs": {"ip_hidden_states": ImagePromptCall(entries, latent_hw)}}
