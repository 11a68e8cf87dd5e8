"""Find out what a control file is from its keys, and load it as a diffusers ControlNetModel or T2IAdapter.

Layouts understood (detected by keys, never by file name):
- ControlNet, original/A1111/ComfyUI single file: `control_model.`-prefixed LDM keys (also whole SD checkpoints that
  carry one, like ControlNet 1.0's `.pth`), or the same keys bare;
- "diff" ControlNet: the same layout plus a `difference` key, weights stored as differences to the base UNet —
  loading needs that UNet (`base_unet`), whose weights are added back (ComfyUI's DiffControlNetLoader);
- ControlNet, diffusers: a folder with `config.json`, or a single file with `controlnet_cond_embedding` keys (a
  `config.json` next to the file is used when present);
- T2I-Adapter, TencentARC's full and light adapters, and diffusers' `adapter.`-prefixed keys.

Configs come from the shapes and darkroom's family templates (`darkroom.models.config`), like checkpoints; a
`darkroom.config` metadata entry `{"controlnet": {...}}` / `{"t2i_adapter": {...}}` overrides fields shapes cannot
tell. Modules are built on the meta device and receive the tensors (no random init).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.config import TIME_IDS, infer_unet_config, metadata_overrides, shipped_configs
from ..models.detect import identify, shape_of
from ..models.errors import ModelFileError
from ..models.family import Family, ModelKind, UnsupportedModelError
from ..models.files import component_weight_files, open_component, open_state_dict, read_safetensors_header
from ..models.files import is_pickle, load_pickle_state_dict
from ..models.loader import _assign, resolve_dtype
from .convert import LDM_PREFIX, controlnet_ldm_to_diffusers, t2i_original_kind, t2i_original_to_diffusers
from .model import ControlModel, ControlModelError, ControlNet, T2IAdapter

CLASS_NAMES = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter"}
#: ComfyUI turns on global average pooling for ControlNet files named like this (the v1.1 shuffle model).
_SHUFFLE_SUFFIXES = ("_shuffle", "_shuffle_fp16")


@dataclass(frozen=True)
class ControlFileInfo:
    """What a control file holds, from its keys: kind, key layout and prefix, family, diff or not."""

    kind: str  # "controlnet" | "t2i_adapter"
    layout: str  # "ldm" | "diffusers" | "t2i-full" | "t2i-light"
    prefix: str  # where the weights' keys start ("control_model.", "adapter.", "")
    family: Family | None
    diff: bool = False

    @property
    def label(self) -> str:
        from ..models.family import FAMILY_LABELS

        fam = FAMILY_LABELS.get(self.family, "unknown-family") if self.family else "unknown-family"
        what = "ControlNet" if self.kind == "controlnet" else "T2I-Adapter"
        return f"{fam} {'diff ' if self.diff else ''}{what}"


def _first_shape(shapes: Mapping[str, Any], pattern: str) -> tuple[int, ...] | None:
    rx = re.compile(pattern)
    for k in shapes:
        if rx.match(k):
            return shape_of(shapes[k])
    return None


def _unet_family(shapes: Mapping[str, Any], prefix: str, layout: str) -> Family:
    """SD1 / SD2 / SDXL of a ControlNet from its UNet-like half (ADM input → SDXL; linear projections → SD2)."""
    p = re.escape(prefix)
    adm = (prefix + "label_emb.0.0.weight") if layout == "ldm" else (prefix + "add_embedding.linear_1.weight")
    if adm in shapes:
        return Family.SDXL
    proj = _first_shape(shapes, rf"{p}.*\.proj_in\.weight$")
    return Family.SD2 if proj is not None and len(proj) == 2 else Family.SD1


def detect_control(shapes: Mapping[str, Any]) -> ControlFileInfo:
    """What a control state dict (or its header's {key: shape}) is; raises UnsupportedModelError otherwise."""
    keys = list(shapes.keys())
    if "lora_controlnet" in shapes:
        raise UnsupportedModelError("unsupported model: a Control-LoRA (Stability's LoRA-compressed ControlNet); "
                                    "darkroom loads full ControlNets and T2I-Adapters")
    if any(k.startswith(("lllite_", "lllite.")) or ".lllite_" in k for k in keys):
        raise UnsupportedModelError("unsupported model: a ControlNet-LLLite (kohya); darkroom loads full "
                                    "ControlNets and T2I-Adapters")
    for prefix in ("", "controlnet."):
        if prefix + "controlnet_cond_embedding.conv_in.weight" in shapes:
            return ControlFileInfo("controlnet", "diffusers", prefix, _unet_family(shapes, prefix, "diffusers"))
    for prefix in (LDM_PREFIX, ""):
        if prefix + "zero_convs.0.0.weight" in shapes and prefix + "input_hint_block.0.weight" in shapes:
            return ControlFileInfo("controlnet", "ldm", prefix, _unet_family(shapes, prefix, "ldm"),
                                   diff="difference" in shapes)
    if "adapter.conv_in.weight" in shapes or "adapter.body.0.in_conv.weight" in shapes:
        light = "adapter.conv_in.weight" not in shapes
        cin = shape_of(shapes["adapter.body.0.in_conv.weight" if light else "adapter.conv_in.weight"])[1]
        return ControlFileInfo("t2i_adapter", "diffusers", "adapter.", _t2i_family(cin))
    kind = t2i_original_kind(keys)
    if kind is not None:
        cin = shape_of(shapes["conv_in.weight" if kind == "full" else "body.0.in_conv.weight"])[1]
        return ControlFileInfo("t2i_adapter", f"t2i-{kind}", "", _t2i_family(cin))
    if any(k.startswith(("style_embedding", "ln_post", "transformer_layes")) for k in keys):
        raise UnsupportedModelError("unsupported model: a T2I style adapter (CLIP-vision tokens); darkroom loads "
                                    "ControlNets and T2I-Adapters that take a hint image")
    raise UnsupportedModelError(f"unsupported model: not a ControlNet or T2I-Adapter; it looks like "
                                f"{identify(shapes)}")


def _t2i_family(cin: int) -> Family:
    # XL adapters unshuffle by 16: 3·256 (RGB) or 256 (one channel) inputs (ComfyUI's rule).
    return Family.SDXL if cin in (256, 768) else Family.SD1


# ---------------------------------------------------------------------------------------------------------------
# configs


def _template_unet(family: Family | None) -> dict:
    return shipped_configs(ModelKind(family or Family.SD1))["unet"]


def infer_controlnet_config(shapes: Mapping[str, Any], family: Family | None,
                            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A diffusers ControlNetModel config from diffusers-layout ControlNet shapes and the family's UNet template
    (`overrides`: fields from the file's `darkroom.config` metadata, applied last)."""
    overrides = dict(overrides or {})
    s = {k: shape_of(v) for k, v in shapes.items()}
    if "controlnet_cond_embedding.conv_in.weight" not in s or "conv_in.weight" not in s:
        raise ModelFileError("no ControlNet weights found")
    in_ch, ch0 = s["conv_in.weight"][1], s["conv_in.weight"][0]
    fake = dict(s)
    fake["conv_out.weight"] = (in_ch, ch0, 3, 3)  # a ControlNet has no output conv; the UNet rules want one
    template = _template_unet(family)
    proj = s.get("add_embedding.linear_1.weight")
    n_ids = TIME_IDS.get(family, 6) if family else 6
    pooled = None
    time_dim = overrides.get("addition_time_embed_dim") or template.get("addition_time_embed_dim")
    if proj is not None and time_dim:
        pooled = proj[1] - n_ids * int(time_dim)
    unet = infer_unet_config(fake, template, pooled_dim=pooled if pooled and pooled > 0 else None, n_time_ids=n_ids)
    if proj is not None and (pooled is None or pooled <= 0):
        raise ModelFileError(
            f"cannot tell this SDXL ControlNet's time-embedding width from its shapes (ADM input {proj[1]}); "
            f"put its diffusers config.json next to the file")
    n_blocks = len({m.group(1) for k in s if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    cond_out = [s["controlnet_cond_embedding.conv_in.weight"][0]]
    for j in range(1, n_blocks, 2):  # blocks come in pairs: (c, c) then (c, c') with stride 2
        cond_out.append(s[f"controlnet_cond_embedding.blocks.{j}.weight"][0])
    allowed = set(inspect.signature(_controlnet_class().__init__).parameters) - {"self"}
    cfg = {k: v for k, v in unet.items() if k in allowed}
    cfg["conditioning_channels"] = s["controlnet_cond_embedding.conv_in.weight"][1]
    cfg["conditioning_embedding_out_channels"] = cond_out
    cfg["mid_block_type"] = ("UNetMidBlock2DCrossAttn" if any(k.startswith("mid_block.attentions.") for k in s)
                             else "UNetMidBlock2D")
    cfg["global_pool_conditions"] = False
    cfg.update(overrides)
    cfg["_class_name"] = "ControlNetModel"
    return cfg


def infer_t2i_config(shapes: Mapping[str, Any], family: Family | None) -> dict[str, Any]:
    """A diffusers T2IAdapter config from `adapter.`-prefixed shapes."""
    s = {k.removeprefix("adapter."): shape_of(v) for k, v in shapes.items()}
    levels = len({m.group(1) for k in s if (m := re.match(r"body\.(\d+)\.", k))})
    per = len({m.group(1) for k in s if (m := re.match(r"body\.0\.resnets\.(\d+)\.", k))})
    if not levels or not per:
        raise ModelFileError("no T2I-Adapter blocks found")
    if "conv_in.weight" in s:
        cin = s["conv_in.weight"][1]
        xl = family is Family.SDXL
        factor = 16 if xl else 8
        channels = [s[f"body.{i}.resnets.0.block1.weight"][0] for i in range(levels)]
        adapter_type = "full_adapter_xl" if xl else "full_adapter"
    else:
        cin = s["body.0.in_conv.weight"][1]
        factor = 8
        # diffusers' LightAdapter adds one block past its channel list (the original's fourth extractor).
        channels = [s[f"body.{i}.out_conv.weight"][0] for i in range(levels - 1)]
        adapter_type = "light_adapter"
    if cin % (factor * factor):
        raise ModelFileError(f"T2I-Adapter input width {cin} is not a multiple of {factor}² pixels")
    return {"_class_name": "T2IAdapter", "in_channels": cin // (factor * factor), "channels": channels,
            "num_res_blocks": per, "downscale_factor": factor, "adapter_type": adapter_type}


def _controlnet_class():
    from diffusers import ControlNetModel

    return ControlNetModel


def _t2i_class():
    from diffusers import T2IAdapter as DiffusersT2IAdapter

    return DiffusersT2IAdapter


# ---------------------------------------------------------------------------------------------------------------
# loading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e


def _sidecar_config(path: Path) -> dict | None:
    """A diffusers `config.json` next to a weight file (a diffusers folder listed file by file)."""
    cfg = path.parent / "config.json"
    if path.is_file() and cfg.is_file():
        data = _read_json(cfg)
        if data.get("_class_name") in CLASS_NAMES:
            return data
    return None


def describe_control_file(path: Path | str, *, allow_unsafe_pickle: bool = False) -> ControlFileInfo:
    """Detect a control file or diffusers folder from its header / config only (no weights read)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"control model not found: {path}")
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelFileError(f"{path} is a folder without config.json (not a diffusers ControlNet/T2I-Adapter)")
        cls = _read_json(cfg_path).get("_class_name")
        if cls is not None and cls not in CLASS_NAMES:
            raise UnsupportedModelError(f"unsupported model: {path} holds a {cls}, not a ControlNetModel or "
                                        f"T2IAdapter")
        files = component_weight_files(path)
        if not files:
            raise ModelFileError(f"no weights found in {path}")
        return detect_control(_header_shapes(files[0], allow_unsafe_pickle))
    return detect_control(_header_shapes(path, allow_unsafe_pickle))


def _header_shapes(path: Path, allow_unsafe_pickle: bool) -> dict[str, tuple]:
    if is_pickle(path):
        return {k: tuple(v.shape) for k, v in load_pickle_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle).items()}
    header, _ = read_safetensors_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items()}


def _shapes(sd: Any) -> dict[str, tuple]:
    return dict(sd.shapes) if hasattr(sd, "shapes") else {k: tuple(v.shape) for k, v in sd.items()}


def _add_base(state: dict[str, torch.Tensor], base_unet: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A diff ControlNet's weights plus the base UNet's (every key both have, same shape), as ComfyUI does."""
    base = base_unet.state_dict()
    out = {}
    for k, v in state.items():
        b = base.get(k)
        if b is not None and tuple(b.shape) == tuple(v.shape):
            v = (v.float() + b.detach().float().to(v.device)).to(dtype)
        out[k] = v
    return out


def _build(cls: Any, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], what: str, source: Path | str):
    with torch.device("meta"):
        module = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    _assign(module, state, what, source)
    return module.eval()


def load_control_model(
    path: Path | str,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    base_unet: Any = None,
    name: str | None = None,
    allow_unsafe_pickle: bool = False,
    global_average_pooling: bool | None = None,
) -> ControlModel:
    """Load a ControlNet or T2I-Adapter file or diffusers folder (see the module docstring for the layouts).

    base_unet: the diffusers UNet a "diff" ControlNet was made against (required for those, ignored otherwise).
    Raises ModelFileError (missing/corrupt/mismatched), UnsupportedModelError (not a control model) and
    ControlModelError (a diff ControlNet without its base model).
    """
    path = Path(path)
    dtype = resolve_dtype(dtype)
    label = name or path.stem
    if global_average_pooling is None:
        global_average_pooling = path.stem.endswith(_SHUFFLE_SUFFIXES)
    config: dict | None = None
    metadata: Mapping[str, str] = {}
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelFileError(f"{path} is a folder without config.json (not a diffusers ControlNet/T2I-Adapter)")
        config = _read_json(cfg_path)
        raw = open_component(path, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle)
    else:
        raw = open_state_dict(path, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle)
        metadata = getattr(raw, "metadata", {}) or {}
        config = _sidecar_config(path)
    info = detect_control(_shapes(raw))
    if config is not None and CLASS_NAMES.get(config.get("_class_name", "")) not in (None, info.kind):
        raise ModelFileError(f"{path}: config.json describes a {config.get('_class_name')} but the weights are "
                             f"a {info.label}")
    if info.kind == "controlnet":
        if info.layout == "ldm":
            state = controlnet_ldm_to_diffusers(raw, info.prefix)
        else:
            state = {k[len(info.prefix):]: raw[k] for k in raw.keys() if k.startswith(info.prefix)}
        if info.diff:
            if base_unet is None:
                raise ControlModelError(
                    f"{path.name} is a diff ControlNet (weights stored as differences to its base model): load it "
                    f"with DiffControlNetLoader and the checkpoint it was made for")
            state = _add_base(state, base_unet, dtype)
        overrides = metadata_overrides(metadata).get("controlnet", {})
        if config is None:
            config = infer_controlnet_config({k: tuple(v.shape) for k, v in state.items()}, info.family, overrides)
        else:
            config = {**config, **overrides}
        # Pooling is applied by darkroom, to both CFG sides as ComfyUI does, never twice.
        pooling = bool(global_average_pooling or config.get("global_pool_conditions"))
        config["global_pool_conditions"] = False
        module = _build(_controlnet_class(), config, state, "ControlNet", path)
        model: ControlModel = ControlNet(module, label, info.family, path, pooling)
    else:
        if info.layout == "diffusers":
            state = {k: raw[k] for k in raw.keys()}
        else:
            state = t2i_original_to_diffusers({k: raw[k] for k in raw.keys()})
        if config is None:
            config = infer_t2i_config({k: tuple(v.shape) for k, v in state.items()}, info.family)
        config = {**config, **metadata_overrides(metadata).get("t2i_adapter", {})}
        module = _build(_t2i_class(), config, state, "T2I-Adapter", path)
        model = T2IAdapter(module, label, info.family, path)
    dev = torch.device(device)
    if dev.type != "cpu":
        model.module.to(dev)
    return model
