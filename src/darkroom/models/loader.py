"""Load checkpoints (single .safetensors files in the LDM/A1111 layout, or diffusers folders) and separate VAEs.

Models are built on the `meta` device from configs (no random init, no Hub) and receive the file's tensors with
`load_state_dict(assign=True)`; safetensors are read lazily, tensor by tensor, so EMA copies and other unused keys
are never read and no full second copy of the weights is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .bundle import BetaSchedule, Checkpoint
from .config import infer_configs, infer_vae_config, metadata_overrides, shipped_configs
from .convert import to_diffusers_components, vae_to_diffusers
from .detect import detect_kind, folder_metadata, identify, sidecar_yaml
from .errors import ModelFileError
from .family import LATENT_SCALE, Family, ModelKind, UnsupportedModelError
from .files import is_diffusers_folder, open_component, open_state_dict

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
TEXT_SLOTS = ("text_encoder", "text_encoder_2")


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float16 / 'fp16' / 'bf16' / … → a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


# ---------------------------------------------------------------------------------------------------------------
# building modules


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in the file; recreate those left on the meta device."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if leaf == "position_ids":
            value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
        else:
            raise RuntimeError(f"cannot materialise buffer {name} of {type(model).__name__}")
        owner.register_buffer(leaf, value, persistent=False)


def _assign(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, source: Path | str) -> None:
    """Give a meta-device model the tensors of state (strict: same keys, same shapes)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = set(state.keys())
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    tensors = dict(state) if not (missing or unexpected) else {}  # reads each tensor once (lazy files)
    wrong = sorted(k for k in tensors if tuple(tensors[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {k}: {tuple(tensors[k].shape)} vs {expected[k]})")
        raise ModelFileError(f"{source}: the {what} weights do not fit its config: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True, assign=True)
    _materialize_buffers(model)


def build_unet(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path | str = "<memory>"):
    """A diffusers UNet2DConditionModel from a config and diffusers-layout tensors."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(dict(config))
    _assign(model, state, "UNet", source)
    return model.eval()


def build_vae(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path | str = "<memory>"):
    """A diffusers AutoencoderKL from a config and diffusers-layout tensors."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL.from_config(dict(config))
    _assign(model, state, "VAE", source)
    return model.eval()


def build_text_encoder(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, projection: bool, source: Path | str = "<memory>"
):
    """CLIPTextModel (or CLIPTextModelWithProjection) from a config and `text_model.`-prefixed tensors."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")})
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(cfg)
    wants_prefix = any(k.startswith("text_model.") for k in model.state_dict())
    if not wants_prefix:  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    _assign(model, state, "text encoder", source)
    return model.eval()


def _pad_token(slot: str, family: Family) -> str:
    """OpenCLIP encoders (SD2, SDXL's bigG) pad with '!' (id 0); OpenAI CLIP-L pads with <|endoftext|>."""
    return "!" if slot == "text_encoder_2" or family is Family.SD2 else "<|endoftext|>"


def _schedule(cfg: Mapping[str, Any]) -> BetaSchedule:
    return BetaSchedule(
        beta_start=float(cfg.get("beta_start", 0.00085)),
        beta_end=float(cfg.get("beta_end", 0.012)),
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        beta_schedule=str(cfg.get("beta_schedule", "scaled_linear")),
    )


def _device(device: str | torch.device) -> torch.device:
    return torch.device(device)


def _assemble(
    *,
    name: str,
    path: Path,
    kind: ModelKind,
    components: Mapping[str, Mapping[str, torch.Tensor]],
    configs: dict[str, dict],
    dtype: torch.dtype,
    device: torch.device,
    vae_path: Path | None,
    allow_unsafe_pickle: bool,
) -> Checkpoint:
    from darkroom.conditioning.tokenizer import clip_tokenizer

    if "unet" not in components:
        raise ModelFileError(f"{path} has no UNet")
    slots = [s for s in TEXT_SLOTS if s in components]
    if not slots:
        raise ModelFileError(f"{path} has no text encoder; darkroom needs a full checkpoint (UNet, text encoder, VAE)")
    unet = build_unet(configs["unet"], components["unet"], path)
    text_encoders = [
        build_text_encoder(configs[s], components[s], projection=s == "text_encoder_2", source=path) for s in slots
    ]
    if vae_path is not None:
        vae = load_vae(vae_path, family=kind, dtype=dtype, device="cpu", allow_unsafe_pickle=allow_unsafe_pickle)
        configs["vae"] = dict(vae.config)
    elif "vae" in components:
        vae = build_vae(configs["vae"], components["vae"], path)
    else:
        raise ModelFileError(f"{path} has no VAE; choose a VAE file to use with it")
    models = [unet, vae, *text_encoders]
    if device.type != "cpu":
        for m in models:
            m.to(device)
    return Checkpoint(
        name=name,
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=[clip_tokenizer(_pad_token(s, kind.family)) for s in slots],
        schedule=_schedule(configs["scheduler"]),
        path=path,
        dtype=dtype,
        device=device,
        vae_name=Path(vae_path).name if vae_path is not None else None,
        configs=configs,
    )


# ---------------------------------------------------------------------------------------------------------------
# public API


def load_checkpoint(
    path: Path | str,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    vae_path: Path | str | None = None,
    allow_unsafe_pickle: bool = False,
    name: str | None = None,
) -> Checkpoint:
    """Load a single-file checkpoint (.safetensors; pickles only if allowed) or a diffusers folder.

    Raises ModelFileError (missing/corrupt/truncated/mismatched file), UnsafeModelFileError (pickle refused),
    UnsupportedModelError (not an SD1.x/SD2.x/SDXL checkpoint: 'unsupported model: looks like …').
    """
    path = Path(path)
    dtype = resolve_dtype(dtype)
    dev = _device(device)
    vae = Path(vae_path) if vae_path is not None else None
    if path.is_dir():
        return _load_folder(path, dtype=dtype, device=dev, vae_path=vae, allow_unsafe_pickle=allow_unsafe_pickle,
                            name=name)
    state = open_state_dict(path, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle, align=dev.type == "cpu")
    kind = detect_kind(state.shapes, state.metadata, sidecar=sidecar_yaml(path), get_tensor=state.raw)
    if vae is not None:  # the file's own VAE is not needed: never read it
        state = _without_vae(state)
    components = to_diffusers_components(state)
    shapes = {c: {k: tuple(v.shape) for k, v in sd.items()} for c, sd in components.items()}
    configs = infer_configs(shapes, kind, state.metadata)
    return _assemble(name=name or path.stem, path=path, kind=kind, components=components, configs=configs,
                     dtype=dtype, device=dev, vae_path=vae, allow_unsafe_pickle=allow_unsafe_pickle)


class _Filtered(Mapping[str, torch.Tensor]):
    def __init__(self, base: Any, drop: tuple[str, ...]):
        self.base, self.keys_ = base, [k for k in base.keys() if not k.startswith(drop)]
        self.metadata = getattr(base, "metadata", {})
        self.shapes = {k: base.shapes[k] for k in self.keys_}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.base[key]

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def _without_vae(state: Any) -> Any:
    return _Filtered(state, ("first_stage_model.", "vae."))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e


def _load_folder(
    folder: Path, *, dtype: torch.dtype, device: torch.device, vae_path: Path | None, allow_unsafe_pickle: bool,
    name: str | None,
) -> Checkpoint:
    """A diffusers pipeline folder: its own config.json files, weights from each component folder."""
    if not is_diffusers_folder(folder):
        raise ModelFileError(f"{folder} is a folder without model_index.json (not a diffusers model)")
    components: dict[str, Mapping[str, torch.Tensor]] = {}
    folder_configs: dict[str, dict] = {}
    wanted = ("unet", "text_encoder", "text_encoder_2") + (() if vae_path is not None else ("vae",))
    for comp in wanted:
        sub = folder / comp
        if not (sub / "config.json").is_file():
            continue
        folder_configs[comp] = _read_json(sub / "config.json")
        state = open_component(sub, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle, align=device.type == "cpu")
        components[comp] = state if not comp.startswith("text_encoder") else _hf(state)
    shapes = {f"{c}.{k}": tuple(v) for c, sd in components.items() for k, v in _shapes(sd).items()}
    kind = detect_kind(shapes, folder_metadata(folder))
    configs = infer_configs({c: _shapes(sd) for c, sd in components.items()}, kind)
    configs.update(folder_configs)
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _read_json(sched)
    return _assemble(name=name or folder.name, path=folder, kind=kind, components=components, configs=configs,
                     dtype=dtype, device=device, vae_path=vae_path, allow_unsafe_pickle=allow_unsafe_pickle)


def _shapes(sd: Any) -> dict[str, tuple]:
    if hasattr(sd, "shapes"):
        return dict(sd.shapes)
    return {k: tuple(v.shape) for k, v in sd.items()}


class _HF(Mapping[str, torch.Tensor]):
    """Text-encoder keys seen in the `text_model.`-prefixed form (flattened saves lack the prefix)."""

    def __init__(self, base: Any):
        self.base = base
        self.map = {}
        for k in base.keys():
            if k.endswith("position_ids"):
                continue
            self.map[k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k] = k
        self.shapes = {new: tuple(base.shapes[old]) for new, old in self.map.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.base[self.map[key]]

    def __iter__(self):
        return iter(self.map)

    def __len__(self) -> int:
        return len(self.map)


def _hf(state: Any) -> _HF:
    return _HF(state)


def load_vae(
    path: Path | str,
    *,
    family: Family | ModelKind | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    allow_unsafe_pickle: bool = False,
):
    """Load a separate VAE (LDM or diffusers keys, bare or prefixed; or a diffusers VAE folder) as AutoencoderKL.

    Its latent scaling factor follows the family it is used with (SDXL 0.13025, SD1/SD2 0.18215; default SD1)
    unless the file's `darkroom.config` metadata or a folder's config.json says otherwise.
    """
    path = Path(path)
    dtype = resolve_dtype(dtype)
    fam = family.family if isinstance(family, ModelKind) else (family or Family.SD1)
    template = shipped_configs("sdxl-base" if fam in (Family.SDXL, Family.SDXL_REFINER) else "sd15")["vae"]
    if path.is_dir():
        sub = path / "vae" if is_diffusers_folder(path) else path
        if not (sub / "config.json").is_file():
            raise ModelFileError(f"{path} is a folder without a VAE config.json")
        config = _read_json(sub / "config.json")
        state = open_component(sub, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle)
        vae = build_vae(config, state, path)
    else:
        state = open_state_dict(path, dtype=dtype, allow_unsafe_pickle=allow_unsafe_pickle)
        weights = vae_to_diffusers(state)
        if not weights:
            raise UnsupportedModelError(f"{path} is not a VAE: it looks like {identify(state.shapes)}")
        config = infer_vae_config({k: tuple(v.shape) for k, v in weights.items()}, template)
        config["scaling_factor"] = LATENT_SCALE[fam]
        config.update(metadata_overrides(state.metadata).get("vae", {}))
        vae = build_vae(config, weights, path)
    return vae.to(_device(device)) if _device(device).type != "cpu" else vae
