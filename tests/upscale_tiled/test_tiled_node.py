"""UltimateSDUpscale / UltimateSDUpscaleNoUpscale through the graph executor: the custom node's inputs, the same
pixels as `darkroom.upscale.tiled_img2img.sd_upscale`, progress over all tiles, and seam fix modes refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.engine import Engine, pipeline
from darkroom.engine.vae import pil_to_tensor
from darkroom.graph import PromptValidationError, object_info
from darkroom.nodes import default_registry, run_workflow
from darkroom.nodes.ultimate_upscale import usdu_size
from darkroom.settings import Settings
from darkroom.testing.tiny import shared_tiny_checkpoint
from darkroom.testing.upscalers import compact_state_dict, write_upscaler
from darkroom.upscale import load_upscaler_by_name
from darkroom.upscale.tiled_img2img import sd_upscale, upscale_to

torch.set_num_threads(1)
SAMPLING = {"seed": 11, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("m")
    (root / "checkpoints").mkdir()
    (root / "upscale_models").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    write_upscaler(root / "upscale_models" / "tiny-x2.safetensors", compact_state_dict(scale=2, seed=3))
    return Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"), device="cpu",
                  dtype="fp32")


@pytest.fixture
def dirs(tmp_path):
    d = {k: tmp_path / k for k in ("input_dir", "output_dir", "temp_dir")}
    d["input_dir"].mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d["input_dir"] / "photo.png")
    return d


def workflow(node: str = "UltimateSDUpscale", **changes) -> dict:
    usdu = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], **SAMPLING,
            "mode_type": "Linear", "tile_width": 32, "tile_height": 32, "mask_blur": 8, "tile_padding": 8,
            "seam_fix_mode": "None", "seam_fix_denoise": 1.0, "seam_fix_width": 64, "seam_fix_mask_blur": 8,
            "seam_fix_padding": 16, "force_uniform_tiles": True, "tiled_decode": False}
    if node == "UltimateSDUpscale":
        usdu.update(image=["4", 0], upscale_by=2.0, upscale_model=["5", 0])
    else:
        usdu.update(upscaled_image=["4", 0], batch_size=1)
    usdu.update(changes)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "5": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny-x2.safetensors"}},
        "6": {"class_type": node, "inputs": usdu},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def function_result(engine: Engine, dirs, *, model: bool, order: str = "linear", width: int = 80,
                    height: int = 64) -> torch.Tensor:
    ckpt = engine.load("tiny.safetensors")
    pos, neg = (pipeline.encode_text(ckpt, t, style="comfy", embeddings=engine.embeddings())
                for t in ("a red circle", "blurry"))
    image = pil_to_tensor(Image.open(dirs["input_dir"] / "photo.png"))
    up = load_upscaler_by_name(engine.registry, "tiny-x2.safetensors") if model else None
    s = SAMPLING
    return sd_upscale(ckpt, image, pos, neg, width=width, height=height, upscale_model=up, seed=s["seed"],
                      steps=s["steps"], cfg=s["cfg"], sampler=s["sampler_name"], scheduler=s["scheduler"],
                      denoise=s["denoise"], tile_width=48, tile_height=48, overlap=16, order=order)


def test_object_info_has_the_custom_nodes_inputs(engine) -> None:
    info = object_info(default_registry(models=engine.registry))
    node = info["UltimateSDUpscale"]
    assert list(node["input"]["required"]) == [
        "image", "model", "positive", "negative", "vae", "upscale_by", "seed", "steps", "cfg", "sampler_name",
        "scheduler", "denoise", "upscale_model", "mode_type", "tile_width", "tile_height", "mask_blur",
        "tile_padding", "seam_fix_mode", "seam_fix_denoise", "seam_fix_width", "seam_fix_mask_blur",
        "seam_fix_padding"]
    assert list(node["input"]["optional"]) == ["force_uniform_tiles", "tiled_decode", "batch_size"]
    req = node["input"]["required"]
    assert req["mode_type"][0] == ["Linear", "Chess", "None"]
    assert req["seam_fix_mode"][0] == ["None", "Band Pass", "Half Tile", "Half Tile + Intersections"]
    assert req["upscale_by"][1]["default"] == 2.0 and req["denoise"][1]["default"] == 0.2
    assert req["tile_padding"][1]["default"] == 32 and req["tile_width"][1]["default"] == 512
    assert node["output"] == ["IMAGE"] and node["category"] == "image/upscaling"
    assert "Half Tile" in node["description"] and "not implemented" in node.get("description", "").lower()
    no_up = info["UltimateSDUpscaleNoUpscale"]["input"]["required"]
    assert "upscaled_image" in no_up and "upscale_model" not in no_up and "upscale_by" not in no_up
    assert usdu_size(40, 32, 2.0) == (80, 64) and usdu_size(37, 30, 1.5) == (56, 48)


def test_node_equals_the_function(engine, dirs) -> None:
    events: list = []
    result = run_workflow(workflow(), engine=engine, on_event=lambda kind, data: events.append((kind, data)), **dirs)
    assert result.status == "success", result.error
    out = result.node_outputs["6"][0]
    assert out.shape == (1, 64, 80, 3)
    assert torch.equal(out, function_result(engine, dirs, model=True))
    steps = [d for k, d in events if k == "progress" and d.get("node") == "6"]
    assert steps[-1]["value"] == steps[-1]["max"] == 4 * 2  # 2 × 2 tiles × 2 steps, counted across the tiles
    assert [d["value"] for d in steps] == list(range(1, 9))


def test_no_upscale_node_in_chess_order_equals_the_function(engine, dirs) -> None:
    image = pil_to_tensor(Image.open(dirs["input_dir"] / "photo.png"))
    Image.fromarray((upscale_to(image, 80, 64)[0].numpy() * 255).round().astype(np.uint8)).save(
        dirs["input_dir"] / "photo.png")  # already upscaled (Lanczos): the function's own upscale is then a no-op
    result = run_workflow(workflow("UltimateSDUpscaleNoUpscale", mode_type="Chess"), engine=engine, **dirs)
    assert result.status == "success", result.error
    out = result.node_outputs["6"][0]
    assert torch.equal(out, function_result(engine, dirs, model=False, order="chess"))
    skipped = run_workflow(workflow("UltimateSDUpscaleNoUpscale", mode_type="None"), engine=engine, **dirs)
    assert torch.equal(skipped.node_outputs["6"][0], pil_to_tensor(Image.open(dirs["input_dir"] / "photo.png")))


def test_seam_fix_modes_and_oversized_padding_are_refused(engine, dirs) -> None:
    with pytest.raises(PromptValidationError) as ex:
        run_workflow(workflow(seam_fix_mode="Band Pass"), engine=engine, **dirs)
    assert "seam_fix_mode 'Band Pass' is not implemented" in str(ex.value.node_errors)
    with pytest.raises(PromptValidationError) as ex:
        run_workflow(workflow(tile_padding=24), engine=engine, **dirs)
    assert "tile_padding 24 is more than half the tile size" in str(ex.value.node_errors)
