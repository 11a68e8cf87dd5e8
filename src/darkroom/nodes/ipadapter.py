"""IP-Adapter nodes with the widely used names and sockets: ComfyUI's `CLIPVisionLoader` / `CLIPVisionEncode` and the
IPAdapter custom node's `IPAdapterModelLoader` / `IPAdapterAdvanced`.

IPAdapterAdvanced returns a new MODEL ref carrying one more `IPAdapterUse`; the samplers install the IP attention
processors for their run only (see `darkroom.ipadapter.attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..graph import Input, Node, NodeContext, Output, Types
from .refs import ModelRef, check_type
from .services import FileChoices, service

IPADAPTER = "IPADAPTER"


def _stem(name: str) -> str:
    return str(name).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


class CLIPVisionLoader(Node):
    """Load a CLIP vision encoder from the `clip_vision` folders."""

    display_name = "Load CLIP Vision"
    category = "loaders"
    inputs = {"clip_name": Input(Types.COMBO, choices=FileChoices("clip_vision"))}
    outputs = [Output(Types.CLIP_VISION)]

    def execute(self, ctx: NodeContext, clip_name: str) -> tuple[Any, ...]:
        from ..ipadapter.clip_vision import load_clip_vision

        engine = service(ctx, "engine")
        path = engine.registry.find("clip_vision", clip_name)
        vision = load_clip_vision(path, device=engine.device, dtype=engine.dtype)
        vision.name = _stem(clip_name)
        return (vision,)


class CLIPVisionEncode(Node):
    """Encode images with a CLIP vision model (centre crop or the whole image squeezed)."""

    display_name = "CLIP Vision Encode"
    category = "conditioning"
    inputs = {
        "clip_vision": Input(Types.CLIP_VISION),
        "image": Input(Types.IMAGE),
        "crop": Input(Types.COMBO, choices=("center", "none")),
    }
    outputs = [Output(Types.CLIP_VISION_OUTPUT)]

    def execute(self, ctx: NodeContext, clip_vision: Any, image: torch.Tensor, crop: str) -> tuple[Any, ...]:
        from ..ipadapter.clip_vision import ClipVision

        check_type(clip_vision, ClipVision, "clip_vision", self.name)
        return (clip_vision.encode(image, crop),)


@dataclass(frozen=True)
class IPAdapterFileChoices(FileChoices):
    """The `ipadapter` folders' files, then the IP-Adapter files in `controlnet` folders (where A1111 keeps them)."""

    def __call__(self) -> list[str]:
        from ..ipadapter.units import ipadapter_files

        return [] if self.models is None else list(ipadapter_files(self.models))

    def bound(self, models: Any, input_dir: Path | None) -> IPAdapterFileChoices:
        return IPAdapterFileChoices(self.kind, models, input_dir)


class IPAdapterModelLoader(Node):
    """Load an IP-Adapter (plain, plus, plus-face, full-face) from the `ipadapter` folders (or, for A1111 installs,
    an IP-Adapter file in the `controlnet` folders); pickled `.bin`/`.pth` files only with allow_unsafe_pickle."""

    display_name = "IPAdapter Model Loader"
    category = "ipadapter/loaders"
    python_module = "darkroom_nodes.ipadapter"
    inputs = {"ipadapter_file": Input(Types.COMBO, choices=IPAdapterFileChoices("ipadapter"))}
    outputs = [Output(IPADAPTER)]

    def execute(self, ctx: NodeContext, ipadapter_file: str) -> tuple[Any, ...]:
        from ..ipadapter.model import load_ipadapter
        from ..ipadapter.units import ipadapter_files

        engine = service(ctx, "engine")
        path = ipadapter_files(engine.registry).get(ipadapter_file) or engine.registry.find("ipadapter",
                                                                                            ipadapter_file)
        model = load_ipadapter(path, device=engine.device, dtype=engine.dtype,
                               allow_unsafe_pickle=engine.settings.allow_unsafe_pickle)
        model.name = _stem(ipadapter_file)
        return (model,)


def _weight_types() -> tuple[str, ...]:
    from ..ipadapter.attention import WEIGHT_TYPES

    return WEIGHT_TYPES


def _combine() -> tuple[str, ...]:
    from ..ipadapter.attention import COMBINE_EMBEDS

    return COMBINE_EMBEDS


def _scaling() -> tuple[str, ...]:
    from ..ipadapter.attention import EMBEDS_SCALING

    return EMBEDS_SCALING


class IPAdapterAdvanced(Node):
    """Guide a MODEL with reference images through an IP-Adapter: weight, weight type (style / composition),
    how several images combine, start/end of the run and the embeds scaling."""

    display_name = "IPAdapter Advanced"
    category = "ipadapter"
    python_module = "darkroom_nodes.ipadapter"
    inputs = {
        "model": Input(Types.MODEL),
        "ipadapter": Input(IPADAPTER),
        "image": Input(Types.IMAGE),
        "weight": Input(Types.FLOAT, default=1.0, min=-1.0, max=5.0, step=0.05),
        "weight_type": Input(Types.COMBO, choices=_weight_types),
        "combine_embeds": Input(Types.COMBO, choices=_combine),
        "start_at": Input(Types.FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        "end_at": Input(Types.FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
        "embeds_scaling": Input(Types.COMBO, choices=_scaling),
        "image_negative": Input(Types.IMAGE, optional=True),
        "attn_mask": Input(Types.MASK, optional=True),
        "clip_vision": Input(Types.CLIP_VISION, optional=True),
    }
    outputs = [Output(Types.MODEL)]

    def execute(self, ctx: NodeContext, model: ModelRef, ipadapter: Any, image: torch.Tensor, weight: float,
                weight_type: str, combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
                image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                clip_vision: Any = None) -> tuple[Any, ...]:
        from ..ipadapter.attention import check_fits
        from ..ipadapter.clip_vision import ClipVision
        from ..ipadapter.model import IPAdapterModel
        from ..models.family import Family

        check_type(model, ModelRef, "model", self.name)
        check_type(ipadapter, IPAdapterModel, "ipadapter", self.name)
        if clip_vision is None:
            raise ValueError(f"{self.name}: connect a CLIP_VISION (CLIPVisionLoader) to 'clip_vision'; the image is "
                             f"encoded with it")
        check_type(clip_vision, ClipVision, "clip_vision", self.name)
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise TypeError(f"{self.name}: input 'image' must be an IMAGE (B, H, W, C)")
        check_fits(ipadapter, model.checkpoint.unet)
        use = reference_use(ipadapter, clip_vision, image, weight=weight, weight_type=weight_type,
                            combine_embeds=combine_embeds, start_at=start_at, end_at=end_at,
                            embeds_scaling=embeds_scaling, image_negative=image_negative, mask=attn_mask,
                            sdxl=model.checkpoint.kind.family in (Family.SDXL, Family.SDXL_REFINER))
        return (replace(model, ipadapters=(*model.ipadapters, use)),)


def reference_use(ipadapter: Any, clip_vision: Any, image: torch.Tensor, *,
                  image_negative: torch.Tensor | None = None, **kw: Any) -> Any:
    """An IPAdapterUse for reference images: encoded (centre crop) with the adapter's embedding; the uncond from
    `image_negative` when given, else a black image (hidden-state models) or zeros (plain models), as the IPAdapter
    node."""
    from ..ipadapter.attention import make_use

    field = "penultimate_hidden_states" if ipadapter.uses_hidden_states else "image_embeds"
    cond = getattr(clip_vision.encode(image, "center"), field)
    if image_negative is not None:
        uncond = getattr(clip_vision.encode(image_negative[:1], "center"), field)
    elif ipadapter.uses_hidden_states:
        size = clip_vision.image_size
        uncond = clip_vision.encode(torch.zeros((1, size, size, 3)), "center").penultimate_hidden_states
    else:
        uncond = torch.zeros_like(cond[:1])
    return make_use(ipadapter, cond, uncond, **kw)


NODES: tuple[type[Node], ...] = (CLIPVisionLoader, CLIPVisionEncode, IPAdapterModelLoader, IPAdapterAdvanced)
