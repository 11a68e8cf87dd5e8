"""CLIP vision encoders (OpenCLIP ViT-H/14, ViT-bigG/14, OpenAI ViT-L/14) from `.safetensors` files in the HF
`CLIPVisionModelWithProjection` layout (`vision_model.*`, `visual_projection.weight`), built offline with transformers
from a config inferred from the tensor shapes; ComfyUI's preprocessing (resize, centre crop, CLIP normalisation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

#: CLIP's image normalisation (mean, std per RGB channel).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Attention heads of the released encoders by width (head size is not in the weights).
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


class ClipVisionFormatError(ValueError):
    """A clip_vision file that is not a CLIP vision encoder in a layout darkroom reads."""


@dataclass
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what IP-Adapters read from an encoded image batch."""

    image_embeds: torch.Tensor  # (B, P) projected embedding
    penultimate_hidden_states: torch.Tensor  # (B, N, H) hidden states of the second-to-last layer
    last_hidden_state: torch.Tensor  # (B, N, H)


def clip_vision_config(sd: dict[str, torch.Tensor]):
    """A transformers `CLIPVisionConfig` for a state dict in the HF layout, from its shapes."""
    from transformers import CLIPVisionConfig

    prefix = "vision_model."
    need = [f"{prefix}embeddings.patch_embedding.weight", f"{prefix}embeddings.position_embedding.weight",
            "visual_projection.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ClipVisionFormatError(
            f"not a CLIP vision encoder in the Hugging Face layout (missing {', '.join(missing)}); darkroom reads "
            f"clip_vision files with vision_model.* and visual_projection keys (CLIPVisionModelWithProjection)")
    patch = sd[f"{prefix}embeddings.patch_embedding.weight"]  # (H, 3, p, p)
    hidden, channels, p = patch.shape[0], patch.shape[1], patch.shape[2]
    positions = sd[f"{prefix}embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ClipVisionFormatError(f"position embeddings of {positions} rows are not a square grid plus a class token")
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}encoder\.layers\.(\d+)\.", k)))
    inter = sd[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0]
    proj = sd["visual_projection.weight"].shape[0]
    heads = _HEADS.get(hidden, max(1, hidden // 64))
    # OpenAI's ViT-L/14 uses quick_gelu; the OpenCLIP (LAION) encoders that IP-Adapters use are plain gelu.
    act = "quick_gelu" if hidden == 1024 and p == 14 else "gelu"
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                            num_attention_heads=heads, num_channels=channels, image_size=grid * p, patch_size=p,
                            projection_dim=proj, hidden_act=act, layer_norm_eps=1e-5)


class ClipVision:
    """CLIP_VISION: a loaded image encoder and its input size."""

    def __init__(self, model: torch.nn.Module, name: str = "") -> None:
        self.model = model.eval()
        self.name = name
        self.image_size = int(model.config.image_size)

    def __repr__(self) -> str:
        return f"ClipVision({self.name!r}, size={self.image_size})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, image: torch.Tensor, crop: str = "center") -> ClipVisionOutput:
        """image (B, H, W, C) in [0, 1] → embeddings; crop "center" (shortest side fits, centre crop) or "none"."""
        pixels = preprocess(image, self.image_size, crop).to(self.device, self.dtype)  # (B, 3, S, S)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return ClipVisionOutput(image_embeds=out.image_embeds.float().cpu(),
                                penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
                                last_hidden_state=out.last_hidden_state.float().cpu())


def preprocess(image: torch.Tensor, size: int, crop: str = "center") -> torch.Tensor:
    """IMAGE (B, H, W, C) in [0, 1] → normalised pixels (B, 3, size, size), as ComfyUI's clip_preprocess."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise TypeError("CLIP vision input must be an IMAGE tensor (B, H, W, C)")
    if crop not in ("center", "none"):
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    x = image[..., :3].float().movedim(-1, 1)  # (B, 3, H, W)
    h, w = x.shape[-2:]
    if crop == "center":
        scale = size / min(h, w)
        x = torch.nn.functional.interpolate(x, size=(round(scale * h), round(scale * w)), mode="bicubic",
                                            antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    else:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    x = (x * 255.0).clamp(0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_clip_vision(path: Path | str, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> ClipVision:
    """Load a CLIP vision `.safetensors` (HF layout) into a transformers CLIPVisionModelWithProjection."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ClipVisionFormatError(f"{path.name}: only .safetensors CLIP vision files are read")
    sd = load_file(str(path))
    config = clip_vision_config(sd)
    model = CLIPVisionModelWithProjection(config)
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClipVisionFormatError(f"{path.name}: tensors do not fit a CLIP vision encoder (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]})")
    return ClipVision(model.to(device, dtype), name=path.stem)
