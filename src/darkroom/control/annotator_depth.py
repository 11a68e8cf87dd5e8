"""Depth Anything V1 and V2 (relative depth) through transformers' DepthAnythingForDepthEstimation.

Yang et al., "Depth Anything" (CVPR 2024) and "Depth Anything V2" (NeurIPS 2024): a DINOv2 ViT (S/B/L, patch 14)
and a DPT head. The original checkpoints (`depth_anything_vitl14.pth`, `depth_anything_v2_vitl.pth`, their vitb/vits
siblings, and safetensors copies of V2) store the backbone under `pretrained.` (timm-style DINOv2: fused `attn.qkv`,
`ls1.gamma`) and the head under `depth_head.` (`projects`, `resize_layers`, `scratch.layerN_rn`,
`scratch.refinenetN`, `scratch.output_conv1/2`); `convert_state_dict` renames them to transformers' layout (the
mapping of transformers' convert_depth_anything_to_hf.py). The size comes from the tensors' shapes. V1 feeds the head
the last four blocks, V2 four spread-out blocks (ViT-S/B: 3, 6, 9, 12; ViT-L: 5, 12, 18, 24; 1-based).

As the A1111 extension: the picture (at the processor resolution) is scaled so its short side is 518 with both sides
multiples of 14 (cubic), normalised with ImageNet's mean/std; the predicted relative inverse depth is resized back
(bilinear) and min-max normalised to 0..255, so near is white.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .annotators import NETWORKS, AnnotatorFileError, load_exact, read_weights

INPUT_SIZE = 518
PATCH = 14
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: V2's blocks feeding the DPT head (1-based transformers hidden-state indices), by backbone depth.
V2_OUT_INDICES = {12: (3, 6, 9, 12), 24: (5, 12, 18, 24)}


def checkpoint_shape(sd: dict[str, Any]) -> dict[str, Any]:
    """The architecture numbers an original Depth Anything state dict implies (AnnotatorFileError if it is not one)."""
    try:
        pos = sd["pretrained.pos_embed"]  # (1, 1 + grid², hidden)
        hidden = int(pos.shape[-1])
        patch = int(sd["pretrained.patch_embed.proj.weight"].shape[-1])
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k)))
        mlp = int(sd["pretrained.blocks.0.mlp.fc1.weight"].shape[0])
        neck = [int(sd[f"depth_head.projects.{i}.weight"].shape[0]) for i in range(4)]
        features = int(sd["depth_head.scratch.layer1_rn.weight"].shape[0])
        head_hidden = int(sd["depth_head.scratch.output_conv2.0.weight"].shape[0])
    except (KeyError, ValueError) as e:
        raise AnnotatorFileError(f"not a Depth Anything checkpoint (no {e})") from None
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if mlp % hidden or hidden % 64 or grid * grid != int(pos.shape[1]) - 1:
        raise AnnotatorFileError(f"not a released Depth Anything size (width {hidden}, MLP {mlp}, "
                                 f"{int(pos.shape[1]) - 1} positions)")
    return {"hidden": hidden, "patch": patch, "layers": layers, "heads": hidden // 64, "mlp_ratio": mlp // hidden,
            "image_size": grid * patch, "neck": neck, "features": features, "head_hidden": head_hidden}


def depth_config(shape: dict[str, Any], version: int) -> Any:
    """transformers DepthAnythingConfig for a checkpoint's shape; V1 takes the last 4 blocks, V2 spread-out ones."""
    from transformers import DepthAnythingConfig, Dinov2Config

    layers = shape["layers"]
    if version == 1:
        out_indices = tuple(range(layers - 3, layers + 1))
    elif layers in V2_OUT_INDICES:
        out_indices = V2_OUT_INDICES[layers]
    else:
        raise AnnotatorFileError(f"Depth Anything V2 with {layers} blocks is not a released size (S, B or L)")
    backbone = Dinov2Config(hidden_size=shape["hidden"], num_hidden_layers=layers, num_attention_heads=shape["heads"],
                            mlp_ratio=shape["mlp_ratio"], image_size=shape["image_size"], patch_size=shape["patch"],
                            out_indices=list(out_indices), apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=shape["patch"],
                               reassemble_hidden_size=shape["hidden"], neck_hidden_sizes=shape["neck"],
                               fusion_hidden_size=shape["features"], head_hidden_size=shape["head_hidden"],
                               depth_estimation_type="relative")


_STEM = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
    "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
    "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
    "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
    "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
    "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
    "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
}
_BLOCK_PARTS = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def attention_names(model_keys: set[str]) -> tuple[tuple[str, str, str], str]:
    """transformers' names for a DINOv2 layer's q/k/v and output projections (they changed in transformers 5)."""
    if "backbone.encoder.layer.0.attention.q_proj.weight" in model_keys:
        return ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"
    return (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
            "attention.output.dense")


def convert_state_dict(sd: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Original Depth Anything keys → transformers DepthAnythingForDepthEstimation keys (fused qkv split in three)."""
    qkv_names, out_name = attention_names(model_keys)
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key in _STEM:
            out[_STEM[key]] = value
        elif m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key):
            layer, part, kind = f"backbone.encoder.layer.{m.group(1)}", m.group(2), m.group(3)
            if part == "attn.qkv":
                for name, chunk in zip(qkv_names, value.chunk(3, dim=0)):
                    out[f"{layer}.{name}.{kind}"] = chunk
            elif part == "attn.proj":
                out[f"{layer}.{out_name}.{kind}"] = value
            elif part in ("ls1", "ls2"):
                out[f"{layer}.layer_scale{part[2]}.lambda1"] = value
            else:
                out[f"{layer}.{_BLOCK_PARTS.get(part, part)}.{kind}"] = value
        elif m := re.fullmatch(r"depth_head\.projects\.(\d)\.(weight|bias)", key):
            out[f"neck.reassemble_stage.layers.{m.group(1)}.projection.{m.group(2)}"] = value
        elif m := re.fullmatch(r"depth_head\.resize_layers\.(\d)\.(weight|bias)", key):
            out[f"neck.reassemble_stage.layers.{m.group(1)}.resize.{m.group(2)}"] = value
        elif m := re.fullmatch(r"depth_head\.scratch\.layer(\d)_rn\.weight", key):
            out[f"neck.convs.{int(m.group(1)) - 1}.weight"] = value
        elif m := re.fullmatch(r"depth_head\.scratch\.refinenet(\d)\.(.+)\.(weight|bias)", key):
            stage = f"neck.fusion_stage.layers.{4 - int(m.group(1))}"  # refinenet4 (deepest) fuses first
            part = m.group(2)
            if part == "out_conv":
                out[f"{stage}.projection.{m.group(3)}"] = value
            elif r := re.fullmatch(r"resConfUnit(\d)\.conv(\d)", part):
                out[f"{stage}.residual_layer{r.group(1)}.convolution{r.group(2)}.{m.group(3)}"] = value
            else:
                out[key] = value
        else:
            out[key] = value  # reported as unexpected by load_exact
    return out


def dinov2_position_embeddings(pos: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """DINOv2's own position-embedding resize (bicubic by scale factor (grid + 0.1) / 37, as the checkpoints were
    trained and run; transformers resizes to an exact size, which samples slightly different points)."""
    import torch.nn.functional as F

    n = pos.shape[1] - 1
    side = math.isqrt(n)
    gh, gw = height // patch, width // patch
    if gh * gw == n and height == width:
        return pos
    grid = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, 37, 37)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                         antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
    return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)


def _original_position_embeddings(embeddings_module: Any) -> None:
    """Make one transformers Dinov2Embeddings instance resize its position embeddings as DINOv2 does."""
    base = type(embeddings_module)

    class OriginalDinov2Embeddings(base):  # type: ignore[misc, valid-type]
        def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
            return dinov2_position_embeddings(self.position_embeddings, height, width, int(self.patch_size))

    embeddings_module.__class__ = OriginalDinov2Embeddings


def load_depth_model(path: Path, version: int) -> Any:
    """An original Depth Anything V1/V2 checkpoint → DepthAnythingForDepthEstimation (float32, eval)."""
    from transformers import DepthAnythingForDepthEstimation

    sd = read_weights(path)
    try:
        config = depth_config(checkpoint_shape(sd), version)
    except AnnotatorFileError as e:
        raise AnnotatorFileError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    keys = set(model.state_dict())
    converted = convert_state_dict(sd, keys)
    if "backbone.embeddings.mask_token" not in converted:  # only used in training; some copies drop it
        converted["backbone.embeddings.mask_token"] = torch.zeros(tuple(model.state_dict()[
            "backbone.embeddings.mask_token"].shape))
    model = load_exact(model, converted, path, f"Depth Anything V{version}", assign=True)
    _original_position_embeddings(model.backbone.embeddings)
    return model


def network_size(height: int, width: int, size: int = INPUT_SIZE, multiple: int = PATCH) -> tuple[int, int]:
    """(height, width) the picture is resized to: short side ≥ size, both multiples of 14, aspect kept."""
    scale = max(size / height, size / width)

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return y if y >= size else int(np.ceil(x / multiple) * multiple)

    return constrain(scale * height), constrain(scale * width)


@torch.no_grad()
def predict_depth(model: Any, rgb: np.ndarray, input_size: int | None = None) -> np.ndarray:
    """Relative inverse depth (H, W) float32 of an RGB uint8 image (bigger = nearer); input_size: INPUT_SIZE."""
    import cv2
    import torch.nn.functional as F

    h, w = rgb.shape[:2]
    nh, nw = network_size(h, w, input_size or INPUT_SIZE)
    x = cv2.resize(rgb.astype(np.float64) / 255.0, (nw, nh), interpolation=cv2.INTER_CUBIC)
    x = ((x - np.array(MEAN)) / np.array(STD)).astype(np.float32)
    param = next(model.parameters())
    pixels = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(param.device, param.dtype)
    depth = model(pixel_values=pixels).predicted_depth  # (1, nh, nw)
    depth = F.interpolate(depth[:, None].float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
    return depth.cpu().numpy()


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Min-max to 0..255 uint8 (truncated, as the extension); a flat map is black."""
    lo, hi = float(depth.min()), float(depth.max())
    if not hi > lo:
        return np.zeros(depth.shape, np.uint8)
    return ((depth - lo) / (hi - lo) * 255.0).astype(np.uint8)


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """depth_anything / depth_anything_v2 → (H, W) uint8 at the processor resolution, near = white."""
    from .preprocess import resize_short_side

    version = 2 if preprocessor == "depth_anything_v2" else 1
    model = NETWORKS.get(files[0], device, lambda p: load_depth_model(p, version))
    return normalise_depth(predict_depth(model, resize_short_side(image, resolution)))
