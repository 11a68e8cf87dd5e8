"""darkroom's seamless-tiling node: MODEL and VAE refs that make textures wrap at their edges (A1111's "Tiling").

The node patches nothing: it returns refs carrying `tiling=True`, and the sampler and VAE nodes switch the padded
convolutions of exactly that UNet / VAE to circular padding for the duration of their own run
(`darkroom.engine.tiling.circular_padding`), as `Engine.generate` does for a generation with `tiling`. Workflows
made from such a generation contain this node, so they reproduce the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..graph import Input, Node, NodeContext, Output, Types
from .refs import ModelRef, VaeRef, check_type


class SeamlessTiling(Node):
    """darkroom: seamless textures — the MODEL and VAE pad their convolutions circularly (left ↔ right, top ↔
    bottom), so the image tiles without seams. Put it after the loaders (and LoRAs); `enabled` off passes the
    refs through unchanged."""

    display_name = "Seamless Tiling"
    category = "advanced/model"
    python_module = "darkroom_nodes.tiling"
    inputs = {
        "model": Input(Types.MODEL),
        "vae": Input(Types.VAE),
        "enabled": Input(Types.BOOLEAN, default=True,
                         tooltip="Circular padding in the UNet and VAE (A1111's Tiling option)."),
    }
    outputs = [Output(Types.MODEL), Output(Types.VAE)]

    def execute(self, ctx: NodeContext, model: ModelRef, vae: VaeRef, enabled: bool = True) -> tuple[Any, ...]:
        check_type(model, ModelRef, "model", self.name)
        check_type(vae, VaeRef, "vae", self.name)
        return replace(model, tiling=bool(enabled)), replace(vae, tiling=bool(enabled))


NODES: tuple[type[Node], ...] = (SeamlessTiling,)
