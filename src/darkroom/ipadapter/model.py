"""IP-Adapter weights: the image projection (plain linear, "plus" perceiver resampler, full-face MLP) and the
per-layer key/value projections of the image tokens, from `.safetensors` files with `image_proj.*` + `ip_adapter.*`
keys (the layout the IP-Adapter releases and ComfyUI use) or, where the `allow_unsafe_pickle` setting allows, from the
original pickled releases (h94/IP-Adapter's `.bin`, the A1111 ControlNet extension's `.pth` copies): a torch.save of
`{"image_proj": {...}, "ip_adapter": {...}}`, read with `torch.load(weights_only=True)` and flattened to those keys.

`ip_adapter.{n}.to_k_ip/to_v_ip` are numbered over the UNet's attention processors in `unet.attn_processors` order,
self-attention included: the cross-attention layers are 1, 3, 5, …
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..models.errors import ModelFileError, UnsafeModelFileError
from ..models.files import SAFETENSORS_SUFFIXES, is_pickle, torch_load_weights, unsafe_pickle_error

#: Head size of the plus resampler's attention in every released model.
_RESAMPLER_HEAD_DIM = 64


class IPAdapterFormatError(ValueError):
    """A file that is not an IP-Adapter in a layout darkroom reads."""


class PlainProjection(nn.Module):
    """Projected CLIP embedding (B, P) → T tokens (B, T, C), layer-normed."""

    def __init__(self, clip_dim: int, cross_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        self.proj = nn.Linear(clip_dim, tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).reshape(x.shape[0], self.tokens, self.cross_dim))


class MLPProjection(nn.Module):
    """Full-face: each hidden state (B, N, H) → (B, N, C) through Linear-GELU-Linear-LayerNorm (keys proj.0/2/3)."""

    def __init__(self, clip_dim: int, cross_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(clip_dim, clip_dim), nn.GELU(), nn.Linear(clip_dim, cross_dim),
                                  nn.LayerNorm(cross_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _PerceiverAttention(nn.Module):
    """Learned queries attend to (image tokens ‖ queries)."""

    def __init__(self, dim: int, inner: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, inner) → (B, h, L, d)
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.to_out(out.transpose(1, 2).reshape(b, q_len, -1))


class Resampler(nn.Module):
    """"plus" / "plus-face": penultimate hidden states (B, N, H) → Q learned-query tokens (B, Q, C)."""

    def __init__(self, clip_dim: int, dim: int, cross_dim: int, queries: int, depth: int, inner: int,
                 ff_inner: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_in = nn.Linear(clip_dim, dim)
        self.proj_out = nn.Linear(dim, cross_dim)
        self.norm_out = nn.LayerNorm(cross_dim)
        heads = max(1, inner // _RESAMPLER_HEAD_DIM)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, inner, heads),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_inner, bias=False), nn.GELU(),
                                         nn.Linear(ff_inner, dim, bias=False))])
            for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPLayer(nn.Module):
    """One cross-attention layer's image key/value projections."""

    def __init__(self, cross_dim: int, k_out: int, v_out: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, k_out, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, v_out, bias=False)


class IPAdapterModel(nn.Module):
    """IPADAPTER: image projection + per-layer image K/V. kind: "plain", "plus" (incl. plus-face) or "full"."""

    def __init__(self, kind: str, image_proj: nn.Module, layers: dict[str, IPLayer], name: str = "") -> None:
        super().__init__()
        self.kind, self.name = kind, name
        self.image_proj = image_proj
        self.ip_adapter = nn.ModuleDict(layers)

    def __repr__(self) -> str:
        return f"IPAdapterModel({self.name!r}, kind={self.kind}, layers={len(self.ip_adapter)})"

    @property
    def uses_hidden_states(self) -> bool:
        """Whether the projection reads the penultimate hidden states (plus, full) rather than image_embeds."""
        return self.kind != "plain"

    @property
    def cross_dim(self) -> int:
        return next(iter(self.ip_adapter.values())).to_k_ip.in_features

    @torch.no_grad()
    def project(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP embeds ((B, P) or (B, N, H)) → image-prompt tokens (B, T, C) in float32."""
        p = next(self.parameters())
        return self.image_proj(clip_embeds.to(p.device, p.dtype)).float()


def _proj_from(sd: dict[str, torch.Tensor]) -> tuple[str, nn.Module]:
    """Detect and build the image projection from `image_proj.*` tensors (prefix stripped)."""
    if "latents" in sd:
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
        queries, dim = sd["latents"].shape[1], sd["latents"].shape[2]
        module: nn.Module = Resampler(
            clip_dim=sd["proj_in.weight"].shape[1], dim=dim, cross_dim=sd["proj_out.weight"].shape[0],
            queries=queries, depth=depth, inner=sd["layers.0.0.to_q.weight"].shape[0],
            ff_inner=sd["layers.0.1.1.weight"].shape[0])
        kind = "plus"
    elif "proj.3.weight" in sd:
        module, kind = MLPProjection(sd["proj.0.weight"].shape[1], sd["proj.2.weight"].shape[0]), "full"
    elif "proj.weight" in sd and "norm.weight" in sd:
        cross = sd["norm.weight"].shape[0]
        module = PlainProjection(sd["proj.weight"].shape[1], cross, sd["proj.weight"].shape[0] // cross)
        kind = "plain"
    else:
        raise IPAdapterFormatError(
            "unknown image projection (FaceID models and others that need insightface are not supported); "
            f"image_proj keys: {sorted(sd)[:6]}")
    module.load_state_dict(sd)
    return kind, module


def ipadapter_from_state_dict(sd: dict[str, torch.Tensor], name: str = "") -> IPAdapterModel:
    """Build an IP-Adapter from a flat state dict with `image_proj.*` and `ip_adapter.*` keys."""
    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in sd.items() if k.startswith("ip_adapter.")}
    if not proj or not ip:
        raise IPAdapterFormatError(f"{name or 'file'}: not an IP-Adapter (needs image_proj.* and ip_adapter.* keys)")
    kind, module = _proj_from(proj)
    layers: dict[str, IPLayer] = {}
    for key in sorted({k.split(".")[0] for k in ip}, key=int):
        k_w, v_w = ip.get(f"{key}.to_k_ip.weight"), ip.get(f"{key}.to_v_ip.weight")
        if k_w is None or v_w is None:
            raise IPAdapterFormatError(f"{name or 'file'}: ip_adapter.{key} lacks to_k_ip/to_v_ip weights")
        layer = IPLayer(k_w.shape[1], k_w.shape[0], v_w.shape[0])
        layer.load_state_dict({"to_k_ip.weight": k_w, "to_v_ip.weight": v_w})
        layers[key] = layer
    return IPAdapterModel(kind, module, layers, name=name).eval()


def _flatten(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an unpickled IP-Adapter: the nested `{"image_proj": {...}, "ip_adapter": {...}}` as
    `image_proj.*` / `ip_adapter.*` keys (tensors at the top level kept as they are)."""
    if not isinstance(obj, dict):
        raise IPAdapterFormatError(f"{path.name}: not an IP-Adapter (holds a {type(obj).__name__}, not a dict)")
    flat: dict[str, torch.Tensor] = {}
    for top, value in obj.items():
        if isinstance(value, torch.Tensor):
            flat[str(top)] = value
        elif isinstance(value, dict):
            flat.update({f"{top}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return flat


def pickle_refusal(path: Path) -> UnsafeModelFileError:
    """`unsafe_pickle_error` for an IP-Adapter pickle, with the conversion that keeps its nested tensors (the
    generic one only keeps top-level tensors, and an IP-Adapter has none)."""
    path = Path(path)
    base = unsafe_pickle_error(path)
    return UnsafeModelFileError(
        f"{base}\nAn IP-Adapter {path.suffix} nests its tensors under 'image_proj' and 'ip_adapter', which the "
        f"first command leaves out; convert it with:\n"
        f"  python -c \"import torch, safetensors.torch as st; sd = torch.load('{path.name}', map_location='cpu', "
        f"weights_only=True); st.save_file({{f'{{g}}.{{k}}': v.contiguous() for g, d in sd.items() "
        f"for k, v in d.items()}}, '{path.with_suffix('.safetensors').name}')\"")


def read_pickled_ipadapter(path: Path | str, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The flat `image_proj.*` + `ip_adapter.*` tensors of a pickled IP-Adapter (`.bin`, `.pth`), on the CPU.

    Refused with `pickle_refusal` (how to convert it) unless allow_unsafe_pickle; then read with
    `torch.load(weights_only=True)`, memory-mapped where the file's format allows."""
    path = Path(path)
    if not allow_unsafe_pickle:
        raise pickle_refusal(path)
    if not path.is_file():
        raise ModelFileError(f"IP-Adapter file not found: {path}")
    return _flatten(torch_load_weights(path), path)


def read_ipadapter_state_dict(path: Path | str, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The flat `image_proj.*` + `ip_adapter.*` tensors of an IP-Adapter file: `.safetensors`, or a pickle when
    allow_unsafe_pickle (see `read_pickled_ipadapter`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if is_pickle(path):
        return read_pickled_ipadapter(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise IPAdapterFormatError(f"{path.name}: IP-Adapter files are .safetensors (or the pickled .bin/.pth)")
    return load_file(str(path))


def load_ipadapter(path: Path | str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   allow_unsafe_pickle: bool = False) -> IPAdapterModel:
    """Load an IP-Adapter file (`.safetensors`; a pickled `.bin`/`.pth` when allow_unsafe_pickle, else refused
    with `pickle_refusal`) onto a device and dtype."""
    path = Path(path)
    sd = read_ipadapter_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
    return ipadapter_from_state_dict(sd, name=path.stem).to(device, dtype)
