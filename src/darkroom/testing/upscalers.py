"""Test builders: tiny random upscaler weights in the real key layouts people download.

- ESRGAN "old" layout (original ESRGAN repo, 4x-UltraSharp and most community models): `model.0.weight`,
  `model.1.sub.N.RDB1.conv1.0.weight`, `model.1.sub.<nb>.weight`, upsample convs `model.3`, `model.6`, …,
  HR conv `model.<3u+2>`, last conv `model.<3u+4>`;
- "new" layout (Real-ESRGAN/BasicSR: RealESRGAN_x4plus, x2plus with a pixel-unshuffled 12-channel input):
  `conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1/2`, `conv_hr`, `conv_last`;
- "bsrgan" layout (BSRGAN/RealSR): `RRDB_trunk.N.RDB1.conv1`, `trunk_conv`, `upconv1/2`, `HRconv`;
- Real-ESRGAN Compact (realesr-general-x4v3, animevideov3): `body.0` conv, `body.1` PReLU, … last conv.

Full-size shapes (`full_size=True`) are built on the `meta` device (no memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from darkroom.upscale.arch import RRDBNet, SRVGGNetCompact

Layout = Literal["new", "old", "bsrgan"]


def _randomise(module: torch.nn.Module, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.device.type == "meta":
                continue
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * std * 0.1)
            elif p.dim() == 1:  # PReLU slopes
                p.copy_(0.1 + torch.rand(p.shape, generator=g) * 0.2)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * std / fan_in**0.5)


def _to_old(sd: dict[str, torch.Tensor], nb: int, n_up: int) -> dict[str, torch.Tensor]:
    """Real-ESRGAN names → the original ESRGAN sequential names (what 4x-UltraSharp's file holds)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head == "conv_first":
            out[f"model.0.{rest}"] = v
        elif head == "body":
            i, rdb, conv, param = rest.split(".")
            out[f"model.1.sub.{i}.RDB{rdb[-1]}.{conv}.0.{param}"] = v
        elif head == "conv_body":
            out[f"model.1.sub.{nb}.{rest}"] = v
        elif head.startswith("conv_up"):
            out[f"model.{3 * int(head[len('conv_up'):])}.{rest}"] = v
        elif head == "conv_hr":
            out[f"model.{3 * n_up + 2}.{rest}"] = v
        elif head == "conv_last":
            out[f"model.{3 * n_up + 4}.{rest}"] = v
        else:
            raise AssertionError(k)
    return out


def _to_bsrgan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv", "conv_up1": "upconv1", "conv_up2": "upconv2",
             "conv_up3": "upconv3"}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head == "body":
            i, rdb, conv, param = rest.split(".")
            out[f"RRDB_trunk.{i}.RDB{rdb[-1]}.{conv}.{param}"] = v
        else:
            out[f"{names.get(head, head)}.{rest}"] = v
    return out


def esrgan_state_dict(layout: Layout = "new", *, scale: int = 4, nf: int = 8, nb: int = 1, gc: int = 4,
                      channels: int = 3, unshuffle: bool | None = None, seed: int = 0, std: float = 0.5,
                      full_size: bool = False) -> dict[str, torch.Tensor]:
    """A random RRDBNet state dict in a real key layout.

    Plain models have log2(scale) upsample steps. With `unshuffle` (default: new layout at scale 1 or 2, as
    Real-ESRGAN x2plus) the input is pixel-unshuffled by 4/scale and the trunk always upsamples ×4.
    full_size: ignore nf/nb/gc and use ESRGAN's 64/23/32 on the meta device.
    """
    if full_size:
        nf, nb, gc = 64, 23, 32
    if unshuffle is None:
        unshuffle = layout == "new" and scale in (1, 2)
    if unshuffle:
        shuffle, n_up = 4 // scale, 2
    else:
        n_up = {1: 0, 2: 1, 4: 2, 8: 3}[scale]
        shuffle = 1
    with torch.device("meta" if full_size else "cpu"):
        net = RRDBNet(channels * shuffle * shuffle, channels, nf=nf, nb=nb, gc=gc, n_up=n_up, shuffle=shuffle)
    _randomise(net, seed, std)
    sd = {k: v.detach().clone() if v.device.type != "meta" else v for k, v in net.state_dict().items()}
    if layout == "old":
        return _to_old(sd, nb, n_up)
    if layout == "bsrgan":
        return _to_bsrgan(sd)
    return sd


def compact_state_dict(*, scale: int = 4, nf: int = 8, num_conv: int = 2, channels: int = 3, seed: int = 0,
                       std: float = 0.5, full_size: bool = False) -> dict[str, torch.Tensor]:
    """A random SRVGGNetCompact state dict (`body.N.weight`; PReLU at odd N). full_size: nf 64, 32 convs, meta."""
    if full_size:
        nf, num_conv = 64, 32
    with torch.device("meta" if full_size else "cpu"):
        net = SRVGGNetCompact(channels, channels, nf=nf, num_conv=num_conv, scale=scale)
    _randomise(net, seed, std)
    return {k: v.detach().clone() if v.device.type != "meta" else v for k, v in net.state_dict().items()}


def write_upscaler(path: str | Path, state_dict: dict[str, torch.Tensor], *, wrap: str | None = None) -> Path:
    """Write a state dict as `.safetensors`, or with a pickle suffix via torch.save (optionally wrapped in
    `{wrap: state_dict}`, as BasicSR's `params_ema` files are)."""
    p = Path(path)
    sd = {k: v.contiguous() for k, v in state_dict.items()}
    if p.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import save_file

        save_file(sd, str(p))
    else:
        torch.save({wrap: sd} if wrap else sd, p)
    return p
