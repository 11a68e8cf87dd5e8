"""Tiny random ControlNets and T2I-Adapters for the tiny SD checkpoints, written in the real file layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from darkroom.control.convert import LDM_PREFIX, controlnet_diffusers_to_ldm, t2i_diffusers_to_original

#: The hint encoder of a tiny ControlNet: four levels like the real (16, 32, 96, 256), so hints are 8× the latent.
COND_CHANNELS = (4, 8, 8, 16)


def square_picture(size: int = 64, lo: int = 16, hi: int = 48) -> Image.Image:
    """A white square on black (what a canny map of a shape looks like)."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[lo:hi, lo:hi] = 255
    return Image.fromarray(arr)


def jitter(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Random non-zero values everywhere (a fresh ControlNet's zero convolutions would hide every mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def tiny_controlnet(unet, seed: int = 0, *, conditioning_channels: int = 3):
    """A ControlNetModel shaped like `unet` (as `ControlNetModel.from_unet`), with random weights."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS,
                                   conditioning_channels=conditioning_channels)
    return jitter(cn, seed)


def tiny_t2i_adapter(channels=(32, 64, 64, 64), seed: int = 0, *, in_channels: int = 3, xl: bool = False,
                     light: bool = False):
    """A diffusers T2IAdapter with random weights (full, full XL or light)."""
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    kind = "light_adapter" if light else "full_adapter_xl" if xl else "full_adapter"
    ad = T2IAdapter(in_channels=in_channels, channels=list(channels), num_res_blocks=2 if not light else 1,
                    downscale_factor=16 if xl else 8, adapter_type=kind)
    return jitter(ad, seed)


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})
    return path


def write_controlnet(path: Path, cn, layout: str = "ldm", *, base_unet=None, metadata=None) -> Path:
    """layout: 'ldm' (control_model.* as A1111/ComfyUI), 'ldm-bare', 'diff' (differences to `base_unet`, with a
    `difference` key), 'diffusers-file' (one file, no config) or 'diffusers' (folder with config.json)."""
    sd = cn.state_dict()
    path = Path(path)
    if layout == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        cn.save_config(path)
        _save(sd, path / "diffusion_pytorch_model.safetensors")
        return path
    if layout == "diffusers-file":
        return _save(sd, path, metadata)
    if layout == "diff":
        base = base_unet.state_dict()
        sd = {k: (v - base[k] if k in base and base[k].shape == v.shape else v) for k, v in sd.items()}
    ldm = controlnet_diffusers_to_ldm(sd)
    prefix = "" if layout == "ldm-bare" else LDM_PREFIX
    out = {prefix + k: v for k, v in ldm.items()}
    if layout == "diff":
        out["difference"] = torch.tensor([])
    elif layout not in ("ldm", "ldm-bare"):
        raise ValueError(layout)
    return _save(out, path, metadata)


def write_t2i_adapter(path: Path, adapter, layout: str = "original") -> Path:
    """layout: 'original' (TencentARC), 'diffusers-file' (adapter.* keys) or 'diffusers' (folder + config.json)."""
    sd = adapter.state_dict()
    path = Path(path)
    if layout == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        adapter.save_config(path)
        _save(sd, path / "diffusion_pytorch_model.safetensors")
        return path
    if layout == "diffusers-file":
        return _save(sd, path)
    if layout == "original":
        return _save(t2i_diffusers_to_original(sd), path)
    raise ValueError(layout)
