"""diffusers/transformers configs for each family: shipped templates (package data) + what the shapes say.

Templates live in `darkroom/configs/<name>/` in the diffusers folder layout (model_index.json, unet/config.json,
vae/config.json, text_encoder[_2]/config.json, scheduler/scheduler_config.json; no weights, no tokenizer files), so
a template folder can also be handed to diffusers as `from_single_file(config=<dir>, subfolder=...)`.

The actual config of a file = its family template, with every field that the weights' shapes determine replaced
by the value read from the shapes (channels, layers, transformer depth, context dim, text width/depth…), then the
optional `darkroom.config` safetensors metadata (JSON {"unet": {...}, "vae": {...}, "text_encoder": {...},
"text_encoder_2": {...}, "scheduler": {...}}) on top. Fields no shape can tell (attention heads, norm groups,
activation) follow the family's convention: SD1 uses 8 heads per block, SD2/SDXL 64 channels per head, CLIP 64
channels per head.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .detect import Shapes, shape_of
from .errors import ModelFileError
from .family import Family, ModelKind

COMPONENT_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
    "model_index": "model_index.json",
}
TEMPLATE_NAMES = ("sd15", "sd15-inpaint", "sd2-base", "sd2-v", "sd2-inpaint", "sdxl-base", "sdxl-refiner",
                  "sdxl-inpaint")
#: The ModelKind each shipped template describes.
TEMPLATE_KINDS = {
    "sd15": ModelKind(Family.SD1),
    "sd15-inpaint": ModelKind(Family.SD1, inpaint=True),
    "sd2-base": ModelKind(Family.SD2),
    "sd2-v": ModelKind(Family.SD2, "v"),
    "sd2-inpaint": ModelKind(Family.SD2, inpaint=True),
    "sdxl-base": ModelKind(Family.SDXL),
    "sdxl-refiner": ModelKind(Family.SDXL_REFINER),
    "sdxl-inpaint": ModelKind(Family.SDXL, inpaint=True),
}
#: SDXL's UNet receives the pooled text embedding plus this many size/crop/aesthetic numbers.
TIME_IDS = {Family.SDXL: 6, Family.SDXL_REFINER: 5}
METADATA_KEY = "darkroom.config"
#: Config keys that are bookkeeping, not architecture (never compared nor overridden).
_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path", "architectures", "torch_dtype", "dtype",
                "transformers_version", "_use_default_values", "model_type"}


def template_name(kind: ModelKind) -> str:
    """The shipped template for a kind (v-prediction SD1/SDXL reuse the eps template with another scheduler)."""
    if kind.family is Family.SD1:
        return "sd15-inpaint" if kind.inpaint else "sd15"
    if kind.family is Family.SD2:
        return "sd2-inpaint" if kind.inpaint else ("sd2-v" if kind.prediction == "v" else "sd2-base")
    if kind.family is Family.SDXL_REFINER:
        return "sdxl-refiner"
    return "sdxl-inpaint" if kind.inpaint else "sdxl-base"


def config_dir(kind_or_name: ModelKind | str) -> Path:
    """The packaged template folder (a diffusers-layout config folder without weights)."""
    name = kind_or_name if isinstance(kind_or_name, str) else template_name(kind_or_name)
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown config template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    return Path(str(resources.files("darkroom") / "configs" / name))


@functools.lru_cache(maxsize=None)
def _read_template(name: str) -> dict[str, dict]:
    root = config_dir(name)
    out = {}
    for comp, rel in COMPONENT_FILES.items():
        p = root / rel
        if p.is_file():
            out[comp] = json.loads(p.read_text(encoding="utf-8"))
    return out


def shipped_configs(kind_or_name: ModelKind | str) -> dict[str, dict]:
    """Deep copies of a template's component configs (unet, vae, text_encoder[_2], scheduler, model_index)."""
    name = kind_or_name if isinstance(kind_or_name, str) else template_name(kind_or_name)
    configs = copy.deepcopy(_read_template(name))
    if not isinstance(kind_or_name, str):
        configs["scheduler"]["prediction_type"] = "v_prediction" if kind_or_name.prediction == "v" else "epsilon"
    return configs


# ---------------------------------------------------------------------------------------------------------------
# shape → config


def _count(shapes: Shapes, pattern: str) -> int:
    """How many distinct integers fill the `(\\d+)` of pattern among the keys."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def infer_unet_config(shapes: Shapes, template: dict, *, pooled_dim: int | None = None, n_time_ids: int = 6) -> dict:
    """A diffusers UNet2DConditionModel config from diffusers-layout UNet shapes and the family template."""
    s = shapes
    cfg = copy.deepcopy(template)
    levels = _count(s, r"down_blocks\.(\d+)\.")
    if levels == 0 or "conv_in.weight" not in s:
        raise ModelFileError("no UNet weights found")
    channels = [shape_of(s[f"down_blocks.{i}.resnets.0.conv1.weight"])[0] for i in range(levels)]
    down_attn = [f"down_blocks.{i}.attentions.0.proj_in.weight" in s for i in range(levels)]
    up_attn = [f"up_blocks.{i}.attentions.0.proj_in.weight" in s for i in range(levels)]
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = _count(s, r"down_blocks\.0\.resnets\.(\d+)\.")
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn]
    cfg["in_channels"] = shape_of(s["conv_in.weight"])[1]
    cfg["out_channels"] = shape_of(s["conv_out.weight"])[0]
    # Transformer depth per down block; blocks without attention take 1, except the last, whose entry diffusers
    # also uses for the mid block.
    mid_depth = _count(s, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    depths = []
    for i in range(levels):
        d = _count(s, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")
        depths.append(d if d else (mid_depth or 1) if i == levels - 1 else 1)
    if mid_depth and depths[-1] != mid_depth:
        raise ModelFileError(f"unsupported UNet: mid-block depth {mid_depth} differs from last block {depths[-1]}")
    attn_depths = [d for d, a in zip(depths, down_attn) if a] + ([mid_depth] if mid_depth else [])
    if attn_depths and len(set(attn_depths)) == 1 and not isinstance(cfg.get("transformer_layers_per_block"), list):
        cfg["transformer_layers_per_block"] = attn_depths[0]
    else:
        cfg["transformer_layers_per_block"] = depths
    for k in s:
        if k.endswith("attn2.to_k.weight"):
            cfg["cross_attention_dim"] = shape_of(s[k])[1]
            break
    for k in s:
        if k.endswith(".proj_in.weight"):
            cfg["use_linear_projection"] = len(shape_of(s[k])) == 2
            break
    if isinstance(template.get("attention_head_dim"), list):  # SD2/SDXL: 64 channels per head
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]
    if "add_embedding.linear_1.weight" in s:
        proj_in = shape_of(s["add_embedding.linear_1.weight"])[1]
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = proj_in
        if pooled_dim is not None and (proj_in - pooled_dim) > 0 and (proj_in - pooled_dim) % n_time_ids == 0:
            cfg["addition_time_embed_dim"] = (proj_in - pooled_dim) // n_time_ids
    else:
        cfg["addition_embed_type"] = None
        cfg["projection_class_embeddings_input_dim"] = None
    return cfg


def infer_vae_config(shapes: Shapes, template: dict) -> dict:
    """A diffusers AutoencoderKL config from diffusers-layout VAE shapes and the family template."""
    s = shapes
    cfg = copy.deepcopy(template)
    levels = _count(s, r"encoder\.down_blocks\.(\d+)\.")
    if levels == 0 or "decoder.conv_in.weight" not in s:
        raise ModelFileError("no VAE weights found")
    cfg["block_out_channels"] = [shape_of(s[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"])[0]
                                 for i in range(levels)]
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    cfg["layers_per_block"] = _count(s, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    cfg["in_channels"] = shape_of(s["encoder.conv_in.weight"])[1]
    cfg["out_channels"] = shape_of(s["decoder.conv_out.weight"])[0]
    cfg["latent_channels"] = shape_of(s["decoder.conv_in.weight"])[1]
    return cfg


def infer_text_encoder_config(shapes: Shapes, template: dict) -> dict:
    """A transformers CLIPTextConfig dict from HF-layout (`text_model.`-prefixed) shapes and the template."""
    s = shapes
    cfg = copy.deepcopy(template)
    tok = "text_model.embeddings.token_embedding.weight"
    if tok not in s:
        raise ModelFileError("no text encoder weights found")
    vocab, hidden = shape_of(s[tok])
    cfg["vocab_size"] = vocab
    cfg["hidden_size"] = hidden
    cfg["max_position_embeddings"] = shape_of(s["text_model.embeddings.position_embedding.weight"])[0]
    cfg["num_hidden_layers"] = _count(s, r"text_model\.encoder\.layers\.(\d+)\.")
    cfg["intermediate_size"] = shape_of(s["text_model.encoder.layers.0.mlp.fc1.weight"])[0]
    cfg["num_attention_heads"] = max(1, hidden // 64)
    if "text_projection.weight" in s:
        cfg["projection_dim"] = shape_of(s["text_projection.weight"])[0]
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# whole checkpoints


def metadata_overrides(metadata: Mapping[str, str] | None) -> dict[str, dict]:
    """The `darkroom.config` metadata as {component: {field: value}} ({} when absent)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"metadata {METADATA_KEY!r} is not valid JSON: {e}") from e
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ModelFileError(f"metadata {METADATA_KEY!r} must be a JSON object of objects per component")
    return value


def infer_configs(
    components: Mapping[str, Shapes], kind: ModelKind, metadata: Mapping[str, str] | None = None
) -> dict[str, dict]:
    """Configs for every component present (+ scheduler) from diffusers-layout shapes, the template and metadata."""
    templates = shipped_configs(kind)
    out: dict[str, dict] = {"scheduler": templates["scheduler"]}
    pooled = None
    te2 = components.get("text_encoder_2")
    if te2 is not None and "text_projection.weight" in te2:
        pooled = shape_of(te2["text_projection.weight"])[0]
    for comp, shapes in components.items():
        if comp == "unet":
            out[comp] = infer_unet_config(shapes, templates["unet"], pooled_dim=pooled,
                                          n_time_ids=TIME_IDS.get(kind.family, 6))
        elif comp == "vae":
            out[comp] = infer_vae_config(shapes, templates["vae"])
        elif comp in ("text_encoder", "text_encoder_2"):
            template = templates.get(comp) or templates.get("text_encoder_2") or templates["text_encoder"]
            out[comp] = infer_text_encoder_config(shapes, template)
    for comp, fields in metadata_overrides(metadata).items():
        if comp in out:
            out[comp].update(fields)
    return out


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, default=list))


def config_overrides(actual: Mapping[str, Mapping[str, Any]], inferred: Mapping[str, Mapping[str, Any]]) -> dict:
    """The fields where an actual config differs from what shapes+template give (what `darkroom.config` must hold)."""
    out: dict[str, dict] = {}
    for comp, want in actual.items():
        have = inferred.get(comp)
        if have is None:
            continue
        diff = {}
        for key, value in have.items():
            if key in _BOOKKEEPING or key.startswith("_") or key not in want:
                continue
            if _plain(want[key]) != _plain(value):
                diff[key] = _plain(want[key])
        if diff:
            out[comp] = diff
    return out
