"""Upscale model files → a runnable `UpscaleModel`: darkroom's own loaders for ESRGAN/RRDBNet (old, BSRGAN and
Real-ESRGAN key layouts) and Real-ESRGAN Compact, with `spandrel` as an optional backend for everything else.

Scale, channels, width (nf), depth (nb) and growth (gc) are read from the keys and tensor shapes, never from the file
name. `.safetensors` files load directly; pickles (`.pth`, `.pt`, `.ckpt`, `.bin`) are refused unless the user
allows them (setting `allow_unsafe_pickle`), and then load with `torch.load(weights_only=True)`.

Why both: spandrel (what ComfyUI and A1111 use) imports torchvision, which has no CPU wheel for our torch on some
machines; the families most people download must work anyway (see docs/decisions.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ..models.errors import ModelFileError
from ..models.family import UnsupportedModelError
from ..models.files import PICKLE_SUFFIXES, read_safetensors_header, unsafe_pickle_error
from .arch import RRDBNet, SRVGGNetCompact

log = logging.getLogger(__name__)

Backend = Literal["auto", "darkroom", "spandrel"]

#: Keys that wrap the real state dict in BasicSR/Real-ESRGAN/other training checkpoints (first match wins).
_WRAPPERS = ("params_ema", "params", "state_dict", "model", "net_g")


class UpscaleModelError(ModelFileError):
    """An upscale model file that cannot be loaded as the architecture its keys name (missing/odd tensors)."""


@dataclass(eq=False)
class UpscaleModel:
    """A loaded single-image upscaler: `model(x)` maps (B, C, H, W) in [0, 1] to (B, C, H·scale, W·scale)."""

    module: Any  # an nn.Module (darkroom backend) or a spandrel ImageModelDescriptor (callable, has .to)
    scale: int
    architecture: str
    input_channels: int = 3
    output_channels: int = 3
    name: str = ""
    backend: str = "darkroom"
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: tiles must start on multiples of this (the pixel-unshuffle factor of Real-ESRGAN ×2/×1 models)
    size_multiple: int = 1

    def __repr__(self) -> str:
        return f"UpscaleModel({self.name!r}, {self.architecture}, x{self.scale}, {self.backend})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def _torch_module(self) -> nn.Module:
        return self.module if isinstance(self.module, nn.Module) else self.module.model

    @property
    def device(self) -> torch.device:
        return next(self._torch_module().parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._torch_module().parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "UpscaleModel":
        """Move/cast the weights in place; returns self."""
        if device is not None:
            self.module.to(device)
        if dtype is not None:
            self.module.to(dtype)
        return self

    def size_in_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._torch_module().parameters())


# -- reading ----------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file (training wrappers like `params_ema` and a `module.` prefix removed)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"upscale model file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_unsafe_pickle:
            raise unsafe_pickle_error(p)
        try:
            obj: Any = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — anything torch.load raises means the file cannot be used
            raise ModelFileError(f"cannot load {p} with torch.load(weights_only=True): {e}") from e
    elif suffix in (".safetensors", ".sft"):
        read_safetensors_header(p)  # clear errors for truncated/corrupt files
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(f"{p} is not a readable safetensors file: {e}") from e
    else:
        raise ModelFileError(f"{p.name}: unknown upscale model file type {suffix!r} (use .safetensors or .pth)")
    return normalise_state_dict(obj, p.name)


def normalise_state_dict(obj: Any, what: str = "upscale model") -> dict[str, torch.Tensor]:
    """Unwrap `params_ema`/`params`/`state_dict`… and strip a `module.` prefix (DataParallel checkpoints)."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) and k.endswith(".weight")
                                              for k, v in obj.items()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{what} does not hold a state dict (found {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelFileError(f"{what} holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# -- detection --------------------------------------------------------------------------------------------------------


def detect_architecture(sd: Mapping[str, torch.Tensor]) -> str | None:
    """'esrgan' (any RRDBNet layout), 'compact' (SRVGGNetCompact) or None if darkroom has no loader for the keys."""
    if "model.0.weight" in sd and "model.1.sub.0.RDB1.conv1.0.weight" in sd:
        return "esrgan"
    if "conv_first.weight" in sd and "conv_last.weight" in sd and (
            "body.0.rdb1.conv1.weight" in sd or "RRDB_trunk.0.RDB1.conv1.weight" in sd):
        return "esrgan"
    if "body.0.weight" in sd and "body.1.weight" in sd and sd["body.0.weight"].dim() == 4 \
            and sd["body.1.weight"].dim() == 1:
        return "compact"
    return None


_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_OLD_LR = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_BSR_RDB = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_BSR_NAMES = {"trunk_conv": "conv_body", "upconv1": "conv_up1", "upconv2": "conv_up2", "upconv3": "conv_up3",
              "HRconv": "conv_hr"}


def _unknown(keys: list[str], what: str, layout: str) -> UpscaleModelError:
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return UpscaleModelError(f"{what}: unexpected tensors for an ESRGAN model in the {layout} layout: "
                             f"{', '.join(keys[:5])}{more} (an ESRGAN+ or other variant?)")


def rrdb_to_new_layout(sd: Mapping[str, torch.Tensor], what: str = "upscale model") -> dict[str, torch.Tensor]:
    """Any RRDBNet key layout → Real-ESRGAN names (`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_upI`,
    `conv_hr`, `conv_last`).

    Old ESRGAN layout (`model.0`, `model.1.sub.N.RDBk.convj.0`, `model.1.sub.<nb>` = trunk conv, then per ×2 step an
    Upsample/conv/LeakyReLU triple at `model.3`, `model.6`, …, then `model.<3u+2>` HR conv and `model.<3u+4>` last
    conv); BSRGAN/RealSR layout (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`).
    """
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        return dict(sd)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    if "RRDB_trunk.0.RDB1.conv1.weight" in sd:
        for k, v in sd.items():
            m = _BSR_RDB.match(k)
            if m:
                out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
                continue
            head, _, tail = k.partition(".")
            if head in _BSR_NAMES or head in ("conv_first", "conv_last"):
                out[f"{_BSR_NAMES.get(head, head)}.{tail}"] = v
            else:
                unknown.append(k)
        if unknown:
            raise _unknown(unknown, what, "BSRGAN")
        return out
    trunk = [int(m[1]) for k in sd if (m := _OLD_LR.match(k))]
    tops = sorted({int(m[1]) for k in sd if (m := _OLD_TOP.match(k))})
    if not trunk or not tops or tops[0] != 0:
        raise UpscaleModelError(f"{what}: not an ESRGAN model in the old layout (no model.0 / model.1.sub.<nb> conv)")
    nb = max(trunk)
    last = tops[-1]
    if (last - 4) % 3 or last < 4:
        raise UpscaleModelError(f"{what}: ESRGAN layer indices {tops} do not match n × (upsample, conv, act) "
                                "followed by an HR conv and a last conv (a ×3 or pixel-shuffle variant?)")
    n_up = (last - 4) // 3
    top_names = {0: "conv_first", 3 * n_up + 2: "conv_hr", last: "conv_last"}
    top_names.update({3 * (i + 1): f"conv_up{i + 1}" for i in range(n_up)})
    for k, v in sd.items():
        if (m := _OLD_RDB.match(k)) and int(m[1]) < nb:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
        elif (m := _OLD_LR.match(k)) and int(m[1]) == nb:
            out[f"conv_body.{m[2]}"] = v
        elif (m := _OLD_TOP.match(k)) and int(m[1]) in top_names:
            out[f"{top_names[int(m[1])]}.{m[2]}"] = v
        else:
            unknown.append(k)
    if unknown:
        raise _unknown(unknown, what, "old ESRGAN")
    return out


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Size:
    if key not in sd:
        raise UpscaleModelError(f"{what}: missing tensor {key}")
    return sd[key].shape


def build_rrdbnet(sd: Mapping[str, torch.Tensor], what: str = "upscale model") -> tuple[RRDBNet, dict[str, torch.Tensor]]:
    """An RRDBNet sized from the (any layout) state dict, and the state dict in its own names."""
    new = rrdb_to_new_layout(sd, what)
    first = _shape(new, "conv_first.weight", what)  # (nf, in_ch, 3, 3)
    nf, in_ch = int(first[0]), int(first[1])
    out_ch = int(_shape(new, "conv_last.weight", what)[0])
    gc = int(_shape(new, "body.0.rdb1.conv1.weight", what)[0])
    nb = 1 + max(int(k.split(".")[1]) for k in new if k.startswith("body."))
    n_up = sum(1 for k in new if re.fullmatch(r"conv_up\d+\.weight", k))
    shuffle = 1
    if in_ch != out_ch:
        ratio = in_ch // out_ch if in_ch % out_ch == 0 else 0
        if ratio not in (4, 16):
            raise UpscaleModelError(f"{what}: ESRGAN with {in_ch} input and {out_ch} output channels is neither a "
                                    "plain nor a pixel-unshuffle (×4 / ×16 channels) model")
        shuffle = 2 if ratio == 4 else 4
    if 2**n_up % shuffle:
        raise UpscaleModelError(f"{what}: {n_up} upsampling step(s) cannot undo a pixel-unshuffle by {shuffle}")
    net = RRDBNet(in_ch=in_ch, out_ch=out_ch, nf=nf, nb=nb, gc=gc, n_up=n_up, shuffle=shuffle)
    return net, new


def build_compact(sd: Mapping[str, torch.Tensor], what: str = "upscale model") -> SRVGGNetCompact:
    """An SRVGGNetCompact sized from `body.N` keys (PReLU activations at the odd indices)."""
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("body.")})
    last = idx[-1]
    if idx != list(range(last + 1)) or last % 2 or last < 2:
        raise UpscaleModelError(f"{what}: compact model layers {idx[:6]}… are not conv/PReLU pairs plus a last conv")
    first = _shape(sd, "body.0.weight", what)
    nf, in_ch = int(first[0]), int(first[1])
    out_total = int(_shape(sd, f"body.{last}.weight", what)[0])
    scale = round((out_total / in_ch) ** 0.5)
    if scale < 1 or scale * scale * in_ch != out_total:
        raise UpscaleModelError(f"{what}: last conv has {out_total} channels, not {in_ch}·scale² for any scale")
    return SRVGGNetCompact(in_ch=in_ch, out_ch=in_ch, nf=nf, num_conv=(last - 2) // 2, scale=scale)


def _strict_load(net: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    result = net.load_state_dict(dict(sd), strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise UpscaleModelError(f"{what}: tensors do not match the detected architecture: {'; '.join(problems)}")


def _spandrel_model(sd: Mapping[str, torch.Tensor], what: str) -> UpscaleModel:
    """Load through spandrel (raises UnsupportedModelError when spandrel is missing or does not know the keys)."""
    try:
        import spandrel  # optional: needs torchvision
    except Exception as e:  # noqa: BLE001 — ImportError, or torchvision's RuntimeError on a mismatched build
        raise UnsupportedModelError(
            f"{what}: unsupported upscale model: its keys match none of darkroom's own loaders (ESRGAN/RRDBNet in "
            f"the old, BSRGAN or Real-ESRGAN layout; Real-ESRGAN Compact). Other architectures (SwinIR, DAT, HAT, "
            f"OmniSR, …) need the optional 'spandrel' package (with torchvision), which could not be imported: "
            f"{type(e).__name__}: {e}") from None
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(dict(sd))
    except Exception as e:  # noqa: BLE001 — spandrel raises its own UnsupportedModelError and others
        raise UnsupportedModelError(f"{what}: unsupported upscale model ({type(e).__name__}: {e})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise UnsupportedModelError(f"{what}: upscale model must be a single-image model "
                                    f"(spandrel says {type(desc).__name__})")
    desc.eval()
    arch = getattr(getattr(desc, "architecture", None), "name", None) or type(desc.model).__name__
    multiple = getattr(getattr(desc, "size_requirements", None), "multiple_of", 1) or 1
    return UpscaleModel(module=desc, scale=int(desc.scale), architecture=str(arch),
                        input_channels=int(desc.input_channels), output_channels=int(desc.output_channels),
                        backend="spandrel", tags=tuple(getattr(desc, "tags", ()) or ()), size_multiple=int(multiple))


def model_from_state_dict(sd: Mapping[str, torch.Tensor], name: str = "upscale model", *,
                          backend: Backend = "auto") -> UpscaleModel:
    """Build an UpscaleModel (CPU, float32, eval) from a normalised state dict.

    backend "auto": darkroom's loader for ESRGAN/Compact keys, else spandrel if it imports; "darkroom" never uses
    spandrel; "spandrel" always does.
    """
    if backend not in ("auto", "darkroom", "spandrel"):
        raise ValueError(f"unknown upscale backend {backend!r}; use auto, darkroom or spandrel")
    if backend == "spandrel":
        model = _spandrel_model(sd, name)
        model.name = name
        return model
    arch = detect_architecture(sd)
    if arch is None:
        if backend == "darkroom":
            sample = ", ".join(list(sd)[:4])
            raise UnsupportedModelError(f"{name}: unsupported upscale model: darkroom's own loaders take ESRGAN/"
                                        f"RRDBNet and Real-ESRGAN Compact models (other architectures go through "
                                        f"the optional 'spandrel' backend); this file starts with {sample}")
        model = _spandrel_model(sd, name)
        model.name = name
        return model
    net: nn.Module
    if arch == "esrgan":
        net, own = build_rrdbnet(sd, name)
        n_blocks = len(net.body)
        nf = net.conv_first.out_channels
        label, tags = "ESRGAN", (f"{nf}nf", f"{n_blocks}nb")
        if net.shuffle > 1:
            label = "Real-ESRGAN (RRDBNet, pixel-unshuffle)"
        in_ch = net.conv_first.in_channels // (net.shuffle * net.shuffle)
        out_ch = net.conv_last.out_channels
        scale, multiple = net.scale, net.shuffle
    else:
        net, own = build_compact(sd, name), dict(sd)
        label, tags = "Real-ESRGAN Compact", (f"{net.body[0].out_channels}nf", f"{(len(net.body) - 3) // 2}nc")
        in_ch = out_ch = net.body[0].in_channels
        scale, multiple = net.scale, 1
    _strict_load(net, {k: v.float() for k, v in own.items()}, name)
    net.eval().requires_grad_(False)
    return UpscaleModel(module=net, scale=int(scale), architecture=label, input_channels=in_ch,
                        output_channels=out_ch, name=name, backend="darkroom", tags=tags, size_multiple=multiple)


def load_upscale_model(path: str | Path, *, allow_unsafe_pickle: bool = False, backend: Backend = "auto",
                       device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> UpscaleModel:
    """Read an upscaler file (`.safetensors`, or a pickle when allowed) and build it, optionally moved/cast."""
    p = Path(path)
    sd = read_state_dict(p, allow_unsafe_pickle=allow_unsafe_pickle)
    model = model_from_state_dict(sd, p.name, backend=backend)
    log.info("upscale model %s: %s x%d (%s)", p.name, model.architecture, model.scale, model.backend)
    return model.to(device, dtype)


#: A1111's built-in Real-ESRGAN upscaler names → the file stems people keep in `models/RealESRGAN` / `ESRGAN`.
A1111_UPSCALER_FILES: dict[str, str] = {
    "R-ESRGAN 4x+": "RealESRGAN_x4plus",
    "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
    "R-ESRGAN 2x+": "RealESRGAN_x2plus",
    "R-ESRGAN General 4xV3": "realesr-general-x4v3",
    "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3",
    "ESRGAN_4x": "ESRGAN_4x",
}


def find_upscaler(registry: Any, name: str) -> Path:
    """The file of an upscaler named as ComfyUI (`4x-UltraSharp.safetensors`) or A1111 (`4x-UltraSharp`,
    `R-ESRGAN 4x+`) names it, from `registry` (a `darkroom.models.registry.ModelRegistry`)."""
    from ..models.errors import ModelNotFoundError

    try:
        return registry.find("upscale_models", name)
    except ModelNotFoundError:
        alias = A1111_UPSCALER_FILES.get(str(name).strip())
        if alias is None:
            raise
        return registry.find("upscale_models", alias)


def load_upscaler_by_name(registry: Any, name: str, *, allow_unsafe_pickle: bool = False,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype | None = torch.float32) -> UpscaleModel:
    """`find_upscaler` + `load_upscale_model` (float32 by default, as ComfyUI runs upscalers): the one way the
    engine's hires fix and the UpscaleModelLoader node load a named model, so both give the same pixels."""
    path = find_upscaler(registry, name)
    model = load_upscale_model(path, allow_unsafe_pickle=allow_unsafe_pickle, device=device, dtype=dtype)
    model.name = getattr(registry, "name_of", lambda *_: None)("upscale_models", path) or path.name
    return model
