"""All checkpoint key renaming: single-file LDM/A1111 layout ↔ diffusers/transformers layout.

LDM → diffusers uses diffusers' own converters (`diffusers.loaders.single_file_utils`, which never touch the
network) with structure read from the keys; diffusers → LDM is written here, so darkroom can save tiny test
fixtures and its own trained model in the layout every other tool reads.

Canonical in-memory layout: {"unet": {...}, "vae": {...}, "text_encoder": {...}, "text_encoder_2": {...}} with
diffusers UNet/VAE keys and Hugging Face on-disk text-encoder keys (`text_model.…`, `text_projection.weight`).
Slots follow diffusers: SD1/SD2 use `text_encoder`; SDXL `text_encoder` (CLIP-L) + `text_encoder_2` (bigG); the
SDXL refiner only `text_encoder_2`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .detect import LDM_TEXT_ENCODERS, LDM_UNET, LDM_VAE, detect_kind, shape_of, unet_prefix
from .errors import ModelFileError
from .family import Family, ModelKind

Tensors = Mapping[str, torch.Tensor]
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
#: Where each family keeps its text encoders in the single-file layout: slot → (prefix, style).
LDM_TEXT_PREFIXES: dict[Family, dict[str, tuple[str, str]]] = {
    Family.SD1: {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    Family.SD2: {"text_encoder": ("cond_stage_model.model.", "openclip")},
    Family.SDXL: {"text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
                  "text_encoder_2": ("conditioner.embedders.1.model.", "openclip")},
    Family.SDXL_REFINER: {"text_encoder_2": ("conditioner.embedders.0.model.", "openclip")},
}
#: OpenCLIP's learned CLIP temperature, ln(100), kept in SD2/SDXL files though no generation uses it.
_LOGIT_SCALE = math.log(100.0)


class _Prefixed(Mapping[str, torch.Tensor]):
    """A view of `base` with `prefix` added to every key (no tensor is read until accessed)."""

    def __init__(self, base: Mapping[str, Any], prefix: str):
        self.base, self.prefix = base, prefix

    def __getitem__(self, key: str) -> Any:
        if not key.startswith(self.prefix):
            raise KeyError(key)
        return self.base[key[len(self.prefix):]]

    def __iter__(self) -> Iterator[str]:
        return (self.prefix + k for k in self.base)

    def __len__(self) -> int:
        return len(self.base)


def _sub(sd: Mapping[str, Any], prefix: str, *, strip: bool = True) -> dict[str, Any]:
    """The entries under prefix (read now), with the prefix stripped or kept."""
    n = len(prefix)
    return {(k[n:] if strip else k): sd[k] for k in list(sd.keys()) if k.startswith(prefix)}


def _levels(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


# ---------------------------------------------------------------------------------------------------------------
# LDM → diffusers


def unet_ldm_to_diffusers(sd: Mapping[str, Any], prefix: str = LDM_UNET) -> dict[str, Any]:
    """LDM UNet (`input_blocks`/`middle_block`/`output_blocks`) → diffusers UNet2DConditionModel keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    keys = [k[len(prefix):] for k in sd.keys() if k.startswith(prefix)]
    levels = 1 + _levels(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    n_input = _levels(keys, r"input_blocks\.(\d+)\.")
    lpb = (n_input - levels) // levels
    if n_input == 0 or lpb < 1:
        raise ModelFileError("the UNet has no recognisable input blocks")
    config = {"layers_per_block": lpb, "class_embed_type": None,
              "addition_embed_type": "text_time" if "label_emb.0.0.weight" in keys else None}
    source = sd if prefix == LDM_UNET else _Prefixed(_sub(sd, prefix), LDM_UNET)
    return convert_ldm_unet_checkpoint(source, config)


_VAE_LDM_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def vae_ldm_to_diffusers(sd: Mapping[str, Any], prefix: str = LDM_VAE) -> dict[str, Any]:
    """LDM VAE (`encoder.down.N.block.M`, `mid.attn_1` 1×1 convs) → diffusers AutoencoderKL keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    bare = {k: v for k, v in _sub(sd, prefix).items() if k.startswith(_VAE_LDM_PARTS)}
    levels = _levels(list(bare), r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelFileError("the VAE has no recognisable encoder blocks")
    config = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    return convert_ldm_vae_checkpoint(bare, config)


def _hf_text_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Text-encoder keys in the Hugging Face on-disk form (`text_model.` prefix), without position_ids buffers."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        out[k if k.startswith("text_model.") or k.startswith("text_projection.") else "text_model." + k] = v
    return out


def clip_ldm_to_diffusers(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """HF CLIP text model stored under an LDM prefix (SD1 / SDXL CLIP-L) → `text_model.…` keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    return _hf_text_keys(convert_ldm_clip_checkpoint(_sub(sd, prefix, strip=False), remove_prefix=prefix))


def open_clip_ldm_to_diffusers(sd: Mapping[str, Any], prefix: str, *, drop_last_layer: bool) -> dict[str, Any]:
    """OpenCLIP text tower (fused in_proj, `resblocks`) → HF CLIPTextModel(WithProjection) keys.

    SD2 uses the penultimate layer, so like diffusers we drop its last resblock (`drop_last_layer`).
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    part = _sub(sd, prefix, strip=False)
    layers = _levels([k[len(prefix):] for k in part], r"transformer\.resblocks\.(\d+)\.")
    if drop_last_layer and layers:
        last = f"{prefix}transformer.resblocks.{layers - 1}."
        part = {k: v for k, v in part.items() if not k.startswith(last)}
    hidden = shape_of(part[prefix + "token_embedding.weight"])[1]
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden))
    # diffusers splits in_proj at text_projection.shape[0], which is the width in OpenCLIP's (width, embed) layout
    if prefix + "text_projection" in part and shape_of(part[prefix + "text_projection"])[0] != hidden:
        raise ModelFileError(f"unexpected {prefix}text_projection shape {shape_of(part[prefix + 'text_projection'])}")
    out = convert_open_clip_checkpoint(model, part, prefix=prefix)
    if drop_last_layer:
        out.pop("text_projection.weight", None)  # SD2 uses CLIPTextModel (no projection)
    return out


def ldm_to_diffusers(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A single-file LDM/A1111 checkpoint → canonical components (only those present)."""
    out: dict[str, dict[str, Any]] = {}
    found = unet_prefix(sd)
    if found is not None and found[1] == "ldm":
        out["unet"] = unet_ldm_to_diffusers(sd, found[0])
    if any(k.startswith(LDM_VAE + "encoder.") for k in sd.keys()):
        out["vae"] = vae_ldm_to_diffusers(sd, LDM_VAE)
    keys = list(sd.keys())
    for prefix, style, slot in LDM_TEXT_ENCODERS:
        if not any(k.startswith(prefix) for k in keys):
            continue
        if style == "clip":
            out[slot] = clip_ldm_to_diffusers(sd, prefix)
        else:
            out[slot] = open_clip_ldm_to_diffusers(sd, prefix, drop_last_layer=prefix == "cond_stage_model.model.")
    return out


def to_diffusers_components(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Any supported single-file layout (LDM, diffusers with `unet.`/`vae.`/… prefixes, bare UNet) → components."""
    found = unet_prefix(sd)
    if found is not None and found == ("", "diffusers"):
        return {"unet": dict(sd)}
    if found is not None and found[1] == "ldm" or any(k.startswith(LDM_VAE) for k in sd.keys()):
        return ldm_to_diffusers(sd)
    out = {}
    for comp in COMPONENTS:
        part = _sub(sd, comp + ".")
        if part:
            out[comp] = _hf_text_keys(part) if comp.startswith("text_encoder") else part
    return out


def vae_to_diffusers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """A VAE from a VAE file or a checkpoint, in any layout/prefix → diffusers AutoencoderKL keys ({} if none)."""
    keys = list(sd.keys())
    for prefix in (LDM_VAE, "vae.", ""):
        if prefix + "encoder.down.0.block.0.conv1.weight" in sd:
            return vae_ldm_to_diffusers(sd, prefix)
        if prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
            part = _sub(sd, prefix) if prefix else {k: sd[k] for k in keys}
            return {k: v for k, v in part.items() if k.startswith(_VAE_LDM_PARTS)}
    return {}


# ---------------------------------------------------------------------------------------------------------------
# diffusers → LDM

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _resnet_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET_TO_LDM:
        raise ValueError(f"unexpected resnet key {rest!r}")
    return f"{_RESNET_TO_LDM[head]}.{tail}"


def unet_diffusers_to_ldm(sd: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys → LDM UNet keys (without the `model.diffusion_model.` prefix)."""
    keys = list(sd.keys())
    levels = _levels(keys, r"down_blocks\.(\d+)\.")
    lpb = _levels(keys, r"down_blocks\.0\.resnets\.(\d+)\.")
    up_attn = {i: any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys) for i in range(levels)}
    rx_block = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
    rx_sample = re.compile(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)")
    rx_mid = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
    out: dict[str, Any] = {}
    for k, v in sd.items():
        new = None
        for d, ldm in _UNET_TOP_TO_LDM.items():
            if k.startswith(d + "."):
                new = ldm + k[len(d):]
                break
        if new is None and (m := rx_block.match(k)):
            side, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                n = 1 + i * (lpb + 1) + j
                new = f"input_blocks.{n}." + ("0." + _resnet_to_ldm(rest) if part == "resnets" else "1." + rest)
            else:
                n = i * (lpb + 1) + j
                new = f"output_blocks.{n}." + ("0." + _resnet_to_ldm(rest) if part == "resnets" else "1." + rest)
        elif new is None and (m := rx_sample.match(k)):
            side, i, rest = m.group(1), int(m.group(2)), m.group(4)
            if side == "down":
                new = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.{rest}"
            else:
                new = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn[i] else 1}.conv.{rest}"
        elif new is None and (m := rx_mid.match(k)):
            part, j, rest = m.group(1), int(m.group(2)), m.group(3)
            new = f"middle_block.{2 * j}.{_resnet_to_ldm(rest)}" if part == "resnets" else f"middle_block.{2 * j + 1}.{rest}"
        if new is None:
            raise ValueError(f"cannot map UNet key {k!r} to the LDM layout")
        out[new] = v
    return out


_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_diffusers_to_ldm(sd: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL keys → LDM VAE keys (attention projections as 1×1 convs, like the originals)."""
    keys = list(sd.keys())
    levels = _levels(keys, r"decoder\.up_blocks\.(\d+)\.")
    rx_res = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
    rx_sample = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)")
    rx_mid_res = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)")
    rx_mid_attn = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)")
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if k.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                         "decoder.conv_in.", "decoder.conv_out.")):
            out[k] = v
        elif k.startswith(("encoder.conv_norm_out.", "decoder.conv_norm_out.")):
            out[k.replace("conv_norm_out", "norm_out")] = v
        elif m := rx_res.match(k):
            side, i, j, rest = m.group(1), int(m.group(3)), int(m.group(4)), m.group(5)
            block = i if side == "encoder" else levels - 1 - i
            part = "down" if side == "encoder" else "up"
            out[f"{side}.{part}.{block}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"] = v
        elif m := rx_sample.match(k):
            side, i, rest = m.group(1), int(m.group(3)), m.group(5)
            if side == "encoder":
                out[f"encoder.down.{i}.downsample.conv.{rest}"] = v
            else:
                out[f"decoder.up.{levels - 1 - i}.upsample.conv.{rest}"] = v
        elif m := rx_mid_res.match(k):
            out[f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"] = v
        elif m := rx_mid_attn.match(k):
            side, name, rest = m.groups()
            if rest == "weight" and name != "group_norm" and len(shape_of(v)) == 2:
                v = v.reshape(*v.shape, 1, 1)  # (C, C) → (C, C, 1, 1)
            out[f"{side}.mid.attn_1.{_VAE_ATTN_TO_LDM[name]}.{rest}"] = v
        else:
            raise ValueError(f"cannot map VAE key {k!r} to the LDM layout")
    return out


def clip_diffusers_to_ldm(sd: Mapping[str, Any]) -> dict[str, Any]:
    """HF CLIP text keys → the form SD1/SDXL files store under their prefix (`text_model.…`)."""
    return {k: v for k, v in _hf_text_keys(sd).items() if not k.startswith("text_projection.")}


_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def open_clip_diffusers_to_ldm(sd: Mapping[str, Any], *, add_unused_last_layer: bool = False) -> dict[str, Any]:
    """HF CLIP text keys → OpenCLIP keys (fused in_proj, `resblocks`, transposed `text_projection`).

    `add_unused_last_layer` (SD2): the original files hold 24 layers of which SD2 uses 23; an all-zero layer is an
    identity (pre-norm residual block with zero projections), so the file keeps the real layout and outputs.
    """
    sd = _hf_text_keys(sd)
    rx = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()  # (proj, width) → OpenCLIP (width, proj)
        elif m := rx.match(k):
            n, name, kind = int(m.group(1)), m.group(2), m.group(3)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((n, kind), {})[name[-6]] = v
            elif name in _OPEN_CLIP_LAYER:
                out[f"transformer.resblocks.{n}.{_OPEN_CLIP_LAYER[name]}.{kind}"] = v
            else:
                raise ValueError(f"cannot map text encoder key {k!r} to the OpenCLIP layout")
        else:
            raise ValueError(f"cannot map text encoder key {k!r} to the OpenCLIP layout")
    for (n, kind), parts in qkv.items():
        out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    ref = out["token_embedding.weight"]
    if add_unused_last_layer:
        layers = _levels(list(out), r"transformer\.resblocks\.(\d+)\.")
        for k in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            out[k.replace("resblocks.0.", f"resblocks.{layers}.", 1)] = torch.zeros_like(out[k])
        if "text_projection" not in out:
            out["text_projection"] = torch.eye(ref.shape[1], dtype=ref.dtype, device=ref.device)
    out["logit_scale"] = torch.full((), _LOGIT_SCALE, dtype=ref.dtype, device=ref.device)
    return out


def diffusers_to_ldm(components: Mapping[str, Mapping[str, Any]], family: Family) -> dict[str, Any]:
    """Canonical components → one single-file LDM/A1111 state dict for that family."""
    out: dict[str, Any] = {}
    if "unet" in components:
        out.update({LDM_UNET + k: v for k, v in unet_diffusers_to_ldm(components["unet"]).items()})
    if "vae" in components:
        out.update({LDM_VAE + k: v for k, v in vae_diffusers_to_ldm(components["vae"]).items()})
    slots = LDM_TEXT_PREFIXES[family]
    for slot in ("text_encoder", "text_encoder_2"):
        if slot not in components:
            continue
        if slot not in slots:
            raise ValueError(f"a {family.value} checkpoint has no {slot}")
        prefix, style = slots[slot]
        if style == "clip":
            part = clip_diffusers_to_ldm(components[slot])
        else:
            part = open_clip_diffusers_to_ldm(components[slot], add_unused_last_layer=family is Family.SD2)
        out.update({prefix + k: v for k, v in part.items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# saving


def _unwrap(module: Any) -> Any:
    return getattr(module, "_orig_mod", module)


def component_state_dicts(source: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Canonical component state dicts from a Checkpoint or a {slot: module | state dict} mapping."""
    from .bundle import Checkpoint

    if isinstance(source, Checkpoint):
        slots = list(LDM_TEXT_PREFIXES[source.kind.family])
        items: dict[str, Any] = {"unet": source.unet, "vae": source.vae}
        items.update(dict(zip(slots, source.text_encoders)))
    else:
        items = dict(source)
    out = {}
    for slot, obj in items.items():
        if obj is None:
            continue
        if slot not in COMPONENTS:
            raise ValueError(f"unknown component {slot!r}; expected one of {', '.join(COMPONENTS)}")
        sd = _unwrap(obj).state_dict() if isinstance(obj, torch.nn.Module) else dict(obj)
        out[slot] = _hf_text_keys(sd) if slot.startswith("text_encoder") else sd
    return out


def _component_configs(source: Any) -> dict[str, dict]:
    from .bundle import Checkpoint

    if isinstance(source, Checkpoint):
        items = {"unet": source.unet, "vae": source.vae}
        items.update(dict(zip(LDM_TEXT_PREFIXES[source.kind.family], source.text_encoders)))
    else:
        items = dict(source)
    out = {}
    for slot, obj in items.items():
        cfg = getattr(_unwrap(obj), "config", None)
        if cfg is None:
            continue
        out[slot] = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return out


def checkpoint_to_ldm_state_dict(ckpt: Any) -> dict[str, torch.Tensor]:
    """A loaded Checkpoint (or {slot: module}) → its single-file LDM state dict (tensors shared, not copied)."""
    from .bundle import Checkpoint

    comps = component_state_dicts(ckpt)
    family = ckpt.kind.family if isinstance(ckpt, Checkpoint) else _kind_of(comps).family
    return diffusers_to_ldm(comps, family)


def _kind_of(comps: Mapping[str, Mapping[str, Any]]) -> ModelKind:
    shapes = {f"{c}.{k}": shape_of(v) for c, sd in comps.items() for k, v in sd.items()}
    return detect_kind(shapes)


def save_single_file(
    source: Any,
    path: Path | str,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    *,
    kind: ModelKind | None = None,
    layout: str = "ldm",
) -> Path:
    """Write a Checkpoint or {slot: module | state dict} as one .safetensors file (LDM layout by default).

    Writes `modelspec.prediction_type` for v-prediction models and, in `darkroom.config`, every config field the
    shapes and family template would not reproduce (e.g. a non-standard VAE scaling_factor), so that loading the
    file gives back the same configs. `layout="diffusers"` writes `unet.`/`vae.`/`text_encoder[_2].` prefixed keys.
    """
    from safetensors.torch import save_file

    from .bundle import Checkpoint
    from .config import METADATA_KEY, config_overrides, infer_configs

    comps = component_state_dicts(source)
    if kind is None:
        kind = source.kind if isinstance(source, Checkpoint) else _kind_of(comps)
    if layout == "ldm":
        sd = diffusers_to_ldm(comps, kind.family)
    elif layout == "diffusers":
        sd = {f"{c}.{k}": v for c, part in comps.items() for k, v in part.items()}
    else:
        raise ValueError(f"layout must be 'ldm' or 'diffusers', not {layout!r}")
    tensors = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().cpu()
    meta: dict[str, str] = {}
    if kind.prediction == "v":
        meta["modelspec.prediction_type"] = "v"
    actual = _component_configs(source)
    if actual:
        inferred = infer_configs({c: {k: tuple(v.shape) for k, v in part.items()} for c, part in comps.items()}, kind)
        overrides = config_overrides(actual, inferred)
        if overrides:
            meta[METADATA_KEY] = json.dumps(overrides, sort_keys=True)
    meta.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(tensors, str(path), metadata=meta)
    except RuntimeError as e:
        if "share memory" not in str(e):
            raise
        save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=meta)
    return path
