"""A throwaway studio for tests: a temporary models folder holding the tiny SD1.5 checkpoint, input/output/temp
folders and a CPU float32 Engine over it (what the control and ipadapter tests build on), and the server tests'
live uvicorn server for test folders that need one."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The checkpoint's name in the studio's models/checkpoints folder.
CHECKPOINT = "tiny-sd15.safetensors"


@dataclass
class TinyStudio:
    """A models root and the folders a workflow run reads and writes."""

    root: Path  # models folder: checkpoints/tiny-sd15.safetensors; add controlnet/, ipadapter/, … as needed
    engine: Any  # darkroom.engine.Engine over `root`, cpu / fp32
    input_dir: Path
    output_dir: Path
    temp_dir: Path


def make_tiny_studio(prefix: str = "darkroom-studio-", *, threads: int = 2) -> TinyStudio:
    """A new studio in a temporary folder (removed at exit); the checkpoint is the shared tiny SD1.5 one."""
    import torch

    from darkroom.engine import Engine
    from darkroom.settings import Settings
    from darkroom.testing.tiny import shared_tiny_checkpoint

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / CHECKPOINT)
    inp, out, tmp = root / "input", root / "output", root / "temp"
    for d in (inp, out, tmp):
        d.mkdir()
    engine = Engine(Settings(models_dir=root, output_dir=out, data_dir=root / "data"), device="cpu", dtype="fp32")
    return TinyStudio(root, engine, inp, out, tmp)


def live_server_class() -> type:
    """tests/server's LiveServer (uvicorn serving an app in a thread), loaded by path from the source checkout:
    every test folder has its own conftest module, so it cannot be imported by name."""
    path = Path(__file__).resolve().parents[3] / "tests" / "server" / "conftest.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: live servers need darkroom's source checkout")
    spec = importlib.util.spec_from_file_location("darkroom_server_test_conftest", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return module.LiveServer


def start_live_server(engine: Any, data_dir: Path) -> Any:
    """A started LiveServer (`.stop()` it) serving darkroom over `engine`, its data under `data_dir`."""
    from darkroom.server.app import create_app
    from darkroom.server.config import ServerConfig

    cfg = ServerConfig(data_dir=data_dir, port=0)
    return live_server_class()(create_app(engine.settings, cfg, engine=engine)).start()
