"""Upscale-model nodes with ComfyUI's names and sockets (`comfy_extras/nodes_upscale_model.py`).

UPSCALE_MODEL carries a `darkroom.upscale.UpscaleModel` kept on the CPU between uses; ImageUpscaleWithModel moves it
to the engine's device for the run (tile 512, overlap 32, halving the tile on GPU out-of-memory) and back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph import Input, Node, NodeContext, Output, Types
from .refs import check_type
from .services import FileChoices, service


class UpscaleModelLoader(Node):
    """Load an upscale model (ESRGAN, Real-ESRGAN, Compact; more with spandrel) from `upscale_models`."""

    display_name = "Load Upscale Model"
    category = "loaders"
    inputs = {"model_name": Input(Types.COMBO, choices=FileChoices("upscale_models"))}
    outputs = [Output(Types.UPSCALE_MODEL)]

    def execute(self, ctx: NodeContext, model_name: str) -> tuple[Any, ...]:
        from ..upscale import load_upscaler_by_name

        engine = service(ctx, "engine")
        return (load_upscaler_by_name(engine.registry, model_name,
                                      allow_unsafe_pickle=engine.settings.allow_unsafe_pickle),)


class ImageUpscaleWithModel(Node):
    """Upscale images with a model, tile by tile (512 px tiles, 32 px feathered overlap)."""

    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    inputs = {"upscale_model": Input(Types.UPSCALE_MODEL), "image": Input(Types.IMAGE)}
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, upscale_model: Any, image: torch.Tensor) -> tuple[Any, ...]:
        from ..upscale import DEFAULT_OVERLAP, DEFAULT_TILE, UpscaleModel, tile_count, upscale_image

        check_type(upscale_model, UpscaleModel, "upscale_model", self.name)
        engine = service(ctx, "engine")
        m = upscale_model.size_multiple
        total = image.shape[0] * tile_count(image.shape[1], image.shape[2], DEFAULT_TILE,
                                            min(DEFAULT_OVERLAP * m, DEFAULT_TILE // 2), m)
        done = [0]

        def on_tile() -> None:
            done[0] += 1
            ctx.progress(min(done[0], total), total)

        home = upscale_model.device
        upscale_model.to(engine.device)
        try:
            out = upscale_image(upscale_model, image[..., : upscale_model.input_channels], on_tile=on_tile)
        finally:
            upscale_model.to(home)
        return (out,)


NODES: tuple[type[Node], ...] = (UpscaleModelLoader, ImageUpscaleWithModel)
