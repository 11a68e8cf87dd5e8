"""A tiny studio for workflow tests: tiny SD1/SDXL/refiner checkpoints in the real single-file layout, a kohya LoRA,
a separate VAE and input images, an Engine over them, and helpers to run the API-format JSON files in this folder."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.engine import Engine
from darkroom.graph import ExecutionResult, GraphExecutor
from darkroom.nodes import default_executor, run_workflow
from darkroom.settings import load_settings
from darkroom.testing.lora_files import write_kohya_lora
from darkroom.testing.tiny import tiny_components, write_tiny_checkpoint, write_tiny_vae

HERE = Path(__file__).parent
MASK_BOX = (16, 40, 16, 40)  # y0, y1, x0, x1 of the transparent square in masked.png


def photo(h: int = 64, w: int = 64) -> np.ndarray:
    """A deterministic test picture: gradients plus a bright disc (uint8 RGB)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = x / max(w - 1, 1)
    g = y / max(h - 1, 1)
    b = ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 4) ** 2).astype(np.float32)
    return (np.stack([r, g, 0.3 + 0.6 * b], axis=-1) * 255).astype(np.uint8)


@dataclass
class Studio:
    """An engine with tiny models plus input/output/temp folders and a shared executor."""

    root: Path
    engine: Engine
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    executor: GraphExecutor
    lora_components: dict[str, torch.nn.Module]
    mask_box: tuple[int, int, int, int] = MASK_BOX

    def workflow(self, name: str) -> dict[str, Any]:
        """A fresh copy of tests/workflows/<name>.json."""
        return copy.deepcopy(json.loads((HERE / f"{name}.json").read_text(encoding="utf-8")))

    def new_executor(self) -> GraphExecutor:
        return default_executor(self.engine, input_dir=self.input_dir)

    def run(self, prompt: dict[str, Any], *, executor: GraphExecutor | None = None, check: bool = True,
            **kwargs: Any) -> ExecutionResult:
        """Run a prompt; with `check`, fail the test with the node's traceback if it did not succeed."""
        result = run_workflow(prompt, engine=self.engine, input_dir=self.input_dir, output_dir=self.output_dir,
                              temp_dir=self.temp_dir, executor=executor or self.executor, **kwargs)
        if check and not result.success:
            err = result.error or {}
            pytest.fail(f"workflow failed: {err.get('exception_type')}: {err.get('exception_message')}\n"
                        + "".join(err.get("traceback", [])))
        return result

    def saved(self, result: ExecutionResult, node_id: str) -> list[Path]:
        """Paths of the files an output node reported."""
        out = []
        for item in result.outputs[node_id]["images"]:
            base = self.output_dir if item["type"] == "output" else self.temp_dir
            out.append(base / item["subfolder"] / item["filename"])
        return out

    def pixels(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Studio:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("studio")
    ckpts, loras, vaes = root / "models" / "checkpoints", root / "models" / "loras", root / "models" / "vae"
    for d in (ckpts, loras, vaes):
        d.mkdir(parents=True)
    comps = tiny_components("sd15", seed=0)
    write_tiny_checkpoint(ckpts / "tiny-sd15.safetensors", "sd15", components=comps)
    write_tiny_checkpoint(ckpts / "tiny-sdxl.safetensors", "sdxl-base", seed=1)
    write_tiny_checkpoint(ckpts / "tiny-sdxl-refiner.safetensors", "sdxl-refiner", seed=2)
    write_kohya_lora(loras / "tiny-lora.safetensors", comps["unet"], [comps["text_encoder"]], seed=3, std=0.2)
    write_tiny_vae(vaes / "tiny-vae.safetensors", seed=4)

    input_dir = root / "input"
    input_dir.mkdir()
    Image.fromarray(photo()).save(input_dir / "photo.png")
    Image.fromarray(photo(50, 74)).save(input_dir / "photo-wide.png")
    rgba = np.concatenate([photo(), np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    y0, y1, x0, x1 = MASK_BOX
    rgba[y0:y1, x0:x1, 3] = 0
    Image.fromarray(rgba, "RGBA").save(input_dir / "masked.png")

    settings = load_settings(models_dir=root / "models", data_dir=root / "data", output_dir=root / "output",
                             device="cpu", dtype="fp32")
    engine = Engine(settings)
    return Studio(root=root, engine=engine, input_dir=input_dir, output_dir=root / "output",
                  temp_dir=root / "temp", executor=default_executor(engine, input_dir=input_dir),
                  lora_components=comps)
