"""Image upscalers (ESRGAN/RRDBNet, Real-ESRGAN, Real-ESRGAN Compact; anything spandrel loads when it imports).

    model = load_upscale_model("models/upscale_models/4x-UltraSharp.safetensors", device="cuda", dtype=torch.float16)
    big = upscale_image(model, images, tile=512, overlap=32)  # IMAGE (B, H, W, 3) → (B, 4H, 4W, 3)

`loader` reads and detects files, `arch` holds darkroom's own architectures, `tiled` runs a model tile by tile.
"""

from __future__ import annotations

from .arch import RRDBNet, SRVGGNetCompact
from .loader import (
    UpscaleModel,
    UpscaleModelError,
    detect_architecture,
    find_upscaler,
    load_upscale_model,
    load_upscaler_by_name,
    model_from_state_dict,
    normalise_state_dict,
    read_state_dict,
    rrdb_to_new_layout,
)
from .tiled import DEFAULT_OVERLAP, DEFAULT_TILE, tile_count, tile_spans, upscale_image, upscale_tensor

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "RRDBNet",
    "SRVGGNetCompact",
    "UpscaleModel",
    "UpscaleModelError",
    "detect_architecture",
    "find_upscaler",
    "load_upscale_model",
    "load_upscaler_by_name",
    "model_from_state_dict",
    "normalise_state_dict",
    "read_state_dict",
    "rrdb_to_new_layout",
    "tile_count",
    "tile_spans",
    "upscale_image",
    "upscale_tensor",
]
