"""ControlNet and T2I-Adapter key renaming: the layouts people download ↔ the diffusers layout darkroom runs.

ControlNet (`ControlNetModel`):
- original / A1111 / ComfyUI single files: `control_model.`-prefixed (or bare) LDM keys — `input_blocks`,
  `middle_block`, `zero_convs.N.0`, `middle_block_out.0`, `input_hint_block.(0, 2, …, 14)`, `time_embed`,
  `label_emb` (SDXL) — converted with diffusers' own `convert_controlnet_checkpoint` (plus SDXL's `label_emb`,
  which that function leaves out);
- diffusers: `controlnet_cond_embedding`, `controlnet_down_blocks`, `controlnet_mid_block` + UNet names.

T2I-Adapter (`T2IAdapter`): TencentARC's files (`conv_in`, `body.K.block1/2`, `body.K.in_conv`; light adapters
`body.I.in_conv`, `body.I.body.J.block1/2`, `body.I.out_conv`) ↔ diffusers' `adapter.`-prefixed keys
(`adapter.body.I.resnets.J.block1`).

The reverse directions write tiny test fixtures and trained models in the layouts other tools read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..models.convert import unet_diffusers_to_ldm
from ..models.errors import ModelFileError

LDM_PREFIX = "control_model."
#: SDXL ControlNets keep the UNet's `label_emb` (ADM embedding); diffusers calls it `add_embedding`.
_LABEL_EMB = {"label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}
#: The hint encoder's convolutions sit at every second index of `input_hint_block` (SiLUs in between).
_HINT_IN, _HINT_STEP = "input_hint_block.", 2
#: Feature levels of TencentARC's T2I-Adapters (every released full adapter has four).
T2I_LEVELS = 4


def _count(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Entries under `prefix`, read now, with the prefix removed (everything when prefix is empty)."""
    n = len(prefix)
    return {k[n:]: sd[k] for k in list(sd.keys()) if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------------------
# ControlNet


def controlnet_ldm_layers_per_block(keys: list[str]) -> int:
    """Resnets per level of an LDM ControlNet, from its `input_blocks` numbering (as for a UNet)."""
    levels = 1 + _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    n_input = _count(keys, r"input_blocks\.(\d+)\.")
    lpb = (n_input - levels) // levels
    if n_input == 0 or lpb < 1:
        raise ModelFileError("the ControlNet has no recognisable input blocks")
    return lpb


def controlnet_ldm_to_diffusers(sd: Mapping[str, Any], prefix: str = LDM_PREFIX) -> dict[str, Any]:
    """An LDM-layout ControlNet (keys under `prefix`, which may be "") → diffusers ControlNetModel keys."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    bare = _strip(sd, prefix)
    bare.pop("difference", None)
    if "time_embed.0.weight" not in bare or "zero_convs.0.0.weight" not in bare:
        raise ModelFileError("not an LDM-layout ControlNet (no time_embed / zero_convs keys)")
    out = convert_controlnet_checkpoint(bare, {"layers_per_block": controlnet_ldm_layers_per_block(list(bare))})
    for old, new in _LABEL_EMB.items():
        for suffix in ("weight", "bias"):
            if old + suffix in bare:
                out[new + suffix] = bare[old + suffix]
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ModelFileError(f"the ControlNet lacks {len(missing)} tensors its layout needs (e.g. {missing[0]})")
    return out


def controlnet_diffusers_to_ldm(sd: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel keys → LDM keys without prefix (add `control_model.` for A1111/ComfyUI files)."""
    unet_part: dict[str, Any] = {}
    out: dict[str, Any] = {}
    n_blocks = _count(list(sd.keys()), r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    for k, v in sd.items():
        if m := re.match(r"controlnet_down_blocks\.(\d+)\.(weight|bias)$", k):
            out[f"zero_convs.{m.group(1)}.0.{m.group(2)}"] = v
        elif m := re.match(r"controlnet_mid_block\.(weight|bias)$", k):
            out[f"middle_block_out.0.{m.group(1)}"] = v
        elif m := re.match(r"controlnet_cond_embedding\.conv_in\.(weight|bias)$", k):
            out[f"{_HINT_IN}0.{m.group(1)}"] = v
        elif m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)$", k):
            out[f"{_HINT_IN}{_HINT_STEP * (int(m.group(1)) + 1)}.{m.group(2)}"] = v
        elif m := re.match(r"controlnet_cond_embedding\.conv_out\.(weight|bias)$", k):
            out[f"{_HINT_IN}{_HINT_STEP * (n_blocks + 1)}.{m.group(1)}"] = v
        else:
            unet_part[k] = v
    out.update(unet_diffusers_to_ldm(unet_part))
    return out


# ---------------------------------------------------------------------------------------------------------------
# T2I-Adapter


def t2i_original_kind(keys: list[str]) -> str | None:
    """'full' / 'light' for TencentARC's layouts, None otherwise."""
    if "conv_in.weight" in keys and any(re.match(r"body\.\d+\.block1\.weight$", k) for k in keys):
        return "full"
    if "body.0.in_conv.weight" in keys and any(re.match(r"body\.\d+\.body\.\d+\.block1\.weight$", k) for k in keys):
        return "light"
    return None


def t2i_original_to_diffusers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """TencentARC T2I-Adapter keys → diffusers `T2IAdapter` keys (`adapter.`-prefixed)."""
    keys = list(sd.keys())
    kind = t2i_original_kind(keys)
    out: dict[str, Any] = {}
    if kind == "full":
        n = _count(keys, r"body\.(\d+)\.block1\.")
        levels = T2I_LEVELS
        if n % levels:
            raise ModelFileError(f"T2I-Adapter with {n} resnet blocks cannot split into {levels} levels")
        per = n // levels
        for k, v in sd.items():
            if k.startswith("conv_in."):
                out["adapter." + k] = v
            elif m := re.match(r"body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$", k):
                i, j = divmod(int(m.group(1)), per)
                if m.group(2) == "in_conv":
                    if j:
                        raise ModelFileError(f"unexpected T2I-Adapter key {k!r} (in_conv after the first block)")
                    out[f"adapter.body.{i}.in_conv.{m.group(3)}"] = v
                else:
                    out[f"adapter.body.{i}.resnets.{j}.{m.group(2)}.{m.group(3)}"] = v
            elif ".down_opt.op." in k or ".skep." in k:
                raise ModelFileError(f"unsupported T2I-Adapter variant (key {k!r}: convolution downsampling or "
                                     "skip convolutions, which diffusers' T2IAdapter lacks)")
            else:
                raise ModelFileError(f"unexpected T2I-Adapter key {k!r}")
        return out
    if kind == "light":
        for k, v in sd.items():
            m = re.match(r"body\.(\d+)\.body\.(\d+)\.(.+)$", k)
            out["adapter." + (f"body.{m.group(1)}.resnets.{m.group(2)}.{m.group(3)}" if m else k)] = v
        return out
    raise ModelFileError("not a T2I-Adapter in TencentARC's layout")


def t2i_diffusers_to_original(sd: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers `T2IAdapter` keys → TencentARC's layout (full or light adapter)."""
    keys = [k.removeprefix("adapter.") for k in sd.keys()]
    light = any(".out_conv." in k for k in keys)
    per = _count(keys, r"body\.0\.resnets\.(\d+)\.")
    out: dict[str, Any] = {}
    for k, v in sd.items():
        k = k.removeprefix("adapter.")
        m = re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.+)$", k)
        if light:
            out[f"body.{m.group(1)}.body.{m.group(2)}.{m.group(3)}" if m else k] = v
        elif m:
            out[f"body.{int(m.group(1)) * per + int(m.group(2))}.{m.group(3)}"] = v
        elif mm := re.match(r"body\.(\d+)\.in_conv\.(.+)$", k):
            out[f"body.{int(mm.group(1)) * per}.in_conv.{mm.group(2)}"] = v
        else:
            out[k] = v
    return out
