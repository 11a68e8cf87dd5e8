"""ControlNet nodes with ComfyUI's names and sockets (`nodes.py`, `comfy_extras/nodes_canny.py`), plus darkroom's
preprocessor, A1111-mode apply and OpenPose nodes.

CONTROL_NET carries a `darkroom.control.ControlModel` (a ControlNet or a T2I-Adapter). Applying one adds a unit to
each conditioning item's `extra["control"]`; the sampler's denoiser evaluates it on every UNet call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..graph import Input, Node, NodeContext, Output, Types
from .refs import ModelRef, VaeRef, check_type, use_model
from .services import FileChoices, service

STRENGTH = dict(default=1.0, min=0.0, max=10.0, step=0.01)
PERCENT = dict(min=0.0, max=1.0, step=0.001)
MAX_RESOLUTION = 16384


def load_control(ctx: NodeContext, name: str, *, base_unet: Any = None, t2i_only: bool = False) -> Any:
    """Load a ControlNet / T2I-Adapter from the engine's `controlnet` folders (on its device and dtype)."""
    from ..control.loader import load_control_model
    from ..models.registry import ModelRegistry

    engine = service(ctx, "engine")
    path = engine.registry.find("controlnet", name)
    model = load_control_model(path, dtype=engine.dtype, device=engine.device, base_unet=base_unet,
                               name=ModelRegistry._stem(str(name).rsplit("/", 1)[-1]),
                               allow_unsafe_pickle=engine.settings.allow_unsafe_pickle)
    if t2i_only and model.kind != "t2i_adapter":
        raise ValueError(f"{ctx.class_type}: {name} is a {model.label}, not a T2I-Adapter; load it with "
                         f"ControlNetLoader")
    return model


def _check_control(value: Any, node: str) -> Any:
    from ..control.model import ControlModel

    return check_type(value, ControlModel, "control_net", node)


def _check_image(image: Any, node: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise TypeError(f"{node}: input 'image' must be an IMAGE (B, H, W, C)")
    return image


class ControlNetLoader(Node):
    """Load a ControlNet (any layout) or a T2I-Adapter from the `controlnet` folders."""

    display_name = "Load ControlNet Model"
    category = "loaders"
    inputs = {"control_net_name": Input(Types.COMBO, choices=FileChoices("controlnet"))}
    outputs = [Output(Types.CONTROL_NET)]

    def execute(self, ctx: NodeContext, control_net_name: str) -> tuple[Any, ...]:
        return (load_control(ctx, control_net_name),)


class DiffControlNetLoader(Node):
    """Load a ControlNet stored as differences to a model (the MODEL's weights, with its LoRAs, are added back);
    ordinary ControlNets load as with ControlNetLoader."""

    display_name = "Load ControlNet Model (diff)"
    category = "loaders"
    inputs = {"model": Input(Types.MODEL),
              "control_net_name": Input(Types.COMBO, choices=FileChoices("controlnet"))}
    outputs = [Output(Types.CONTROL_NET)]

    def execute(self, ctx: NodeContext, model: ModelRef, control_net_name: str) -> tuple[Any, ...]:
        check_type(model, ModelRef, "model", self.name)
        ckpt = use_model(service(ctx, "engine"), model)  # the base weights exactly as this MODEL samples with them
        return (load_control(ctx, control_net_name, base_unet=ckpt.unet),)


class T2IAdapterLoader(Node):
    """Load a T2I-Adapter (TencentARC or diffusers layout) from the `controlnet` folders."""

    display_name = "Load T2I-Adapter Model"
    category = "loaders"
    python_module = "darkroom_nodes.controlnet"
    inputs = {"t2i_adapter_name": Input(Types.COMBO, choices=FileChoices("controlnet"))}
    outputs = [Output(Types.CONTROL_NET)]

    def execute(self, ctx: NodeContext, t2i_adapter_name: str) -> tuple[Any, ...]:
        return (load_control(ctx, t2i_adapter_name, t2i_only=True),)


class ControlNetApplyAdvanced(Node):
    """Apply a ControlNet to both conditionings with a strength and a start/end fraction of the run."""

    display_name = "Apply ControlNet"
    category = "conditioning/controlnet"
    inputs = {
        "positive": Input(Types.CONDITIONING),
        "negative": Input(Types.CONDITIONING),
        "control_net": Input(Types.CONTROL_NET),
        "image": Input(Types.IMAGE),
        "strength": Input(Types.FLOAT, **STRENGTH),
        "start_percent": Input(Types.FLOAT, default=0.0, **PERCENT),
        "end_percent": Input(Types.FLOAT, default=1.0, **PERCENT),
        "vae": Input(Types.VAE, optional=True),
    }
    outputs = [Output(Types.CONDITIONING, "positive"), Output(Types.CONDITIONING, "negative")]

    def execute(self, ctx: NodeContext, positive: list, negative: list, control_net: Any, image: torch.Tensor,
                strength: float, start_percent: float, end_percent: float, vae: VaeRef | None = None,
                control_mode: str = "balanced") -> tuple[Any, ...]:
        from ..control.apply import apply_control

        _check_control(control_net, self.name)
        _check_image(image, self.name)
        return apply_control(positive, negative, control_net, image, strength=strength, start_percent=start_percent,
                             end_percent=end_percent, mode=control_mode)


class ControlNetApplyA1111(ControlNetApplyAdvanced):
    """Apply ControlNet with A1111's control modes: "My prompt is more important" (soft injection) or "ControlNet
    is more important" (the negative prompt runs without it). Workflows made from A1111 requests use it."""

    display_name = "Apply ControlNet (A1111 control mode)"
    python_module = "darkroom_nodes.controlnet"
    inputs = {
        **{k: v for k, v in ControlNetApplyAdvanced.inputs.items() if k != "vae"},
        "control_mode": Input(Types.COMBO, choices=("Balanced", "My prompt is more important",
                                                    "ControlNet is more important")),
    }


class ControlNetApply(Node):
    """Apply a ControlNet to one conditioning (the old node: no negative, no timing)."""

    display_name = "Apply ControlNet (OLD)"
    category = "conditioning/controlnet"
    deprecated = True
    inputs = {
        "conditioning": Input(Types.CONDITIONING),
        "control_net": Input(Types.CONTROL_NET),
        "image": Input(Types.IMAGE),
        "strength": Input(Types.FLOAT, **STRENGTH),
    }
    outputs = [Output(Types.CONDITIONING)]

    def execute(self, ctx: NodeContext, conditioning: list, control_net: Any, image: torch.Tensor,
                strength: float) -> tuple[Any, ...]:
        from ..control.apply import apply_control

        _check_control(control_net, self.name)
        _check_image(image, self.name)
        return (apply_control(conditioning, None, control_net, image, strength=strength)[0],)


class Canny(Node):
    """Canny edges of each image, white on black: kornia's `canny` (5×5 Gaussian σ 1, normalised Sobel, hysteresis) on
    the 0..1 image, thresholds on its gradient magnitude — the function ComfyUI's node calls, so the same pixels."""

    category = "image/preprocessors"
    inputs = {
        "image": Input(Types.IMAGE),
        "low_threshold": Input(Types.FLOAT, default=0.4, min=0.01, max=0.99, step=0.01),
        "high_threshold": Input(Types.FLOAT, default=0.8, min=0.01, max=0.99, step=0.01),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, low_threshold: float,
                high_threshold: float) -> tuple[Any, ...]:
        from kornia.filters import canny

        _check_image(image, self.name)
        if low_threshold > high_threshold:
            raise ValueError(f"{self.name}: low_threshold ({low_threshold}) must not be above high_threshold "
                             f"({high_threshold})")
        edges = canny(image[..., :3].movedim(-1, 1).float(), low_threshold, high_threshold)[1]  # (B, 1, H, W)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1).contiguous(),)


class ControlNetPreprocessor(Node):
    """Make a control image with an A1111 ControlNet preprocessor (canny, scribble_xdog, lineart_standard, shuffle,
    inpaint, …) at a processor resolution, optionally fitted to width × height with A1111's resize mode."""

    display_name = "ControlNet Preprocessor"
    category = "image/preprocessors"
    python_module = "darkroom_nodes.controlnet"
    inputs = {
        "image": Input(Types.IMAGE),
        "preprocessor": Input(Types.COMBO, choices=lambda: _preprocessor_names()),
        "resolution": Input(Types.INT, default=512, min=-1, max=MAX_RESOLUTION, step=1,
                            tooltip="Short side the preprocessor works at (-1: its default)."),
        "threshold_a": Input(Types.FLOAT, default=-1.0, min=-1.0, max=100000.0, step=0.01,
                             tooltip="First preprocessor setting (-1: its default), e.g. canny's low threshold."),
        "threshold_b": Input(Types.FLOAT, default=-1.0, min=-1.0, max=100000.0, step=0.01,
                             tooltip="Second preprocessor setting (-1: its default)."),
        "mask": Input(Types.MASK, optional=True, tooltip="For the inpaint preprocessors: 1 = repaint."),
        "width": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8, optional=True,
                       tooltip="Fit the map to this size (0: keep the map's own size)."),
        "height": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8, optional=True),
        "resize_mode": Input(Types.COMBO, choices=("Crop and Resize", "Just Resize", "Resize and Fill"),
                             optional=True),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, image: torch.Tensor, preprocessor: str, resolution: int, threshold_a: float,
                threshold_b: float, mask: torch.Tensor | None = None, width: int = 0, height: int = 0,
                resize_mode: str = "Crop and Resize") -> tuple[Any, ...]:
        from ..control.preprocess import prepare_hint

        _check_image(image, self.name)
        dirs, home = annotator_folders(ctx)
        return (prepare_hint(image, preprocessor, resolution=resolution, threshold_a=threshold_a,
                             threshold_b=threshold_b, masks=mask, width=width, height=height, mode=resize_mode,
                             annotator_dirs=dirs, annotator_home=home, device=service(ctx, "engine").device),)


class OpenPoseRender(Node):
    """Draw an OpenPose JSON pose (as pose editors and A1111's ControlNet export it) as the coloured stick figure."""

    display_name = "Render OpenPose JSON"
    category = "image/preprocessors"
    python_module = "darkroom_nodes.controlnet"
    inputs = {
        "pose_json": Input(Types.STRING, multiline=True, dynamic_prompts=False),
        "width": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8,
                       tooltip="Output width (0: the pose's canvas width)."),
        "height": Input(Types.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        "hands": Input(Types.BOOLEAN, default=True),
        "face": Input(Types.BOOLEAN, default=True),
    }
    outputs = [Output(Types.IMAGE)]

    def execute(self, ctx: NodeContext, pose_json: str, width: int, height: int, hands: bool,
                face: bool) -> tuple[Any, ...]:
        from ..control.openpose import render_pose

        img = render_pose(pose_json, width=width or None, height=height or None, hands=hands, face=face)
        return (torch.from_numpy(img.astype(np.float32) / 255.0)[None],)


def _preprocessor_names() -> list[str]:
    from ..control.preprocess import preprocessor_names

    return preprocessor_names()


def annotator_folders(ctx: Any) -> tuple[list[Any], Any]:
    """The folders searched for annotator weights, and where a missing file should go."""
    engine = service(ctx, "engine")
    settings = engine.settings
    return list(settings.model_dirs("annotators")), settings.models_dir / "annotators"


NODES: tuple[type[Node], ...] = (
    ControlNetLoader, DiffControlNetLoader, T2IAdapterLoader, ControlNetApplyAdvanced, ControlNetApply,
    ControlNetApplyA1111, Canny, ControlNetPreprocessor, OpenPoseRender,
)
