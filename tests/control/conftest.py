"""A tiny models folder with ControlNets in the real layouts, and an Engine over it (shared by node, engine and
server tests of the control area)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cn_tiny import tiny_controlnet, tiny_t2i_adapter, write_controlnet, write_t2i_adapter  # noqa: E402

#: Control files in the models folder: name → layout.
CONTROL_FILES = {
    "control_sd15_tiny.safetensors": "ldm",
    "diff_control_sd15_tiny.safetensors": "diff",
    "t2iadapter_tiny_sd15.safetensors": "t2i",
}


def square_picture(size: int = 64, lo: int = 16, hi: int = 48) -> Image.Image:
    """A white square on black (what a canny map of a shape looks like)."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[lo:hi, lo:hi] = 255
    return Image.fromarray(arr)


@dataclass
class ControlStudio:
    root: Path
    engine: Any
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    controlnet: torch.nn.Module  # the diffusers module written in every ControlNet layout


@pytest.fixture(scope="session")
def control_studio(tmp_path_factory) -> ControlStudio:
    from darkroom.engine import Engine
    from darkroom.settings import Settings
    from darkroom.testing.tiny import shared_tiny_checkpoint, shared_tiny_components

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("control-models")
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny-sd15.safetensors")
    unet = shared_tiny_components("sd15")["unet"]
    cn = tiny_controlnet(unet, seed=11)
    folder = root / "controlnet"
    for name, layout in CONTROL_FILES.items():
        if layout == "t2i":
            write_t2i_adapter(folder / name, tiny_t2i_adapter((32, 64, 64, 64), seed=12), "original")
        else:
            write_controlnet(folder / name, cn, layout, base_unet=unet)
    write_controlnet(folder / "control_sd15_tiny_diffusers", cn, "diffusers")
    inp, out, tmp = root / "input", root / "output", root / "temp"
    for d in (inp, out, tmp):
        d.mkdir()
    square_picture().save(inp / "square.png")
    engine = Engine(Settings(models_dir=root, output_dir=out, data_dir=root / "data"), device="cpu", dtype="fp32")
    return ControlStudio(root, engine, inp, out, tmp, cn)
