"""What a model file is, from its keys and shapes only (never its name): family, prediction type, inpainting.

Works on a safetensors header (no weights read), a state dict, or meta tensors. Understands the single-file
LDM/A1111/ComfyUI layout (`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.`,
`conditioner.embedders.N.`), bare UNet files in either layout, and diffusers-layout single files whose keys carry
component prefixes (`unet.`, `vae.`, `text_encoder.`, `text_encoder_2.`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError
from .family import Family, ModelKind, UnsupportedModelError
from .files import (
    component_weight_files,
    is_diffusers_folder,
    is_pickle,
    load_pickle_state_dict,
    read_safetensors_header,
)

Shapes = Mapping[str, Any]  # key → shape (tuple / torch.Size / list) or a tensor

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
#: (LDM prefix, encoder style, diffusers component slot)
LDM_TEXT_ENCODERS = (
    ("cond_stage_model.transformer.", "clip", "text_encoder"),  # SD1.x CLIP ViT-L
    ("cond_stage_model.model.", "openclip", "text_encoder"),  # SD2.x OpenCLIP ViT-H
    ("conditioner.embedders.0.transformer.", "clip", "text_encoder"),  # SDXL CLIP ViT-L
    ("conditioner.embedders.1.model.", "openclip", "text_encoder_2"),  # SDXL OpenCLIP ViT-bigG
    ("conditioner.embedders.0.model.", "openclip", "text_encoder_2"),  # SDXL refiner OpenCLIP ViT-bigG
)
DIFFUSERS_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
#: ComfyUI's SD2 v-prediction heuristic looks at this tensor's spread (LDM name; diffusers name for lpb=2).
V_HEURISTIC_KEYS = (
    LDM_UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias",
    "unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias",
)
V_HEURISTIC_STD = 0.09


def shape_of(v: Any) -> tuple[int, ...]:
    """A shape from a tensor, torch.Size, list or tuple."""
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    return tuple(int(d) for d in v)


# ---------------------------------------------------------------------------------------------------------------
# reading


def read_header(source: Path | str | Mapping[str, Any], *, allow_unsafe_pickle: bool = False) -> dict[str, tuple]:
    """{key: shape} of a safetensors file (header only), a diffusers folder (prefixed keys) or a state dict."""
    if isinstance(source, Mapping):
        if isinstance(getattr(source, "shapes", None), Mapping):  # lazy state dicts know shapes without reading
            return {k: tuple(v) for k, v in source.shapes.items()}
        return {k: shape_of(v) for k, v in source.items()}
    path = Path(source)
    if path.is_dir():
        return {k: shape_of(v) for k, v in _folder_header(path, allow_unsafe_pickle).items()}
    if is_pickle(path):
        sd = load_pickle_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
        return {k: tuple(v.shape) for k, v in sd.items()}
    header, _ = read_safetensors_header(path)
    return {k: tuple(info["shape"]) for k, info in header.items()}


def read_metadata(path: Path | str) -> dict[str, str]:
    """The safetensors `__metadata__` strings ({} for folders and pickles)."""
    path = Path(path)
    if path.is_dir() or is_pickle(path):
        return {}
    return read_safetensors_header(path)[1]


def _folder_header(folder: Path, allow_unsafe_pickle: bool) -> dict[str, tuple]:
    if not is_diffusers_folder(folder):
        raise ModelFileError(f"{folder} is a folder without model_index.json (not a diffusers model)")
    out: dict[str, tuple] = {}
    for comp in DIFFUSERS_COMPONENTS:
        sub = folder / comp
        if not sub.is_dir():
            continue
        for f in component_weight_files(sub):
            out.update({f"{comp}.{k}": v for k, v in read_header(f, allow_unsafe_pickle=allow_unsafe_pickle).items()})
    return out


def folder_metadata(folder: Path) -> dict[str, str]:
    """Detection hints of a diffusers folder: its scheduler's prediction type, as modelspec metadata."""
    cfg = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        pred = json.loads(cfg.read_text(encoding="utf-8")).get("prediction_type")
    except (OSError, json.JSONDecodeError):
        return {}
    return {"modelspec.prediction_type": "v" if pred == "v_prediction" else "epsilon"} if pred else {}


def sidecar_yaml(path: Path) -> Path | None:
    """A1111's per-checkpoint config: `<name>.yaml` next to the file."""
    p = Path(path)
    y = p.with_suffix(".yaml") if p.suffix else p.with_name(p.name + ".yaml")
    return y if y.is_file() else None


# ---------------------------------------------------------------------------------------------------------------
# features


@dataclass(frozen=True)
class UNetFeatures:
    """What the UNet's shapes say."""

    in_channels: int
    out_channels: int
    context_dim: int | None
    linear_proj: bool
    adm_in: int | None
    class_embedding: bool
    layout: str  # "ldm" | "diffusers"


@dataclass(frozen=True)
class TextEncoderFeatures:
    """One text encoder found in the file."""

    slot: str  # diffusers component name: text_encoder / text_encoder_2
    style: str  # "clip" (HF CLIPTextModel keys) | "openclip" (OpenCLIP keys)
    prefix: str
    hidden: int


def _first(shapes: Shapes, prefix: str, suffix: str) -> tuple[int, ...] | None:
    for k in shapes:  # keys only: values of a lazy state dict are read on access
        if k.startswith(prefix) and k.endswith(suffix):
            return shape_of(shapes[k])
    return None


def unet_prefix(shapes: Shapes) -> tuple[str, str] | None:
    """(prefix, layout) of the UNet keys, or None when there is no SD-style UNet."""
    if LDM_UNET + "input_blocks.0.0.weight" in shapes:
        return LDM_UNET, "ldm"
    if "input_blocks.0.0.weight" in shapes and "out.2.weight" in shapes:
        return "", "ldm"
    if "unet.conv_in.weight" in shapes:
        return "unet.", "diffusers"
    if "conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes and "conv_out.weight" in shapes:
        return "", "diffusers"
    return None


def unet_features(shapes: Shapes) -> UNetFeatures | None:
    """The UNet's in/out channels, context dim, projection kind and ADM input size."""
    found = unet_prefix(shapes)
    if found is None:
        return None
    p, layout = found
    if layout == "ldm":
        conv_in, conv_out = p + "input_blocks.0.0.weight", p + "out.2.weight"
        adm, cls = p + "label_emb.0.0.weight", p + "label_emb.weight"
    else:
        conv_in, conv_out = p + "conv_in.weight", p + "conv_out.weight"
        adm, cls = p + "add_embedding.linear_1.weight", p + "class_embedding.weight"
    k = _first(shapes, p, "attn2.to_k.weight")
    proj = _first(shapes, p, ".proj_in.weight")
    out = shape_of(shapes[conv_out]) if conv_out in shapes else (0,)
    return UNetFeatures(
        in_channels=shape_of(shapes[conv_in])[1],
        out_channels=out[0],
        context_dim=k[1] if k else None,
        linear_proj=proj is not None and len(proj) == 2,
        adm_in=shape_of(shapes[adm])[1] if adm in shapes else None,
        class_embedding=cls in shapes,
        layout=layout,
    )


def text_encoder_features(shapes: Shapes) -> list[TextEncoderFeatures]:
    """The text encoders a checkpoint holds, in either layout."""
    out: list[TextEncoderFeatures] = []
    for prefix, style, slot in LDM_TEXT_ENCODERS:
        if style == "clip":
            for emb in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
                if prefix + emb in shapes:
                    out.append(TextEncoderFeatures(slot, style, prefix, shape_of(shapes[prefix + emb])[1]))
                    break
        elif prefix + "token_embedding.weight" in shapes:
            out.append(TextEncoderFeatures(slot, style, prefix, shape_of(shapes[prefix + "token_embedding.weight"])[1]))
    for slot in ("text_encoder", "text_encoder_2"):
        for emb in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
            if f"{slot}.{emb}" in shapes:
                out.append(TextEncoderFeatures(slot, "clip", f"{slot}.", shape_of(shapes[f"{slot}.{emb}"])[1]))
                break
    return out


def has_vae(shapes: Shapes) -> bool:
    """Whether the checkpoint carries a VAE (LDM or diffusers-prefixed)."""
    return any(k in shapes for k in (LDM_VAE + "encoder.conv_in.weight", "vae.encoder.conv_in.weight",
                                     LDM_VAE + "decoder.conv_in.weight", "vae.decoder.conv_in.weight"))


# ---------------------------------------------------------------------------------------------------------------
# what else a file can be


def _foreign(keys: list[str]) -> str | None:
    """A label for files with unmistakable markers of a model darkroom does not run as a checkpoint."""
    if not keys:
        return "an empty file"

    def any_end(*s: str) -> bool:
        return any(k.endswith(s) for k in keys)

    def any_sub(*s: str) -> bool:
        return any(x in k for k in keys for x in s)

    def any_start(*s: str) -> bool:
        return any(k.startswith(s) for k in keys)

    if any_sub(".hada_w1_a", ".lokr_w1", ".hada_w2_a", ".lokr_w2"):
        return "a LyCORIS (LoHa/LoKr) network"
    if any_end(".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".lora.down.weight",
               ".lora.up.weight") or any_start("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"):
        return "a LoRA"
    if len(keys) <= 6 and (set(keys) & {"emb_params", "clip_l", "clip_g", "string_to_param.*", "string_to_token"}
                           or any_start("string_to_param")):
        return "a textual inversion embedding"
    if any_start("control_model.") or any_sub("input_hint_block.", "controlnet_cond_embedding.",
                                              "controlnet_down_blocks.", "zero_convs."):
        return "a ControlNet"
    if any_sub("double_blocks.", "single_stream_modulation", "double_stream_modulation"):
        return "Flux"
    if any_sub("joint_blocks."):
        return "Stable Diffusion 3"
    if any_sub("clip_txt_mapper", ".channelwise."):
        return "Stable Cascade"
    if any_sub("double_layers.", "cond_seq_linear"):
        return "AuraFlow"
    if any_start("image_proj.", "ip_adapter."):
        return "an IP-Adapter"
    if any_sub("motion_modules."):
        return "an AnimateDiff motion module"
    if any_sub(".time_stack.", ".time_mixer."):
        return "Stable Video Diffusion"
    if any_start("noise_augmentor.", "embedder.model.visual"):
        return "Stable unCLIP"
    if "edm_mean" in keys or "edm_std" in keys:
        return "Playground v2.5"
    if any_sub("t_embedder.", "x_embedder.") or any_sub("adaLN_modulation"):
        return "a transformer (DiT-family) diffusion model"
    return None


def _not_a_checkpoint(keys: list[str]) -> str:
    """A label for files without an SD-style UNet."""

    def any_end(*s: str) -> bool:
        return any(k.endswith(s) for k in keys)

    def any_sub(*s: str) -> bool:
        return any(x in k for k in keys for x in s)

    if any_end("encoder.down.0.block.0.conv1.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"):
        return "a VAE"
    if any_sub("encoder.block.0.layer.0.SelfAttention", "shared.weight") and any_sub("SelfAttention"):
        return "a T5 text encoder"
    if any_sub("vision_model.", "visual.transformer."):
        return "a CLIP vision encoder"
    if any_sub("text_model.encoder.layers.", "transformer.resblocks.", "encoder.layers.0.self_attn."):
        return "a text encoder"
    if ("model.0.weight" in keys and any_sub("model.1.sub.")) or any_sub("RRDB_trunk.", "body.0.rdb1.",
                                                                          "conv_first.", "residual_group."):
        return "an upscaler (ESRGAN-style)"
    if "body.0.weight" in keys and "body.1.weight" in keys:
        return "an upscaler (Real-ESRGAN compact)"
    if any(k.startswith(LDM_UNET) for k in keys):
        return "an unknown diffusion model"
    return "an unknown model"


def unsupported(label: str) -> UnsupportedModelError:
    """The error for a file that is not a runnable checkpoint."""
    hint = {
        "a VAE": " (load it as a VAE, from models/vae)",
        "a LoRA": " (apply it to a checkpoint with <lora:name:weight>, from models/loras)",
        "a textual inversion embedding": " (put it in models/embeddings)",
    }.get(label, "")
    err = UnsupportedModelError(
        f"unsupported model: looks like {label}{hint}; darkroom runs SD1.x, SD2.x and SDXL checkpoints"
    )
    err.looks_like = label  # type: ignore[attr-defined]
    return err


# ---------------------------------------------------------------------------------------------------------------
# detection


def detect_family(shapes: Shapes) -> tuple[Family, bool]:
    """(family, inpaint) from the UNet and text-encoder shapes; raises UnsupportedModelError for anything else."""
    keys = list(shapes.keys())
    label = _foreign(keys)
    if label is not None:
        raise unsupported(label)
    u = unet_features(shapes)
    if u is None:
        raise unsupported(_not_a_checkpoint(keys))
    if u.in_channels == 8:
        raise unsupported("an InstructPix2Pix-style model (8-channel UNet)")
    if u.in_channels == 7 or u.class_embedding:
        raise unsupported("the Stable Diffusion x4 upscaler")
    if u.in_channels not in (4, 9):
        raise unsupported(f"a UNet with {u.in_channels} input channels")
    if u.out_channels != 4:
        raise unsupported(f"a UNet with {u.out_channels} output channels")
    inpaint = u.in_channels == 9
    tes = text_encoder_features(shapes)
    if u.adm_in is not None:
        if not u.linear_proj or any(t.prefix == "cond_stage_model.model." for t in tes):
            raise unsupported("Stable unCLIP or another class-conditioned SD model")
        slots = {t.slot for t in tes}
        if "text_encoder_2" in slots:
            family = Family.SDXL if "text_encoder" in slots else Family.SDXL_REFINER
        else:
            family = Family.SDXL_REFINER if u.context_dim == 1280 else Family.SDXL
        if family is Family.SDXL_REFINER and inpaint:
            raise unsupported("an SDXL refiner inpainting model")
        return family, inpaint
    return (Family.SD2 if u.linear_proj else Family.SD1), inpaint


def _prediction_from_metadata(metadata: Mapping[str, str]) -> str | None:
    raw = metadata.get("darkroom.config")
    if raw:
        try:
            pred = (json.loads(raw).get("scheduler") or {}).get("prediction_type")
        except (json.JSONDecodeError, AttributeError):
            pred = None
        if pred:
            return "v" if str(pred).lower().startswith("v") else "eps"
    pred = metadata.get("modelspec.prediction_type")
    if pred:
        p = pred.strip().lower()
        if p in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
            return "v"
        if p in ("epsilon", "eps"):
            return "eps"
    return None


def _prediction_from_yaml(path: Path) -> str:
    """A1111 sidecar config: `parameterization: "v"` means v-prediction, its absence eps."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    m = re.search(r"^\s*parameterization\s*:\s*[\"']?([A-Za-z_]+)", text, re.MULTILINE)
    return "v" if m and m.group(1).lower() in ("v", "v_prediction") else "eps"


def detect_kind(
    shapes: Shapes,
    metadata: Mapping[str, str] | None = None,
    *,
    sidecar: Path | None = None,
    get_tensor: Callable[[str], torch.Tensor] | None = None,
) -> ModelKind:
    """Family, prediction and inpainting of a checkpoint from its keys/shapes (and hints, if given).

    Prediction, first match wins: an A1111 sidecar yaml (`parameterization: "v"`); metadata (`darkroom.config`
    scheduler.prediction_type, `modelspec.prediction_type`); a `v_pred` key; for 4-channel SD2, ComfyUI's
    heuristic (std of `output_blocks.11.1.transformer_blocks.0.norm1.bias` > 0.09, which needs that tensor: a real
    tensor among `shapes` or `get_tensor`); otherwise eps.
    """
    known = getattr(shapes, "shapes", None)
    if isinstance(known, Mapping) and known is not shapes:  # a lazy state dict: use its header shapes
        get_tensor = get_tensor or getattr(shapes, "raw", None) or shapes.__getitem__
        shapes = known
    family, inpaint = detect_family(shapes)
    pred: str | None = _prediction_from_yaml(sidecar) if sidecar is not None else None
    if pred is None and metadata:
        pred = _prediction_from_metadata(metadata)
    if pred is None and "v_pred" in shapes:
        pred = "v"
    if pred is None and family is Family.SD2 and not inpaint:
        for key in V_HEURISTIC_KEYS:
            if key not in shapes:
                continue
            value = shapes[key]
            t = value if isinstance(value, torch.Tensor) and value.device.type != "meta" else None
            if t is None and get_tensor is not None:
                t = get_tensor(key)
            if t is not None:
                pred = "v" if float(t.float().std(unbiased=False)) > V_HEURISTIC_STD else "eps"
            break
    return ModelKind(family, pred or "eps", inpaint)


def detect_file(path: Path | str, *, allow_unsafe_pickle: bool = False) -> ModelKind:
    """Detect a checkpoint file or diffusers folder (reads the header, metadata, sidecar yaml; at most one tensor)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        return detect_kind(read_header(path, allow_unsafe_pickle=allow_unsafe_pickle), folder_metadata(path))
    if is_pickle(path):
        sd = load_pickle_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
        return detect_kind(sd, {}, sidecar=sidecar_yaml(path))
    header, metadata = read_safetensors_header(path)
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}

    def get_tensor(key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    return detect_kind(shapes, metadata, sidecar=sidecar_yaml(path), get_tensor=get_tensor)


def identify(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> str:
    """A short label for any model file: 'SDXL', 'SD2.x (v-prediction)', 'a LoRA', 'a VAE', …"""
    try:
        return detect_kind(shapes, metadata).label
    except UnsupportedModelError as e:
        return getattr(e, "looks_like", "an unsupported model")
