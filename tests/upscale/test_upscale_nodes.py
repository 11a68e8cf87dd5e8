"""UpscaleModelLoader / ImageUpscaleWithModel: object_info as ComfyUI shows them, a workflow that runs them, and the
engine's hires fix with a model upscaler reproduced exactly by its embedded workflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.engine import Engine, GenerationParams, HiresParams
from darkroom.engine.engine import RequestError
from darkroom.graph import object_info
from darkroom.models.registry import ModelRegistry
from darkroom.nodes import default_registry, run_workflow
from darkroom.settings import Settings
from darkroom.testing.tiny import shared_tiny_checkpoint
from darkroom.testing.upscalers import compact_state_dict, esrgan_state_dict, write_upscaler
from darkroom.upscale import load_upscale_model, upscale_image

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("m")
    (root / "checkpoints").mkdir()
    (root / "upscale_models").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    write_upscaler(root / "upscale_models" / "4x-Tiny.safetensors", esrgan_state_dict("old", scale=4, seed=1))
    write_upscaler(root / "upscale_models" / "RealESRGAN_x2plus.safetensors",
                   esrgan_state_dict("new", scale=2, seed=2))
    write_upscaler(root / "upscale_models" / "compact.safetensors", compact_state_dict(scale=2, seed=3))
    return Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"))


def test_object_info_shows_the_upscale_nodes(engine):
    info = object_info(default_registry(models=engine.registry))
    loader, upscale = info["UpscaleModelLoader"], info["ImageUpscaleWithModel"]
    names, _ = loader["input"]["required"]["model_name"]
    assert names == ["4x-Tiny.safetensors", "compact.safetensors", "RealESRGAN_x2plus.safetensors"]
    assert loader["output"] == ["UPSCALE_MODEL"] and loader["category"] == "loaders"
    assert loader["display_name"] == "Load Upscale Model"
    assert upscale["input"]["required"] == {"upscale_model": ["UPSCALE_MODEL", {}], "image": ["IMAGE", {}]}
    assert upscale["output"] == ["IMAGE"] and upscale["category"] == "image/upscaling"
    assert upscale["display_name"] == "Upscale Image (using Model)"


def _dirs(tmp_path: Path) -> dict[str, Path]:
    return {k: tmp_path / k for k in ("input_dir", "output_dir", "temp_dir")}


def test_workflow_with_the_two_nodes_upscales_an_image(engine, tmp_path):
    dirs = _dirs(tmp_path)
    dirs["input_dir"].mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(dirs["input_dir"] / "photo.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-Tiny.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    events = []
    result = run_workflow(prompt, engine=engine, on_event=lambda kind, data: events.append((kind, data)), **dirs)
    assert result.status == "success", result.error
    (png,) = list(dirs["output_dir"].rglob("*.png"))
    out = np.asarray(Image.open(png).convert("RGB"))
    assert out.shape == (96, 80, 3)
    model = load_upscale_model(engine.registry.find("upscale_models", "4x-Tiny"))
    expected = upscale_image(model, torch.from_numpy(rgb.astype(np.float32) / 255.0)[None])
    np.testing.assert_array_equal(out, np.clip(255.0 * expected[0].numpy(), 0, 255).astype(np.uint8))
    assert any(kind == "progress" and data.get("node") == "3" for kind, data in events)
    bad = {**prompt, "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "missing.pth"}}}
    with pytest.raises(Exception, match="missing.pth"):
        run_workflow(bad, engine=engine, **_dirs(tmp_path / "b"))


@pytest.mark.parametrize("upscaler", ["4x-Tiny", "RealESRGAN_x2plus.safetensors"])
def test_engine_hires_with_a_model_upscaler_equals_its_workflow(engine, tmp_path, upscaler):
    params = GenerationParams(prompt="a circle", width=64, height=64, steps=2, cfg=5.0, seed=4,
                              hires=HiresParams(scale=1.5, steps=1, denoise=0.5, upscaler=upscaler))
    result = engine.generate(params)
    ours = np.asarray(result.images[0])
    assert ours.shape == (96, 96, 3)
    wf = result.workflows[0]
    classes = [n["class_type"] for n in wf.values()]
    assert {"UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScale"} <= set(classes)
    (loader,) = [n for n in wf.values() if n["class_type"] == "UpscaleModelLoader"]
    assert loader["inputs"]["model_name"] == engine.registry.name_of(
        "upscale_models", engine.registry.find("upscale_models", upscaler))
    dirs = _dirs(tmp_path)
    run = run_workflow(wf, engine=engine, **dirs)
    assert run.status == "success", run.error
    (png,) = list(dirs["output_dir"].rglob("*.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), ours)
    assert "Hires upscaler: " + upscaler in result.infotexts[0]


def test_model_upscaler_changes_the_hires_result_and_bad_names_fail_early(engine):
    base = dict(prompt="a circle", width=64, height=64, steps=2, seed=4)
    lanczos = engine.generate(GenerationParams(**base, hires=HiresParams(scale=1.5, steps=1, upscaler="Lanczos")))
    model = engine.generate(GenerationParams(**base, hires=HiresParams(scale=1.5, steps=1, upscaler="4x-Tiny")))
    assert not np.array_equal(np.asarray(lanczos.images[0]), np.asarray(model.images[0]))
    with pytest.raises(RequestError, match="unknown hires upscaler 'R-ESRGAN 4x\\+'"):
        engine.validate(GenerationParams(**base, hires=HiresParams(upscaler="R-ESRGAN 4x+")))


def test_a1111_upscaler_names_find_the_files(tmp_path):
    root = tmp_path / "models"
    (root / "RealESRGAN").mkdir(parents=True)  # A1111's folder name
    write_upscaler(root / "RealESRGAN" / "RealESRGAN_x4plus.safetensors", esrgan_state_dict("new", scale=4))
    registry = ModelRegistry(Settings(models_dir=root, output_dir=tmp_path / "o", data_dir=tmp_path / "d"))
    from darkroom.upscale import find_upscaler, load_upscaler_by_name

    assert find_upscaler(registry, "R-ESRGAN 4x+").name == "RealESRGAN_x4plus.safetensors"
    model = load_upscaler_by_name(registry, "R-ESRGAN 4x+")
    assert (model.name, model.scale, model.dtype) == ("RealESRGAN_x4plus.safetensors", 4, torch.float32)
