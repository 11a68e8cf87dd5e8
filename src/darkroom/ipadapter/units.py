"""Reference images in requests: IP-Adapter units in A1111's ControlNet-extension convention.

A `ControlNetUnit` whose module is one of sd-webui-controlnet's IP-Adapter preprocessors (`ip-adapter_clip_sd15`
a.k.a. `ip-adapter_clip_h`, `ip-adapter_clip_sdxl` a.k.a. `ip-adapter_clip_g`, `ip-adapter_clip_sdxl_plus_vith`,
`ip-adapter-auto`) and whose model is an IP-Adapter file applies its image as a reference with the unit's weight,
guidance window (start/end of the run, as IPAdapterAdvanced's start_at/end_at) and `weight_type` (IPAdapterAdvanced's:
"style transfer" = style only, "composition" = composition only; plain, plus, plus-face and full-face files alike).

- `resolve_ipadapter_unit` finds the adapter (models/ipadapter, or models/controlnet where A1111 keeps them) and the
  CLIP vision encoder the module implies (ViT-H/14 or ViT-bigG/14 by ComfyUI_IPAdapter_plus's file names, else the
  only one installed); `ip-adapter-auto` reads the encoder off the adapter's embedding width.
- `add_ipadapter_nodes` adds LoadImage → CLIPVisionLoader + IPAdapterModelLoader → IPAdapterAdvanced per unit to a
  request's workflow; `reference_uses` / `reference_processors` run the very same steps in `Engine.generate`.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..control.units import ControlNetUnit, ControlUnitError

VIT_H, VIT_BIGG = "ViT-H/14", "ViT-bigG/14"
#: sd-webui-controlnet's IP-Adapter preprocessors (internal names) → the image encoder each one runs.
MODULES: dict[str, str | None] = {
    "ip-adapter-auto": None,  # from the model file
    "ip-adapter_clip_sd15": VIT_H,
    "ip-adapter_clip_sdxl": VIT_BIGG,
    "ip-adapter_clip_sdxl_plus_vith": VIT_H,
}
#: The extension's UI labels for them (accepted as module names too).
LABELS = {"ip-adapter_clip_sd15": "ip-adapter_clip_h", "ip-adapter_clip_sdxl": "ip-adapter_clip_g"}
_BY_LABEL = {v: k for k, v in LABELS.items()}
#: Modules of the extension that need face-analysis networks darkroom does not include.
UNSUPPORTED = {"ip-adapter_face_id": "insightface", "ip-adapter_face_id_plus": "insightface",
               "ip-adapter_pulid": "insightface and EVA-CLIP"}
#: Where each encoder comes from, under the file name ComfyUI_IPAdapter_plus looks for.
ENCODER_FILES = {
    VIT_H: ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "h94/IP-Adapter models/image_encoder/model.safetensors"),
    VIT_BIGG: ("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
               "h94/IP-Adapter sdxl_models/image_encoder/model.safetensors"),
}
_ENCODER_NAMES = {  # file names people give the encoders (ComfyUI_IPAdapter_plus's patterns and A1111's clip_h/g)
    VIT_H: re.compile(r"vit.h.14|clip.?vit.?h\b|clip_h\b|ipadapter.*sd15|sd1.?5.*model", re.I),
    VIT_BIGG: re.compile(r"vit.bigg|clip_g\b|ipadapter.*sdxl|sdxl.*model", re.I),
}
#: The released encoders' widths: (projected embedding, hidden state).
_ENCODER_WIDTHS = {VIT_H: (1024, 1280), VIT_BIGG: (1280, 1664)}
WEIGHT_RANGE = (-1.0, 5.0)  # IPAdapterAdvanced's weight input


def is_ipadapter_module(module: str | None) -> bool:
    """Whether a unit's module names an IP-Adapter preprocessor (supported or not)."""
    return str(module or "").strip().lower().startswith(("ip-adapter", "ip_adapter"))


def canonical_module(module: str) -> str:
    """The extension's internal name of an IP-Adapter module (labels accepted); ValueError for others."""
    name = str(module).strip().lower().replace("ip_adapter", "ip-adapter")
    name = _BY_LABEL.get(name, name)
    if name in MODULES:
        return name
    if name in UNSUPPORTED:
        raise ValueError(f"preprocessor {module!r} needs {UNSUPPORTED[name]}, which darkroom does not include; use "
                         f"ip-adapter-auto with a CLIP-based IP-Adapter (plain, plus, plus-face, full-face)")
    raise ValueError(f"unknown IP-Adapter preprocessor {module!r}; one of "
                     f"{', '.join([*MODULES, *_BY_LABEL])}")


# -- files --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterInfo:
    """What an IP-Adapter file's tensor shapes say."""

    kind: str  # "plain" | "plus" | "full"
    cross_dim: int  # the UNet's text width it was made for (768 SD1.x, 2048 SDXL)
    embed_width: int  # width of the CLIP output it reads: image_embeds (plain) or hidden states (plus, full)

    @property
    def encoder(self) -> str | None:
        """The released encoder whose output has that width, if any."""
        col = 0 if self.kind == "plain" else 1
        return next((e for e, w in _ENCODER_WIDTHS.items() if w[col] == self.embed_width), None)


_INFO_CACHE: dict[tuple, AdapterInfo | None] = {}


def adapter_info(path: Path, *, allow_unsafe_pickle: bool = False) -> AdapterInfo | None:
    """An IP-Adapter file's kind and widths (cached while the file is unchanged); None for anything else.

    A `.safetensors` file is read from its header; a pickle (`.bin`, `.pth`, …) only when allow_unsafe_pickle, with
    `torch.load(weights_only=True)` — else None, as for any file that cannot be read."""
    from ..models.detect import read_header
    from ..models.files import SAFETENSORS_SUFFIXES, is_pickle
    from .model import read_pickled_ipadapter

    path = Path(path)
    pickled = is_pickle(path)
    if path.is_dir() or not ((pickled and allow_unsafe_pickle) or path.suffix.lower() in SAFETENSORS_SUFFIXES):
        return None
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _INFO_CACHE:
        try:
            shapes = ({k: tuple(v.shape) for k, v in read_pickled_ipadapter(path, allow_unsafe_pickle=True).items()}
                      if pickled else read_header(path))
        except Exception:  # noqa: BLE001 — an unreadable file is simply not an IP-Adapter here
            shapes = {}
        _INFO_CACHE[key] = _info_from_shapes(shapes)
    return _INFO_CACHE[key]


def _info_from_shapes(shapes: dict[str, tuple]) -> AdapterInfo | None:
    k = shapes.get("ip_adapter.1.to_k_ip.weight")
    if k is None or not any(name.startswith("image_proj.") for name in shapes):
        return None
    for key, kind in (("image_proj.proj_in.weight", "plus"), ("image_proj.proj.0.weight", "full"),
                      ("image_proj.proj.weight", "plain")):
        if key in shapes:
            return AdapterInfo(kind, int(k[1]), int(shapes[key][1]))
    return None


def ipadapter_files(registry: Any) -> dict[str, Path]:
    """{name: path} of the installed IP-Adapters: every file in models/ipadapter (pickles too: the folder says what
    they are), then the files in models/controlnet whose tensors say they are IP-Adapters — pickles there only when
    the registry's settings allow_unsafe_pickle (they must be unpickled to tell)."""
    allow = bool(registry.settings.allow_unsafe_pickle)
    out = dict(registry.entries("ipadapter"))
    for name, path in registry.entries("controlnet").items():
        if name not in out and adapter_info(path, allow_unsafe_pickle=allow) is not None:
            out[name] = path
    return out


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _matching(names: Any, text: str) -> list[str]:
    """The names a request's model text picks: the exact name, else those whose stem or file name it is."""
    if text in names:
        return [text]
    return [n for n in names if text.lower() in (_stem(n).lower(), n.rsplit("/", 1)[-1].lower())]


def find_ipadapter_file(registry: Any, name: str) -> str:
    """The name IPAdapterModelLoader lists for an adapter given that name, an A1111 title `name [hash]`, a stem or
    a file name; ControlUnitError listing the installed ones otherwise (the pickle refusal when it names a pickle in
    models/controlnet that allow_unsafe_pickle keeps unread)."""
    from ..models.files import is_pickle
    from .model import pickle_refusal

    files = ipadapter_files(registry)
    text = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", str(name).strip()).replace("\\", "/")
    matches = _matching(files, text)
    if len(matches) == 1:
        return matches[0]
    if not matches and not registry.settings.allow_unsafe_pickle:
        pickles = {n: p for n, p in registry.entries("controlnet").items() if is_pickle(p)}
        unread = _matching(pickles, text)
        if len(unread) == 1:
            raise ControlUnitError(str(pickle_refusal(pickles[unread[0]])), "model")
    folders = [*registry.settings.model_dirs("ipadapter"), *registry.settings.model_dirs("controlnet")]
    where = ", ".join(str(d) for d in folders) or f"{registry.settings.models_dir / 'ipadapter'} (not created yet)"
    several = f" (several match: {', '.join(matches)})" if matches else ""
    raise ControlUnitError(f"no IP-Adapter named {name!r}{several}; installed: {', '.join(files) or 'none'} "
                           f"(searched {where})", "model")


def ipadapter_titles(registry: Any) -> dict[str, str]:
    """{A1111 title 'name [hash]': name} of the IP-Adapters in models/ipadapter (those in models/controlnet are
    listed with the control models already)."""
    from ..control.names import display_name, legacy_hash

    out = {f"{display_name(n, p)} [{legacy_hash(p)}]": n for n, p in registry.entries("ipadapter").items()}
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def ipadapter_title(registry: Any, name: str) -> str:
    """A1111's `name [hash]` of one IP-Adapter (the name as given when it is not installed)."""
    from ..control.names import display_name, legacy_hash

    path = ipadapter_files(registry).get(name)
    return name if path is None else f"{display_name(name, path)} [{legacy_hash(path)}]"


def _encoder_widths(path: Path) -> tuple[int, int] | None:
    """(projection, hidden) widths of a CLIP vision file from its header (None when unreadable)."""
    from ..models.detect import read_header

    try:
        shape = read_header(path).get("visual_projection.weight")
    except Exception:  # noqa: BLE001
        return None
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _encoder_for(module: str, info: AdapterInfo | None, stem: str) -> str | None:
    """The encoder a module implies; for ip-adapter-auto, the adapter's (by width, else by its released name)."""
    if MODULES[module] is not None:
        return MODULES[module]
    if info is not None and info.encoder is not None:
        return info.encoder
    name = stem.lower()
    if "vit-g" in name or ("sdxl" in name and "vit-h" not in name):
        return VIT_BIGG
    return VIT_H if ("sd15" in name or "vit-h" in name) else None


def find_clip_vision(registry: Any, encoder: str | None, *, what: str = "this IP-Adapter unit") -> str:
    """The clip_vision file for an encoder: by ComfyUI_IPAdapter_plus's file names, else the only one installed
    (unless its name says it is another encoder)."""
    files = {n: p for n, p in registry.entries("clip_vision").items() if n.lower().endswith(".safetensors")}

    def named(enc: str) -> list[str]:
        return [n for n in files if _ENCODER_NAMES[enc].search(n.rsplit("/", 1)[-1])]

    if encoder is not None and named(encoder):
        return named(encoder)[0]
    if len(files) == 1 and (encoder is None or not any(named(e) for e in _ENCODER_NAMES if e != encoder)):
        return next(iter(files))
    folder = registry.settings.models_dir / "clip_vision"
    if encoder is None:
        raise ControlUnitError(f"{what}: cannot tell which CLIP vision encoder the model needs among "
                               f"{', '.join(files) or 'none installed'}; choose ip-adapter_clip_h (ViT-H) or "
                               f"ip-adapter_clip_g (ViT-bigG) as module, or put the encoder into {folder}", "module")
    file, source = ENCODER_FILES[encoder]
    others = f" (installed: {', '.join(files)})" if files else ""
    raise ControlUnitError(f"{what} needs the CLIP {encoder} image encoder: put {file} ({source}, renamed) into "
                           f"{folder}{others}", "clip_vision")


def resolve_ipadapter_unit(registry: Any, unit: ControlNetUnit, index: int = 0) -> ControlNetUnit:
    """The unit with its module's internal name, its adapter as IPAdapterModelLoader names it and its CLIP vision
    file (kept when given); ControlUnitError naming the field and what to install otherwise (the pickle refusal
    for a `.bin`/`.pth` adapter unless allow_unsafe_pickle)."""
    from ..models.files import is_pickle
    from .model import pickle_refusal

    try:
        module = canonical_module(unit.module)
    except ValueError as ex:
        raise ControlUnitError(str(ex), "module") from None
    model = find_ipadapter_file(registry, unit.model)
    path = ipadapter_files(registry)[model]
    allow = bool(registry.settings.allow_unsafe_pickle)
    if is_pickle(path) and not allow:
        raise ControlUnitError(str(pickle_refusal(path)), "model")
    info = adapter_info(path, allow_unsafe_pickle=allow)
    if info is None:
        raise ControlUnitError(f"{model} is not an IP-Adapter darkroom reads (FaceID and InstantID files need "
                               f"insightface)", "model")
    what = f"IP-Adapter unit {index} ({module}, {_stem(model)})"
    clip = unit.clip_vision
    if clip:
        try:
            clip = registry.name_of("clip_vision", registry.find("clip_vision", clip)) or clip
        except Exception as ex:  # noqa: BLE001 — the registry's message lists the installed encoders
            raise ControlUnitError(f"{what}: {ex}", "clip_vision") from None
    else:
        clip = find_clip_vision(registry, _encoder_for(module, info, _stem(model)), what=what)
    widths = _encoder_widths(registry.find("clip_vision", clip))
    if widths is not None:
        have = widths[0] if info.kind == "plain" else widths[1]
        if have != info.embed_width:
            raise ControlUnitError(f"{what}: the model reads {info.embed_width}-wide CLIP embeddings but {clip} makes "
                                   f"{have}-wide ones; use the other encoder (module ip-adapter_clip_h for ViT-H, "
                                   f"ip-adapter_clip_g for ViT-bigG, or ip-adapter-auto)", "module")
    return replace(unit, module=module, model=model, clip_vision=clip)


# -- workflow nodes and the engine's side --------------------------------------------------------------------------
Link = list  # [node_id, output_index]


def add_ipadapter_nodes(g: Any, params: Any, model: Link) -> tuple[Link, Link]:
    """Add every IP-Adapter unit's nodes to the graph builder `g`, chained on `model` in unit order; returns the
    (first-pass, hires-pass) MODEL links (a unit's hr_option picks its passes)."""
    hires = params.hires is not None and params.init_image is None
    lo = hi = model
    loaders: dict[tuple[str, str], str] = {}

    def loader(class_type: str, key: str, name: str, title: str) -> Link:
        if (class_type, name) not in loaders:
            loaders[(class_type, name)] = g.add(class_type, {key: name}, title=title)
        return [loaders[(class_type, name)], 0]

    for i, unit in enumerate(params.controlnets):
        if not unit.is_ipadapter:
            continue
        unit.validate()
        if unit.image is None or not unit.clip_vision:
            raise ValueError(f"IP-Adapter unit {i} needs an image and a resolved clip_vision file "
                             f"(resolve_ipadapter_unit)")
        vision = loader("CLIPVisionLoader", "clip_name", unit.clip_vision, "Load CLIP Vision")
        adapter = loader("IPAdapterModelLoader", "ipadapter_file", unit.model, f"Load IP-Adapter {i}")
        image = [g.add("LoadImage", {"image": unit.input_name(unit.image)}, title=f"ControlNet {i} Image"), 0]

        def apply(m: Link, unit: ControlNetUnit = unit, adapter: Link = adapter, image: Link = image,
                  vision: Link = vision, i: int = i) -> Link:
            return [g.add("IPAdapterAdvanced", {
                "model": m, "ipadapter": adapter, "image": image, "weight": float(unit.weight),
                "weight_type": unit.weight_type, "combine_embeds": "concat",
                "start_at": float(unit.guidance_start), "end_at": float(unit.guidance_end),
                "embeds_scaling": "V only", "clip_vision": vision}, title=f"IP-Adapter {i}"), 0]

        on_lo = not hires or unit.hr_option in ("Both", "Low res only")
        on_hi = hires and unit.hr_option in ("Both", "High res only")
        if on_lo and on_hi and lo == hi:
            lo = hi = apply(lo)
        else:
            lo = apply(lo) if on_lo else lo
            hi = apply(hi) if on_hi else hi
    return lo, hi


def load_reference_image(path: Path) -> Any:
    """A reference image file as LoadImage reads it: IMAGE (1, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        frame = ImageOps.exif_transpose(im)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]


def reference_uses(engine: Any, ckpt: Any, units: list[ControlNetUnit]) -> list[Any]:
    """IPAdapterUses of resolved IP-Adapter units, made as IPAdapterAdvanced makes them (same loaders, dtype,
    encoding and projection), in unit order."""
    from ..models.family import Family
    from ..nodes.ipadapter import reference_use
    from .attention import check_fits
    from .clip_vision import load_clip_vision
    from .model import load_ipadapter

    visions: dict[str, Any] = {}
    adapters: dict[str, Any] = {}
    uses = []
    sdxl = ckpt.kind.family in (Family.SDXL, Family.SDXL_REFINER)
    for i, unit in enumerate(units):
        unit.validate()
        if unit.image is None:
            raise ControlUnitError(f"IP-Adapter unit {i} has no image", "image")
        if unit.clip_vision not in visions:
            path = engine.registry.find("clip_vision", unit.clip_vision)
            visions[unit.clip_vision] = engine.aux_model(
                "clip_vision", path, lambda p=path: load_clip_vision(p, device=engine.device, dtype=engine.dtype))
        if unit.model not in adapters:
            path = ipadapter_files(engine.registry)[unit.model]
            adapters[unit.model] = engine.aux_model("ipadapter", path, lambda p=path: load_ipadapter(
                p, device=engine.device, dtype=engine.dtype, allow_unsafe_pickle=engine.settings.allow_unsafe_pickle))
        try:
            check_fits(adapters[unit.model], ckpt.unet)
        except ValueError as ex:
            raise ControlUnitError(str(ex), "model") from None
        uses.append(reference_use(adapters[unit.model], visions[unit.clip_vision], load_reference_image(unit.image),
                                  weight=unit.weight, weight_type=unit.weight_type, combine_embeds="concat",
                                  start_at=unit.guidance_start, end_at=unit.guidance_end, embeds_scaling="V only",
                                  sdxl=sdxl))
    return uses


def _marked_uses(conditioning: Any, into: list) -> None:
    from ..engine.denoiser import CondSchedule

    lists = [items for _, items in conditioning.entries] if isinstance(conditioning, CondSchedule) else [conditioning]
    for items in lists:
        for item in items:
            for mark in item.extra.get("ipadapter", ()):
                if all(mark[0] is not u for u in into):
                    into.append(mark[0])


def reference_processors(unet: Any, *conditionings: Any) -> AbstractContextManager:
    """IP attention processors on the UNet while these conditionings (lists or A1111 schedules; None skipped) are
    sampled — nothing when none carries an IP-Adapter use."""
    from .attention import installed

    uses: list = []
    for c in conditionings:
        if c is not None:
            _marked_uses(c, uses)
    return installed(unet, uses)


__all__ = ["AdapterInfo", "ENCODER_FILES", "LABELS", "MODULES", "UNSUPPORTED", "VIT_BIGG", "VIT_H",
           "adapter_info", "add_ipadapter_nodes", "canonical_module", "find_clip_vision", "find_ipadapter_file",
           "ipadapter_files", "ipadapter_title", "ipadapter_titles", "is_ipadapter_module", "load_reference_image",
           "reference_processors", "reference_uses", "resolve_ipadapter_unit"]
