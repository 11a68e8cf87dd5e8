"""A darkroom app over a tiny SD1.5 checkpoint for the studio and node-editor routes (no browser needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Models:
    root: Path
    settings: Any
    engine: Any


@pytest.fixture(scope="session")
def studio_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    import torch

    from darkroom.engine import Engine
    from darkroom.settings import load_settings
    from darkroom.testing.tiny import write_tiny_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("studio-models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    write_tiny_checkpoint(root / "checkpoints" / "tiny-sd15.safetensors", "sd15", seed=0)
    settings = load_settings(models_dir=root, data_dir=root / "unused", output_dir=root / "unused-out", device="cpu",
                             dtype="fp32")
    return Models(root=root, settings=settings, engine=Engine(settings))


@pytest.fixture
def make_client(studio_models: Models, tmp_path: Path):
    """TestClient factory over a fresh data dir (worker off unless asked)."""
    from fastapi.testclient import TestClient

    from darkroom.server.app import create_app
    from darkroom.server.config import ServerConfig

    clients = []

    def make(worker: bool = False, data_dir: Path | None = None) -> Any:
        cfg = ServerConfig(data_dir=data_dir or tmp_path / "data", worker=worker)
        app = create_app(studio_models.settings, cfg, engine=studio_models.engine)
        client = TestClient(app, base_url="http://127.0.0.1:8188")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
