"""A live darkroom server on a free loopback port, over tiny SD1.5 checkpoints written to a temp models folder."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from darkroom.server.config import ServerConfig
from darkroom.settings import load_settings

HERE = Path(__file__).parent
WORKFLOWS = HERE.parent / "workflows"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(h: int = 64, w: int = 64) -> Image.Image:
    """A deterministic RGB test picture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([x / (w - 1), y / (h - 1), 0.3 + 0.6 * (((x - w / 2) ** 2 + (y - h / 2) ** 2) < (h / 4) ** 2)], -1)
    return Image.fromarray((arr * 255).astype(np.uint8))


def txt2img_workflow(seed: int = 1, steps: int = 3, size: int = 64, prefix: str = "ComfyUI") -> dict[str, Any]:
    """ComfyUI's default API workflow (tests/workflows/txt2img.json) on the tiny checkpoint."""
    wf = json.loads((WORKFLOWS / "txt2img.json").read_text(encoding="utf-8"))
    wf["3"]["inputs"].update(seed=seed, steps=steps)
    wf["5"]["inputs"].update(width=size, height=size)
    wf["9"]["inputs"]["filename_prefix"] = prefix
    return wf


@dataclass
class Models:
    root: Path
    settings: Any
    engine: Any


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from darkroom.engine import Engine
    from darkroom.testing.lora_files import write_kohya_lora
    from darkroom.testing.tiny import tiny_components, write_tiny_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("server-models")
    ckpts, loras = root / "checkpoints", root / "loras"
    ckpts.mkdir()
    loras.mkdir()
    comps = tiny_components("sd15", seed=0)
    write_tiny_checkpoint(ckpts / "tiny-sd15.safetensors", "sd15", components=comps)
    write_tiny_checkpoint(ckpts / "tiny-sd15_b.safetensors", "sd15", seed=7, metadata={"modelspec.title": "tiny b"})
    write_kohya_lora(loras / "tiny-lora.safetensors", comps["unet"], [comps["text_encoder"]], seed=3, std=0.2)
    settings = load_settings(models_dir=root, data_dir=root / "unused-data", output_dir=root / "unused-output",
                             device="cpu", dtype="fp32")
    return Models(root=root, settings=settings, engine=Engine(settings))


class LiveServer:
    """uvicorn serving one app in a background thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.host = host
        cfg = uvicorn.Config(app, host=host, port=self.port, log_level="warning", ws="websockets-sansio",
                             lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.darkroom

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until nothing is queued or running."""
        deadline = time.time() + timeout
        while self.state.queue.remaining():
            if time.time() > deadline:
                raise TimeoutError("queue did not drain")
            time.sleep(0.02)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kw)


@pytest.fixture
def make_server(models: Models, tmp_path: Path):
    """Start servers over a data dir (default: this test's tmp dir); all are stopped at the end."""
    started: list[LiveServer] = []

    def make(data_dir: Path | None = None, **config: Any) -> LiveServer:
        from darkroom.server.app import create_app

        cfg = ServerConfig(data_dir=data_dir or tmp_path / "data", port=0, **config)
        server = LiveServer(create_app(models.settings, cfg, engine=models.engine))
        started.append(server)
        return server.start()

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shared_server(models: Models, tmp_path_factory: pytest.TempPathFactory):
    """One server for read-mostly tests of a module."""
    from darkroom.server.app import create_app

    cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("shared-data"), port=0)
    server = LiveServer(create_app(models.settings, cfg, engine=models.engine)).start()
    yield server
    server.stop()
