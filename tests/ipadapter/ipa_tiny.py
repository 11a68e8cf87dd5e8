"""Tiny CLIP vision encoders and IP-Adapters in the real key layouts (random weights), for the ipadapter tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from darkroom.ipadapter.attention import cross_attention_layers

#: A tiny CLIP vision encoder: 32 px images, 8 px patches (17 tokens), width 64, projection 32.
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1, image_size=32,
              patch_size=8, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5)


def tiny_clip_vision(seed: int = 0) -> torch.nn.Module:
    """A transformers CLIPVisionModelWithProjection with random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def write_clip_vision(path: Path, model: torch.nn.Module) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _rand(g: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale


def ipadapter_state_dict(unet, kind: str = "plain", *, clip_dim: int = 32, hidden: int = 64, tokens: int = 4,
                         seed: int = 1) -> dict[str, torch.Tensor]:
    """IP-Adapter tensors for `unet` in the released layout (image_proj.* + ip_adapter.N.to_k_ip/to_v_ip)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    sd: dict[str, torch.Tensor] = {}
    if kind == "plain":
        sd["image_proj.proj.weight"] = _rand(g, tokens * cross, clip_dim)
        sd["image_proj.proj.bias"] = _rand(g, tokens * cross)
        sd["image_proj.norm.weight"] = 1 + _rand(g, cross)
        sd["image_proj.norm.bias"] = _rand(g, cross)
    elif kind == "plus":
        dim, inner, ff = 48, 64, 192  # depth 4, ff_mult 4 as the released models
        sd["image_proj.latents"] = _rand(g, 1, tokens, dim, scale=1.0)
        sd["image_proj.proj_in.weight"], sd["image_proj.proj_in.bias"] = _rand(g, dim, hidden), _rand(g, dim)
        sd["image_proj.proj_out.weight"], sd["image_proj.proj_out.bias"] = _rand(g, cross, dim), _rand(g, cross)
        sd["image_proj.norm_out.weight"], sd["image_proj.norm_out.bias"] = 1 + _rand(g, cross), _rand(g, cross)
        for i in range(4):
            p = f"image_proj.layers.{i}."
            for n in ("norm1", "norm2"):
                sd[p + f"0.{n}.weight"], sd[p + f"0.{n}.bias"] = 1 + _rand(g, dim), _rand(g, dim)
            sd[p + "0.to_q.weight"] = _rand(g, inner, dim)
            sd[p + "0.to_kv.weight"] = _rand(g, 2 * inner, dim)
            sd[p + "0.to_out.weight"] = _rand(g, dim, inner)
            sd[p + "1.0.weight"], sd[p + "1.0.bias"] = 1 + _rand(g, dim), _rand(g, dim)
            sd[p + "1.1.weight"] = _rand(g, ff, dim)
            sd[p + "1.3.weight"] = _rand(g, dim, ff)
    elif kind == "full":
        sd["image_proj.proj.0.weight"], sd["image_proj.proj.0.bias"] = _rand(g, hidden, hidden), _rand(g, hidden)
        sd["image_proj.proj.2.weight"], sd["image_proj.proj.2.bias"] = _rand(g, cross, hidden), _rand(g, cross)
        sd["image_proj.proj.3.weight"], sd["image_proj.proj.3.bias"] = 1 + _rand(g, cross), _rand(g, cross)
    else:
        raise ValueError(kind)
    for name, key, _, _ in cross_attention_layers(unet):
        attn = unet.get_submodule(name[: -len(".processor")])
        sd[f"ip_adapter.{key}.to_k_ip.weight"] = _rand(g, attn.to_k.out_features, cross)
        sd[f"ip_adapter.{key}.to_v_ip.weight"] = _rand(g, attn.to_v.out_features, cross)
    return sd


def nested(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The {"image_proj": …, "ip_adapter": …} form diffusers' loader takes."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for k, v in sd.items():
        top, rest = k.split(".", 1)
        out[top][rest] = v
    return out
