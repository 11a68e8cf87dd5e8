"""LoRA target names → module paths of our diffusers UNet and transformers CLIP text encoders.

kohya/A1111 name a target by its module path with dots turned into underscores. SD1.x/SD2.x LoRAs use the diffusers
UNet paths (`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`); SDXL LoRAs use the LDM/SGM paths
(`input_blocks_4_1_transformer_blocks_0_attn1_to_q`). Both spellings are generated here from the *model's own*
modules, so any block layout (SD1, SD2, SDXL, refiner, tiny test models) maps without per-family tables.
"""

from __future__ import annotations

from typing import Iterator

import torch

#: diffusers ResnetBlock2D child → LDM ResBlock child.
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

#: Top-level diffusers UNet modules → LDM names.
_TOP_TO_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The real module behind a `torch.compile` wrapper (whose parameter names gain `_orig_mod.`)."""
    return getattr(module, "_orig_mod", module)


def weighted_modules(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(path, module) for every submodule that owns a `weight` parameter (Linear, Conv2d, norms, embeddings)."""
    for path, m in unwrap(module).named_modules():
        if path and isinstance(m._parameters.get("weight"), torch.nn.Parameter):
            yield path, m


def ldm_block_prefixes(unet: torch.nn.Module) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is_resnet) for each UNet block, walked from the model's actual structure."""
    unet = unwrap(unet)
    out: list[tuple[str, str, bool]] = []
    idx = 1  # input_blocks.0 is conv_in
    for i, block in enumerate(getattr(unet, "down_blocks", None) or []):
        attentions = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            out.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", True))
            if j < len(attentions):
                out.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1", False))
            idx += 1
        if getattr(block, "downsamplers", None):
            out.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", False))
            idx += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        # LDM middle_block interleaves ResBlock, SpatialTransformer, ResBlock, …
        k = 0
        attentions = getattr(mid, "attentions", None) or []
        for j, _ in enumerate(mid.resnets):
            out.append((f"mid_block.resnets.{j}", f"middle_block.{k}", True))
            k += 1
            if j < len(attentions):
                out.append((f"mid_block.attentions.{j}", f"middle_block.{k}", False))
                k += 1
    idx = 0
    for i, block in enumerate(getattr(unet, "up_blocks", None) or []):
        attentions = getattr(block, "attentions", None) or []
        n = len(block.resnets)
        for j in range(n):
            out.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", True))
            if j < len(attentions):
                out.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1", False))
            if j == n - 1 and getattr(block, "upsamplers", None):
                slot = 2 if attentions else 1
                out.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{idx}.{slot}.conv", False))
            idx += 1
    return out


def diffusers_to_ldm_unet(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module path → LDM (A1111/SGM `model.diffusion_model.`) module path, for every weighted module."""
    blocks = sorted(ldm_block_prefixes(unet), key=lambda t: -len(t[0]))
    out: dict[str, str] = {}
    for path, _ in weighted_modules(unet):
        if path in _TOP_TO_LDM:
            out[path] = _TOP_TO_LDM[path]
            continue
        for prefix, ldm, is_resnet in blocks:
            if path == prefix or path.startswith(prefix + "."):
                rest = path[len(prefix) + 1:]
                if is_resnet and rest:
                    head, _, tail = rest.partition(".")
                    rest = _RESNET_TO_LDM.get(head, head) + ("." + tail if tail else "")
                out[path] = ldm + ("." + rest if rest else "")
                break
    return out


def unet_lora_names(unet: torch.nn.Module) -> dict[str, str]:
    """kohya target name (diffusers and LDM spelling, underscores) → diffusers module path."""
    names: dict[str, str] = {}
    ldm = diffusers_to_ldm_unet(unet)
    for path, _ in weighted_modules(unet):
        names.setdefault(path.replace(".", "_"), path)
        if path in ldm:
            names.setdefault(ldm[path].replace(".", "_"), path)
    return names


def text_encoder_lora_names(text_encoder: torch.nn.Module) -> dict[str, str]:
    """kohya target name → module path for a CLIP text encoder, with and without the `text_model_` prefix.

    transformers ≥ 5.6 flattened `CLIPTextModel` (no `.text_model`), while `CLIPTextModelWithProjection` keeps it;
    kohya names always carry `text_model_`, so both spellings are accepted.
    """
    names: dict[str, str] = {}
    for path, _ in weighted_modules(text_encoder):
        u = path.replace(".", "_")
        names.setdefault(u, path)
        if u.startswith("text_model_"):
            names.setdefault(u[len("text_model_"):], path)
        else:
            names.setdefault("text_model_" + u, path)
    return names
