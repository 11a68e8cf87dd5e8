"""Browser tests: a live darkroom server over tiny checkpoints, driven through Debian's headless Chromium.

Skipped (with the reason) when Chromium or Playwright is missing; `make test` installs Chromium first
(tests/browser/ensure-chromium.sh). Screenshots of every step go to test-artifacts/browser/<test>/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """Debian's chromium (or $DARKROOM_CHROMIUM)."""
    env = os.environ.get("DARKROOM_CHROMIUM")
    if env and os.access(env, os.X_OK):
        return env
    return shutil.which("chromium") or (("/usr/bin/chromium") if os.access("/usr/bin/chromium", os.X_OK) else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving one darkroom app in a background thread on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio",
                             lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.darkroom

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the darkroom server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@dataclass
class Studio:
    server: LiveServer
    models: Path
    data: Path

    @property
    def output(self) -> Path:
        return self.server.state.folders.output


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for all browser tests: tiny SD1.5 checkpoint + LoRA + embedding, data in a temp folder."""
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (make browser installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    import torch

    from darkroom.server.app import create_app
    from darkroom.server.config import ServerConfig
    from darkroom.settings import load_settings
    from darkroom.testing.lora_files import write_kohya_lora
    from darkroom.testing.tiny import tiny_components, write_tiny_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("browser-models")
    for sub in ("checkpoints", "loras", "embeddings"):
        (root / sub).mkdir()
    comps = tiny_components("sd15", seed=0)
    write_tiny_checkpoint(root / "checkpoints" / "tiny-sd15.safetensors", "sd15", components=comps)
    write_kohya_lora(root / "loras" / "tiny-lora.safetensors", comps["unet"], [comps["text_encoder"]], seed=3,
                     std=0.2)
    data = tmp_path_factory.mktemp("browser-data")
    settings = load_settings(models_dir=root, data_dir=data, output_dir=data / "output", device="cpu", dtype="fp32")
    app = create_app(settings, ServerConfig(data_dir=data, port=0))
    server = LiveServer(app).start()
    yield Studio(server=server, models=root, data=data)
    server.stop()


@dataclass
class Browser:
    """One Chromium (fresh profile) and what the pages did: external requests, script errors."""

    context: Any
    base: str
    external: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def new_page(self, width: int = 1440, height: int = 900) -> Any:
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        return page


@pytest.fixture(scope="session")
def browser(studio: Studio) -> Any:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="darkroom-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900}, accept_downloads=True)
        context.set_default_timeout(30_000)
        b = Browser(context=context, base=studio.server.url)

        def watch(request: Any) -> None:
            url = request.url
            if not url.startswith((b.base, "data:", "blob:", "about:")):
                b.external.append(url)

        context.on("request", watch)
        try:
            yield b
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class Shots:
    """Numbered screenshots of one test under test-artifacts/browser/<test>/."""

    def __init__(self, name: str) -> None:
        self.dir = ARTIFACTS / re.sub(r"[^\w.-]+", "_", name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def __call__(self, page: Any, label: str, **kw: Any) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{label}.png"
        page.screenshot(path=str(path), **kw)
        return path


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name)
