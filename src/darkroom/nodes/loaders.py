"""Loader nodes: checkpoints, separate VAEs, LoRAs and CLIP's last layer (ComfyUI `nodes.py` names and inputs)."""

from __future__ import annotations

from typing import Any

from ..graph import Input, Node, NodeContext, Output, Types
from .refs import ClipRef, ModelRef, VaeRef, check_type
from .services import FileChoices, service

STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)


def load_lora(ctx: NodeContext, name: str) -> Any:
    """Read a LoRA file from the engine's `loras` folders (parsed patches, not yet merged anywhere)."""
    from ..models.lora import load_lora_file

    engine = service(ctx, "engine")
    return load_lora_file(engine.registry.find("loras", name))


class CheckpointLoaderSimple(Node):
    """Load a checkpoint: MODEL (UNet), CLIP (text encoders) and VAE."""

    display_name = "Load Checkpoint"
    category = "loaders"
    description = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."
    inputs = {
        "ckpt_name": Input(Types.COMBO, choices=FileChoices("checkpoints"),
                           tooltip="The name of the checkpoint (model) to load."),
    }
    outputs = [
        Output(Types.MODEL, tooltip="The model used for denoising latents."),
        Output(Types.CLIP, tooltip="The CLIP model used for encoding text prompts."),
        Output(Types.VAE, tooltip="The VAE model used for encoding and decoding images to and from latent space."),
    ]

    def execute(self, ctx: NodeContext, ckpt_name: str) -> tuple[Any, ...]:
        engine = service(ctx, "engine")
        ckpt = engine.load(ckpt_name)
        patcher = engine.patcher(ckpt)
        vae = VaeRef(ckpt.vae, ckpt.vae_name or ckpt.name)
        return ModelRef(ckpt, patcher=patcher), ClipRef(ckpt, patcher=patcher), vae


class VAELoader(Node):
    """Load a separate VAE file from the `vae` folders."""

    display_name = "Load VAE"
    category = "loaders"
    inputs = {"vae_name": Input(Types.COMBO, choices=FileChoices("vae"))}
    outputs = [Output(Types.VAE)]

    def execute(self, ctx: NodeContext, vae_name: str) -> tuple[Any, ...]:
        from ..models.loader import load_vae

        engine = service(ctx, "engine")
        path = engine.registry.find("vae", vae_name)
        vae = load_vae(path, dtype=engine.dtype, device=engine.device,
                       allow_unsafe_pickle=engine.settings.allow_unsafe_pickle)
        return (VaeRef(vae, vae_name),)


class LoraLoader(Node):
    """Add a LoRA to a MODEL (UNet strength) and a CLIP (text-encoder strength); returns new refs."""

    display_name = "Load LoRA"
    category = "loaders"
    description = ("LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                   "denoised such as applying styles. Multiple LoRA nodes can be linked together.")
    inputs = {
        "model": Input(Types.MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        "clip": Input(Types.CLIP, tooltip="The CLIP model the LoRA will be applied to."),
        "lora_name": Input(Types.COMBO, choices=FileChoices("loras"), tooltip="The name of the LoRA."),
        "strength_model": Input(Types.FLOAT, **STRENGTH,
                                tooltip="How strongly to modify the diffusion model. This value can be negative."),
        "strength_clip": Input(Types.FLOAT, **STRENGTH,
                               tooltip="How strongly to modify the CLIP model. This value can be negative."),
    }
    outputs = [Output(Types.MODEL, tooltip="The modified diffusion model."),
               Output(Types.CLIP, tooltip="The modified CLIP model.")]

    def execute(self, ctx: NodeContext, model: ModelRef, clip: ClipRef, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple[Any, ...]:
        check_type(model, ModelRef, "model", self.name)
        check_type(clip, ClipRef, "clip", self.name)
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        lora = load_lora(ctx, lora_name)
        if strength_model != 0:
            model = model.with_lora(lora, strength_model)
        if strength_clip != 0:
            clip = clip.with_lora(lora, strength_clip)
        return model, clip


class LoraLoaderModelOnly(Node):
    """Add a LoRA to a MODEL only."""

    display_name = "LoraLoaderModelOnly"
    category = "loaders"
    inputs = {
        "model": Input(Types.MODEL),
        "lora_name": Input(Types.COMBO, choices=FileChoices("loras")),
        "strength_model": Input(Types.FLOAT, **STRENGTH),
    }
    outputs = [Output(Types.MODEL)]

    def execute(self, ctx: NodeContext, model: ModelRef, lora_name: str, strength_model: float) -> tuple[Any, ...]:
        check_type(model, ModelRef, "model", self.name)
        if strength_model == 0:
            return (model,)
        return (model.with_lora(load_lora(ctx, lora_name), strength_model),)


class CLIPSetLastLayer(Node):
    """Take the text encoders' output from an earlier layer (-1 = last; -2 = 'clip skip 2' for SD1)."""

    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    inputs = {
        "clip": Input(Types.CLIP),
        "stop_at_clip_layer": Input(Types.INT, default=-1, min=-24, max=-1, step=1),
    }
    outputs = [Output(Types.CLIP)]

    def execute(self, ctx: NodeContext, clip: ClipRef, stop_at_clip_layer: int) -> tuple[Any, ...]:
        check_type(clip, ClipRef, "clip", self.name)
        return (clip.with_last_layer(stop_at_clip_layer),)


NODES: tuple[type[Node], ...] = (CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPSetLastLayer)
