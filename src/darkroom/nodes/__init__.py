"""darkroom.nodes: ComfyUI's core nodes over darkroom's engine, an explicit registry and a workflow runner.

    registry = default_registry(models=engine.registry, input_dir="input")
    result = run_workflow(prompt, engine=engine, input_dir="input", output_dir="output", temp_dir="temp")

Class names, input names, defaults, ranges and output types follow ComfyUI (0.3.x), so API-format workflows
exported from ComfyUI run unchanged. See `refs` for the values on MODEL/CLIP/VAE sockets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..graph import Node, NodeRegistry
from . import conditioning, controlnet, image, ipadapter, latent, loaders, mask, sampling, tiling, upscale
from . import ultimate_upscale
from .refs import ClipRef, LoraUse, ModelRef, VaeRef
from .services import FileChoices, MissingServiceError, default_executor, make_services, run_workflow

#: Every node class, in registration order (object_info lists them in this order).
NODE_CLASSES: tuple[type[Node], ...] = (
    *loaders.NODES,
    *conditioning.NODES,
    *sampling.NODES,
    *latent.NODES,
    *image.NODES,
    *mask.NODES,
    *upscale.NODES,
    *ultimate_upscale.NODES,
    *tiling.NODES,
    *controlnet.NODES,
    *ipadapter.NODES,
)


def bind(cls: type[Node], *, models: Any = None, input_dir: Path | str | None = None) -> type[Node]:
    """A subclass of `cls` whose file-listing combos read these sources (the class itself if it lists none)."""
    inputs = dict(cls.inputs)
    changed = False
    for key, inp in inputs.items():
        if isinstance(inp.choices, FileChoices):
            inputs[key] = replace(inp, choices=inp.choices.bound(models, None if input_dir is None else Path(input_dir)))
            changed = True
    if not changed:
        return cls
    attrs: dict[str, Any] = {"name": cls.name, "display_name": cls.display_name, "inputs": inputs,
                             "__module__": cls.__module__, "__doc__": cls.__doc__}
    if hasattr(cls, "input_dir"):
        attrs["input_dir"] = None if input_dir is None else Path(input_dir)
    return type(cls.__name__, (cls,), attrs)


def default_registry(*, models: Any = None, input_dir: Path | str | None = None) -> NodeRegistry:
    """A registry of every darkroom node; model combos list `models.names(kind)`, LoadImage lists `input_dir`.

    Without sources the file combos are empty (useful for object_info snapshots; such a registry rejects any
    ckpt_name/lora_name/image value at validation).
    """
    registry = NodeRegistry()
    for cls in NODE_CLASSES:
        registry.register(bind(cls, models=models, input_dir=input_dir))
    return registry


__all__ = [
    "NODE_CLASSES",
    "ClipRef",
    "FileChoices",
    "LoraUse",
    "MissingServiceError",
    "ModelRef",
    "VaeRef",
    "bind",
    "default_executor",
    "default_registry",
    "make_services",
    "run_workflow",
]
