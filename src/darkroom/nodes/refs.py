"""The values that flow between nodes on MODEL, CLIP and VAE sockets: a loaded checkpoint plus patches as data.

ComfyUI clones a model and attaches LoRA patches to the clone; here a `ModelRef`/`ClipRef` is an immutable value
naming the checkpoint and the LoRAs (with strengths) that apply to it. Nothing is patched when a LoRA node runs;
the engine's one LoRA patcher per checkpoint makes the weights equal to "checkpoint + exactly these LoRAs" right
before a text encoder or the UNet is used (`use_clip` / `use_model`), so two branches of one workflow with
different LoRAs on the same checkpoint never see each other's patches. Seamless tiling is data too: a MODEL/VAE
ref with `tiling` makes the sampler / VAE nodes pad circularly for the duration of their run only
(`model_padding` / `VaeRef.padding`).

Other node values: LATENT is a dict `{"samples": (B, 4, H/8, W/8) raw VAE latent, "noise_mask"?: (B|1, 1, H, W),
"batch_index"?: list[int]}`; IMAGE is (B, H, W, 3) float32 in [0, 1]; MASK is (B, H, W) float32 (1 = change);
CONDITIONING is `list[darkroom.engine.denoiser.CondItem]`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from ..models.bundle import Checkpoint
from ..models.family import Family


@dataclass(frozen=True, eq=False)
class LoraUse:
    """One LoRA applied to one side (UNet or text encoders) with its strength."""

    lora: Any  # darkroom.models.lora.LoraFile
    strength: float


@dataclass(frozen=True, eq=False)
class ModelRef:
    """MODEL: a checkpoint's UNet plus the LoRAs (UNet strengths) to merge before sampling."""

    checkpoint: Checkpoint
    loras: tuple[LoraUse, ...] = ()
    patcher: Any = None  # the checkpoint's LoraPatcher, captured when it was loaded (see `use_model`)
    tiling: bool = False  # seamless tiling: the UNet pads circularly while a sampler uses this ref
    ipadapters: tuple[Any, ...] = ()  # darkroom.ipadapter.attention.IPAdapterUse, applied while sampling

    def __repr__(self) -> str:
        return f"ModelRef({self.checkpoint.name!r}, loras={_lora_names(self.loras)}, tiling={self.tiling})"

    def with_lora(self, lora: Any, strength: float) -> ModelRef:
        """A new ref with one more LoRA (this one is unchanged)."""
        return replace(self, loras=(*self.loras, LoraUse(lora, float(strength))))

    def patch_set(self) -> list[tuple[Any, float, float]]:
        """(lora, te, unet) entries for `LoraPatcher.apply`: UNet strengths only."""
        return [(u.lora, 0.0, u.strength) for u in self.loras]


@dataclass(frozen=True, eq=False)
class ClipRef:
    """CLIP: a checkpoint's text encoders, the LoRAs (text-encoder strengths) and ComfyUI's last-layer setting."""

    checkpoint: Checkpoint
    loras: tuple[LoraUse, ...] = ()
    stop_at_clip_layer: int | None = None  # None: the family's standard layer (no CLIPSetLastLayer)
    patcher: Any = None  # the checkpoint's LoraPatcher, captured when it was loaded

    def __repr__(self) -> str:
        return (f"ClipRef({self.checkpoint.name!r}, loras={_lora_names(self.loras)}, "
                f"stop_at_clip_layer={self.stop_at_clip_layer})")

    def with_lora(self, lora: Any, strength: float) -> ClipRef:
        """A new ref with one more LoRA."""
        return replace(self, loras=(*self.loras, LoraUse(lora, float(strength))))

    def with_last_layer(self, layer: int) -> ClipRef:
        """A new ref that stops at `layer` (-1 = last, -2 = penultimate …)."""
        return replace(self, stop_at_clip_layer=int(layer))

    @property
    def family(self) -> Family:
        return Family(self.checkpoint.kind.family)

    def clip_skip(self) -> int:
        """The conditioning layer's clip-skip number for `encode_prompt` (1 = the family's standard layer)."""
        if self.stop_at_clip_layer is None:
            return 1
        from ..conditioning.encode import clip_skip_from_comfy

        return clip_skip_from_comfy(self.stop_at_clip_layer, self.family)

    def patch_set(self) -> list[tuple[Any, float, float]]:
        """(lora, te, unet) entries for `LoraPatcher.apply`: text-encoder strengths only."""
        return [(u.lora, u.strength, 0.0) for u in self.loras]


@dataclass(frozen=True, eq=False)
class VaeRef:
    """VAE: an AutoencoderKL (the checkpoint's own or a separate file)."""

    vae: Any  # diffusers.AutoencoderKL
    name: str = ""
    tiling: bool = False  # seamless tiling: the VAE pads circularly while a VAE node uses this ref

    def __repr__(self) -> str:
        return f"VaeRef({self.name!r}, tiling={self.tiling})"

    def padding(self) -> AbstractContextManager[int]:
        """The VAE's convolutions as this ref wants them for one node's run (circular when tiling)."""
        from ..engine.tiling import circular_padding

        return circular_padding(self.vae, enabled=self.tiling)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel (8 for every SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)


def _lora_names(loras: tuple[LoraUse, ...]) -> list[str]:
    return [f"{getattr(u.lora, 'name', '?')}:{u.strength:g}" for u in loras]


def _patcher(engine: Any, ref: ModelRef | ClipRef) -> Any:
    # The patcher captured with the checkpoint stays paired with that object even if the engine later drops the
    # checkpoint from its own cache (a new patcher for still-patched weights would take them as the originals).
    return ref.patcher if ref.patcher is not None else engine.patcher(ref.checkpoint)


def use_model(engine: Any, model: ModelRef) -> Checkpoint:
    """Merge exactly the MODEL's LoRAs into its checkpoint (UNet side) and return the checkpoint to sample with."""
    _patcher(engine, model).apply(model.patch_set())
    return model.checkpoint


def model_padding(model: ModelRef) -> AbstractContextManager[int]:
    """The UNet's convolutions as the MODEL wants them while sampling (circular with seamless tiling)."""
    from ..engine.tiling import circular_padding

    return circular_padding(model.checkpoint.unet, enabled=model.tiling)


def use_clip(engine: Any, clip: ClipRef) -> Checkpoint:
    """Merge exactly the CLIP's LoRAs into its checkpoint (text-encoder side) and return the checkpoint."""
    _patcher(engine, clip).apply(clip.patch_set())
    return clip.checkpoint


def check_type(value: Any, expected: type, socket: str, node: str) -> Any:
    """Raise a clear TypeError when a socket carries something other than what the node needs."""
    if not isinstance(value, expected):
        raise TypeError(f"{node}: input {socket!r} must be a {expected.__name__}, got {type(value).__name__}")
    return value
