"""Tiny random Stable Diffusion models in the real file layouts, and full-size key/shape listings on `meta`.

Every supported family (see `KIND_NAMES`) can be written as a single-file LDM/A1111 checkpoint, a diffusers-layout
single file or a diffusers folder. The tiny models follow each family's conventions (SD1: 8 heads; SD2/SDXL: 64
channels per head, at least one head; CLIP: 64 channels per head) so they load through exactly the same detection
and config inference as real files. Sizes: UNet channels (32, 64), 1 resblock per level; text encoders width 32
(SDXL's second encoder 64), 2 layers, the real 49,408-token vocabulary and 77 positions; VAE channels
(32, 32, 64, 64) so latents are 1/8 of the image like the real ones. A UNet forward at 64×64 px (8×8 latents) takes
milliseconds on a CPU. `shared_tiny_components` / `shared_tiny_checkpoint` build each one once per process.
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from darkroom.models.config import TEMPLATE_KINDS, shipped_configs, template_name
from darkroom.models.convert import COMPONENTS, _hf_text_keys, diffusers_to_ldm, save_single_file
from darkroom.models.family import Family, ModelKind

#: Short names accepted everywhere a kind is expected (also every config template name).
KIND_NAMES: dict[str, ModelKind] = {
    **TEMPLATE_KINDS,
    "sd1": ModelKind(Family.SD1),
    "sd1-inpaint": ModelKind(Family.SD1, inpaint=True),
    "sd1-v": ModelKind(Family.SD1, "v"),
    "sd2": ModelKind(Family.SD2),
    "sdxl": ModelKind(Family.SDXL),
    "sdxl-v": ModelKind(Family.SDXL, "v"),
}
#: One name per distinct family variant darkroom supports (what the tests iterate over).
ALL_KINDS = ("sd15", "sd15-inpaint", "sd2-base", "sd2-v", "sd2-inpaint", "sdxl-base", "sdxl-refiner", "sdxl-inpaint")

TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1}
#: SDXL's second encoder is wider than its first, as in the real model (768 vs 1280).
TINY_TEXT_2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
               "projection_dim": 64}
TINY_VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
_SD_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
_XL_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32 + 64,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "transformer_layers_per_block": [1, 2],
            "attention_head_dim": [1, 1], "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 64 + 6 * 8}
TINY_UNET = {
    Family.SD1: _SD_UNET,
    Family.SD2: {**_SD_UNET, "attention_head_dim": [1, 1]},
    Family.SDXL: _XL_UNET,
    Family.SDXL_REFINER: {**_XL_UNET, "block_out_channels": [32, 64, 64], "cross_attention_dim": 64,
                          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                          "transformer_layers_per_block": 2, "attention_head_dim": [1, 1, 1],
                          "projection_class_embeddings_input_dim": 64 + 5 * 8},
}


def as_kind(kind: ModelKind | Family | str) -> ModelKind:
    """'sd15' / 'sdxl-refiner' / Family.SD2 / ModelKind → ModelKind."""
    if isinstance(kind, ModelKind):
        return kind
    if isinstance(kind, Family):
        return ModelKind(kind)
    try:
        return KIND_NAMES[str(kind)]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KIND_NAMES)}") from None


def tiny_configs(kind: ModelKind | Family | str) -> dict[str, dict]:
    """Full diffusers/transformers configs of the tiny model of a kind (family template + tiny sizes)."""
    k = as_kind(kind)
    configs = shipped_configs(k)
    configs["unet"].update(copy.deepcopy(TINY_UNET[k.family]))
    if k.inpaint:
        configs["unet"]["in_channels"] = 9
    configs["vae"].update(TINY_VAE)
    if "text_encoder" in configs:
        configs["text_encoder"].update(TINY_TEXT)
    if "text_encoder_2" in configs:
        configs["text_encoder_2"].update(TINY_TEXT_2)
    return configs


def _jitter(module: torch.nn.Module, g: torch.Generator, scale: float = 0.02) -> None:
    """Make every tensor distinct (no all-zero biases or all-one norms a wrong mapping could hide behind)."""
    params = list(module.parameters())
    noise = torch.randn(sum(p.numel() for p in params), generator=g) * scale
    with torch.no_grad():
        torch._foreach_add_(params, [n.view_as(p) for n, p in zip(noise.split([p.numel() for p in params]), params)])


def text_encoder_from_config(config: dict, projection: bool) -> torch.nn.Module:
    """A randomly initialised CLIPTextModel(WithProjection) from a config dict."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")})
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_components(
    kind: ModelKind | Family | str, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.nn.Module]:
    """Random tiny diffusers/transformers modules {unet, vae, text_encoder[, text_encoder_2]} for a kind (eval)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    configs = tiny_configs(kind)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel.from_config(configs["unet"]),
        "vae": AutoencoderKL.from_config(configs["vae"]),
    }
    for slot in ("text_encoder", "text_encoder_2"):
        if slot in configs:
            out[slot] = text_encoder_from_config(configs[slot], projection=slot == "text_encoder_2")
    for m in out.values():
        _jitter(m, g)
        if dtype != torch.float32:
            m.to(dtype)
        m.eval()
    return out


def _ldm_extras(kind: ModelKind, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Keys real SD1 files carry besides the models (DDPM buffers, CLIP position_ids, EMA counters)."""
    if kind.family is not Family.SD1:
        return {}
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return {
        "betas": betas.to(dtype),
        "alphas_cumprod": torch.cumprod(1 - betas, 0).to(dtype),
        "model_ema.decay": torch.tensor(0.9999, dtype=dtype),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
    }


def write_config_dir(path: Path | str, configs: dict[str, dict]) -> Path:
    """Write configs in the diffusers folder layout (model_index.json, <component>/config.json, scheduler)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(configs["model_index"], indent=2), encoding="utf-8")
    for comp in (*COMPONENTS, "scheduler"):
        if comp not in configs:
            continue
        (root / comp).mkdir(exist_ok=True)
        name = "scheduler_config.json" if comp == "scheduler" else "config.json"
        (root / comp / name).write_text(json.dumps(configs[comp], indent=2), encoding="utf-8")
    return root


def write_tiny_checkpoint(
    path: Path | str,
    kind: ModelKind | Family | str = "sd15",
    *,
    dtype: torch.dtype = torch.float32,
    layout: str = "ldm",
    seed: int = 0,
    metadata: dict[str, str] | None = None,
    components: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write a tiny random checkpoint; layout 'ldm' (A1111 single file), 'diffusers' (folder) or 'diffusers-file'.

    Pass `components` (from `tiny_components`) to write those exact modules, e.g. to compare outputs after loading.
    """
    from safetensors.torch import save_file

    k = as_kind(kind)
    comps = components if components is not None else tiny_components(k, seed=seed)
    path = Path(path)
    if layout == "ldm":
        save_single_file(comps, path, dtype=dtype, kind=k, metadata=metadata)
        extras = _ldm_extras(k, dtype)
        if extras:  # append the non-model keys real SD1 files carry
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}
                meta = f.metadata() or {}
            tensors.update(extras)
            save_file(tensors, str(path), metadata=meta)
        return path
    if layout == "diffusers-file":
        return save_single_file(comps, path, dtype=dtype, kind=k, metadata=metadata, layout="diffusers")
    if layout != "diffusers":
        raise ValueError(f"layout must be 'ldm', 'diffusers' or 'diffusers-file', not {layout!r}")
    configs = tiny_configs(k)
    for slot, module in comps.items():
        configs[slot] = dict(module.config.to_dict() if hasattr(module.config, "to_dict") else module.config)
    configs = {c: v for c, v in configs.items() if c in comps or c in ("scheduler", "model_index")}
    write_config_dir(path, configs)
    for slot, module in comps.items():
        sd = module.state_dict()
        if slot.startswith("text_encoder"):
            sd = _hf_text_keys(sd)
            name = "model.safetensors"
        else:
            name = "diffusion_pytorch_model.safetensors"
        tensors = {n: (t.to(dtype) if t.is_floating_point() else t).contiguous() for n, t in sd.items()}
        save_file(tensors, str(path / slot / name), metadata={"format": "pt"})
    return path


def write_tiny_vae(
    path: Path | str, *, dtype: torch.dtype = torch.float32, seed: int = 1, layout: str = "ldm", prefix: str = "",
    scaling_factor: float | None = None,
) -> Path:
    """A tiny separate VAE file: LDM keys (like vae-ft-mse-840000) or diffusers keys, optionally prefixed.

    `scaling_factor` is stored in `darkroom.config` metadata (otherwise the family of the checkpoint decides).
    """
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from darkroom.models.convert import vae_diffusers_to_ldm

    configs = tiny_configs("sd15")
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(configs["vae"])
    _jitter(vae, torch.Generator().manual_seed(seed))
    sd = vae.state_dict()
    if layout == "ldm":
        sd = vae_diffusers_to_ldm(sd)
    elif layout != "diffusers":
        raise ValueError(f"layout must be 'ldm' or 'diffusers', not {layout!r}")
    meta = {"format": "pt"}
    if scaling_factor is not None:
        meta["darkroom.config"] = json.dumps({"vae": {"scaling_factor": scaling_factor}})
    tensors = {prefix + n: t.to(dtype).contiguous() for n, t in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


# ---------------------------------------------------------------------------------------------------------------
# per-process caches (tests of several modules share one build per kind)

_SHARED_DIR: list[Path] = []


def _shared_dir() -> Path:
    if not _SHARED_DIR:
        d = Path(tempfile.mkdtemp(prefix="darkroom-tiny-"))
        atexit.register(shutil.rmtree, d, True)
        _SHARED_DIR.append(d)
    return _SHARED_DIR[0]


@functools.lru_cache(maxsize=None)
def shared_tiny_components(kind: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """`tiny_components(kind, seed)` built once per process; treat the modules as read-only."""
    return tiny_components(kind, seed=seed)


@functools.lru_cache(maxsize=None)
def shared_tiny_checkpoint(kind: str, layout: str = "ldm", dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """The tiny checkpoint of `shared_tiny_components(kind, seed)` written once per process (read-only file)."""
    suffix = "" if layout == "diffusers" else ".safetensors"
    name = f"{kind}-{layout}-{str(dtype).removeprefix('torch.')}-{seed}{suffix}"
    return write_tiny_checkpoint(_shared_dir() / name, kind, dtype=dtype, layout=layout,
                                 components=shared_tiny_components(kind, seed))


# ---------------------------------------------------------------------------------------------------------------
# full-size listings (meta device: shapes only, no memory)


def full_size_components(kind: ModelKind | Family | str) -> dict[str, dict[str, torch.Tensor]]:
    """Canonical component state dicts of the real-size model of a kind, as meta tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    k = as_kind(kind)
    configs = shipped_configs(k)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.device("meta"):
        out["unet"] = UNet2DConditionModel.from_config(configs["unet"]).state_dict()
        out["vae"] = AutoencoderKL.from_config(configs["vae"]).state_dict()
        for slot in ("text_encoder", "text_encoder_2"):
            if slot in configs:
                te = text_encoder_from_config(configs[slot], projection=slot == "text_encoder_2")
                out[slot] = _hf_text_keys(te.state_dict())
    return out


def full_size_state_dict(kind: ModelKind | Family | str) -> dict[str, torch.Tensor]:
    """The real-size single-file (LDM/A1111) state dict of a kind, as meta tensors."""
    k = as_kind(kind)
    return diffusers_to_ldm(full_size_components(k), k.family)


def full_size_shapes(kind: ModelKind | Family | str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the real-size single file of a kind (what a safetensors header of the real file lists)."""
    return {key: tuple(t.shape) for key, t in full_size_state_dict(kind).items()}


def kind_template(kind: ModelKind | Family | str) -> str:
    """The config template name of a kind."""
    return template_name(as_kind(kind))


__all__ = [
    "ALL_KINDS", "KIND_NAMES", "TINY_TEXT", "TINY_TEXT_2", "TINY_UNET", "TINY_VAE", "as_kind", "full_size_components",
    "full_size_shapes", "full_size_state_dict", "kind_template", "shared_tiny_checkpoint", "shared_tiny_components",
    "tiny_components", "tiny_configs",
    "write_config_dir", "write_tiny_checkpoint", "write_tiny_vae",
]
