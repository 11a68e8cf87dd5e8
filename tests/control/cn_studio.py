"""A tiny models folder with ControlNets in the real layouts, and an Engine over it, built once per process (shared
by the node, engine and server tests of the control area; not a conftest.py, so that `pytest tests/server
tests/control` keeps working for test modules that import names from their own conftest)."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from cn_tiny import (square_picture, tiny_controlnet, tiny_t2i_adapter, write_controlnet,  # noqa: E402
                     write_t2i_adapter)

#: Control files in the models folder: name → layout.
CONTROL_FILES = {
    "control_sd15_tiny.safetensors": "ldm",
    "diff_control_sd15_tiny.safetensors": "diff",
    "t2iadapter_tiny_sd15.safetensors": "t2i",
}


@dataclass
class ControlStudio:
    root: Path
    engine: Any
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    controlnet: torch.nn.Module  # the diffusers module written in every ControlNet layout


@functools.lru_cache(maxsize=None)
def shared_control_studio() -> ControlStudio:
    """The studio, made once per process in a temporary folder removed at exit."""
    from darkroom.testing.studio import make_tiny_studio
    from darkroom.testing.tiny import shared_tiny_components

    base = make_tiny_studio("darkroom-control-")
    unet = shared_tiny_components("sd15")["unet"]
    cn = tiny_controlnet(unet, seed=11)
    folder = base.root / "controlnet"
    for name, layout in CONTROL_FILES.items():
        if layout == "t2i":
            write_t2i_adapter(folder / name, tiny_t2i_adapter((32, 64, 64, 64), seed=12), "original")
        else:
            write_controlnet(folder / name, cn, layout, base_unet=unet)
    write_controlnet(folder / "control_sd15_tiny_diffusers", cn, "diffusers")
    square_picture().save(base.input_dir / "square.png")
    return ControlStudio(base.root, base.engine, base.input_dir, base.output_dir, base.temp_dir, cn)
