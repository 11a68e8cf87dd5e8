"""A tiny models folder with ControlNets in the real layouts, and an Engine over it, built once per process (shared
by the node, engine and server tests of the control area; not a conftest.py, so that `pytest tests/server
tests/control` keeps working for test modules that import names from their own conftest)."""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
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
    from darkroom.engine import Engine
    from darkroom.settings import Settings
    from darkroom.testing.tiny import shared_tiny_checkpoint, shared_tiny_components

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="darkroom-control-"))
    atexit.register(shutil.rmtree, root, True)
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
