"""MiDaS v3 DPT-Hybrid (relative inverse depth) through transformers' hybrid DPTForDepthEstimation; normals from it.

Ranftl et al., "Vision Transformers for Dense Prediction" (ICCV 2021). `dpt_hybrid-midas-501f0c75.pt` (from
lllyasviel/Annotators) is the original MiDaS state dict: timm's ViT-B/16 hybrid (a BiT ResNet-50 stem and three
stages, 3-4-9 bottlenecks with weight-standardised convs and GroupNorm, then 12 ViT blocks at 768 wide) under
`pretrained.model.`, the readout/reassemble layers of blocks 9 and 12 under `pretrained.act_postprocess3/4`, and the
fusion decoder and head under `scratch.`. `convert_state_dict` renames them to transformers' layout (the mapping of
transformers' convert_dpt_hybrid_to_pytorch.py; the ImageNet classifier `pretrained.model.head` is dropped).

As the A1111 extension: the picture is scaled so its short side is the processor resolution and edge-padded to a
multiple of 64; pixels go in as x / 127.5 - 1 (mean/std 0.5) at that size. `depth` min-max normalises the
prediction to 0..255 (near = white). `normal_map` takes the x/y Sobel gradients of the raw prediction (zeroed where
the normalised depth is below the background threshold, threshold_a, default 0.4), z = 2π, normalises the vector and
maps it to 0..255 (R = x, G = y, B = z).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .annotator_depth import convert_state_dict as depth_anything_keys
from .annotators import NETWORKS, AnnotatorFileError, load_exact, pad_to_multiple, read_weights

PATCH = 16
#: ViT blocks (0-based) whose tokens feed the decoder; the first two decoder inputs are ResNet stages 1 and 2.
OUT_INDICES = (2, 5, 8, 11)
#: z of the normal vector (the extension's `a`).
NORMAL_Z = 2.0 * math.pi
DEFAULT_BACKGROUND = 0.4
#: Keys the original checkpoint carries that darkroom does not use (timm's ImageNet classifier).
UNUSED_KEYS = ("pretrained.model.head.weight", "pretrained.model.head.bias")


def midas_config(image_size: int = 384) -> Any:
    """transformers DPTConfig of MiDaS v3 DPT-Hybrid (as Intel/dpt-hybrid-midas)."""
    from transformers import DPTConfig

    backbone = {"global_padding": "same", "layer_type": "bottleneck", "depths": [3, 4, 9],
                "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True}
    return DPTConfig(is_hybrid=True, backbone_config=backbone, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, image_size=image_size, patch_size=PATCH,
                     backbone_out_indices=list(OUT_INDICES), reassemble_factors=[1, 1, 1, 0.5],
                     neck_hidden_sizes=[256, 512, 768, 768], fusion_hidden_size=256,
                     backbone_featmap_shape=[1, 1024, image_size // PATCH, image_size // PATCH],
                     neck_ignore_stages=[0, 1], readout_type="project", use_batch_norm_in_fusion_residual=False)


_STEM = {
    "pretrained.model.cls_token": "dpt.embeddings.cls_token",
    "pretrained.model.pos_embed": "dpt.embeddings.position_embeddings",
    "pretrained.model.patch_embed.proj.weight": "dpt.embeddings.projection.weight",
    "pretrained.model.patch_embed.proj.bias": "dpt.embeddings.projection.bias",
    "pretrained.model.patch_embed.backbone.stem.conv.weight": "dpt.embeddings.backbone.bit.embedder.convolution.weight",
    "pretrained.model.patch_embed.backbone.stem.norm.weight": "dpt.embeddings.backbone.bit.embedder.norm.weight",
    "pretrained.model.patch_embed.backbone.stem.norm.bias": "dpt.embeddings.backbone.bit.embedder.norm.bias",
    "pretrained.model.norm.weight": "dpt.layernorm.weight",
    "pretrained.model.norm.bias": "dpt.layernorm.bias",
    "pretrained.act_postprocess3.0.project.0.weight": "neck.reassemble_stage.readout_projects.2.0.weight",
    "pretrained.act_postprocess3.0.project.0.bias": "neck.reassemble_stage.readout_projects.2.0.bias",
    "pretrained.act_postprocess4.0.project.0.weight": "neck.reassemble_stage.readout_projects.3.0.weight",
    "pretrained.act_postprocess4.0.project.0.bias": "neck.reassemble_stage.readout_projects.3.0.bias",
    "pretrained.act_postprocess3.3.weight": "neck.reassemble_stage.layers.2.projection.weight",
    "pretrained.act_postprocess3.3.bias": "neck.reassemble_stage.layers.2.projection.bias",
    "pretrained.act_postprocess4.3.weight": "neck.reassemble_stage.layers.3.projection.weight",
    "pretrained.act_postprocess4.3.bias": "neck.reassemble_stage.layers.3.projection.bias",
    "pretrained.act_postprocess4.4.weight": "neck.reassemble_stage.layers.3.resize.weight",
    "pretrained.act_postprocess4.4.bias": "neck.reassemble_stage.layers.3.resize.bias",
}
_VIT_PARTS = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")


def convert_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """Original MiDaS DPT-Hybrid keys → transformers DPTForDepthEstimation keys (fused qkv split in three)."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key in UNUSED_KEYS:
            continue
        if key in _STEM:
            out[_STEM[key]] = value
        elif m := re.fullmatch(r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            out[f"dpt.embeddings.backbone.bit.encoder.stages.{m.group(1)}.layers.{m.group(2)}.{m.group(3)}"] = value
        elif m := re.fullmatch(r"pretrained\.model\.blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, part, kind = f"dpt.encoder.layer.{m.group(1)}", m.group(2), m.group(3)
            if part == "attn.qkv":
                for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{layer}.{name}.{kind}"] = chunk
            else:
                out[f"{layer}.{_VIT_PARTS.get(part, part)}.{kind}"] = value
        elif re.fullmatch(r"scratch\.(layer\d_rn|refinenet\d\..+)\.(weight|bias)", key):
            # the same DPT decoder as Depth Anything's `depth_head.scratch` (refinenet4, the deepest, fuses first)
            out.update(depth_anything_keys({f"depth_head.{key}": value}, set()))
        elif m := re.fullmatch(r"scratch\.output_conv\.(\d)\.(weight|bias)", key):
            out[f"head.head.{m.group(1)}.{m.group(2)}"] = value
        else:
            out[key] = value  # reported as unexpected by load_exact
    return out


def _any_size_embeddings(embeddings_module: Any) -> None:
    """Let one DPTViTHybridEmbeddings instance take any multiple of 16 (its position embeddings resized bilinearly,
    as MiDaS does) instead of only the configured size."""
    base = type(embeddings_module)

    class AnySizeHybridEmbeddings(base):  # type: ignore[misc, valid-type]
        def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> Any:
            return super().forward(pixel_values, interpolate_pos_encoding=True)

    embeddings_module.__class__ = AnySizeHybridEmbeddings


def load_midas_model(path: Path) -> Any:
    """An original MiDaS v3 DPT-Hybrid checkpoint → DPTForDepthEstimation (float32, eval)."""
    from transformers import DPTForDepthEstimation

    sd = read_weights(path)
    pos = sd.get("pretrained.model.pos_embed")
    if pos is None or pos.ndim != 3 or math.isqrt(int(pos.shape[1]) - 1) ** 2 != int(pos.shape[1]) - 1:
        raise AnnotatorFileError(f"{path} is not a MiDaS DPT-Hybrid checkpoint (no square pretrained.model.pos_embed)")
    image_size = math.isqrt(int(pos.shape[1]) - 1) * PATCH  # 384 for the released file
    with torch.device("meta"):
        model = DPTForDepthEstimation(midas_config(image_size))
    model = load_exact(model, convert_state_dict(sd), path, "MiDaS DPT-Hybrid", assign=True)
    _any_size_embeddings(model.dpt.embeddings)
    return model


@torch.no_grad()
def forward_depth(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1], H and W multiples of 32 → (B, H, W) relative inverse depth.

    transformers' own forward reshapes the hybrid's tokens to a square grid; this passes the real grid to the neck.
    """
    h, w = pixels.shape[-2:]
    if h % 32 or w % 32:
        raise ValueError(f"MiDaS input must be a multiple of 32 on each side (got {h}×{w})")
    out = model.dpt(pixels, output_hidden_states=True)
    tokens = [out.hidden_states[i + 1] for i in model.config.backbone_out_indices[2:]]  # (B, 1 + h/16·w/16, 768)
    features = list(out.intermediate_activations) + tokens  # ResNet (B, 256, h/4, w/4), (B, 512, h/8, w/8); tokens
    features = model.neck(features, h // PATCH, w // PATCH)
    return model.head(features)  # (B, H, W)


def predict_depth(model: Any, rgb: np.ndarray) -> np.ndarray:
    """Relative inverse depth (H, W) float32 of an RGB uint8 image whose sides are multiples of 32."""
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 127.5 - 1.0  # (3, H, W)
    return forward_depth(model, x[None].to(param.device, param.dtype))[0].float().cpu().numpy()


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """Min-max to 0..255 uint8 (truncated, as the extension); a flat map is black."""
    lo, hi = float(depth.min()), float(depth.max())
    if not hi > lo:
        return np.zeros(depth.shape, np.uint8)
    return ((depth - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)


def depth_to_normal(depth: np.ndarray, background: float = DEFAULT_BACKGROUND, z: float = NORMAL_Z) -> np.ndarray:
    """The extension's normal map of a depth prediction (H, W) → (H, W, 3) uint8.

    x, y: 3×3 Sobel gradients of the raw depth (float32), set to 0 where the min-max normalised depth is below
    `background`; the vector (x, y, z) is normalised and mapped as n · 127.5 + 127.5.
    """
    import cv2

    d = depth.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    rel = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)
    gx[rel < background] = 0
    gy[rel < background] = 0
    normal = np.stack([gx, gy, np.full_like(gx, z)], axis=2)  # (H, W, 3)
    normal /= np.sqrt(np.sum(normal ** 2, axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        threshold_a: float = -1, **_: Any) -> np.ndarray:
    """depth → (H, W) uint8 near = white; normal_map → (H, W, 3) uint8; both at the processor resolution."""
    from .preprocess import resize_short_side

    model = NETWORKS.get(files[0], device, load_midas_model)
    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    depth = predict_depth(model, padded)
    if preprocessor == "normal_map":
        background = threshold_a if threshold_a >= 0 else DEFAULT_BACKGROUND
        return unpad(depth_to_normal(depth, background))
    return unpad(depth_to_uint8(depth))
