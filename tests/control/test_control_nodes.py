"""ComfyUI workflows with ControlNet nodes run end to end through `darkroom.nodes.run_workflow` and give exactly the
pixels of the same steps called directly; the diff loader, the old apply node, T2I-Adapters, the preprocessor and
OpenPose nodes work, and misuse fails with a message naming the fix."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cn_studio import shared_control_studio  # noqa: E402

from darkroom.control.apply import apply_control  # noqa: E402
from darkroom.control.loader import load_control_model  # noqa: E402
from darkroom.control.preprocess import prepare_hint  # noqa: E402
from darkroom.engine import pipeline  # noqa: E402
from darkroom.nodes import run_workflow  # noqa: E402

SEED, STEPS, CFG = 7, 3, 5.0
BASE: dict = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cn", "images": ["8", 0]}},
}

@pytest.fixture(scope="module")
def control_studio():
    """The shared tiny models folder with ControlNets (built once per process)."""
    return shared_control_studio()


def controlled(loader: dict, *, strength: float = 0.9, start: float = 0.0, end: float = 0.8,
               preprocess: dict | None = None) -> dict:
    """BASE plus LoadImage → (preprocessor) → loader → ControlNetApplyAdvanced between the prompts and KSampler."""
    wf = copy.deepcopy(BASE)
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": "square.png"}}
    image = ["10", 0]
    if preprocess is not None:
        wf["13"] = {"class_type": preprocess.pop("class_type"), "inputs": {"image": image, **preprocess}}
        image = ["13", 0]
    wf["11"] = loader
    wf["12"] = {"class_type": "ControlNetApplyAdvanced",
                "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": image,
                           "strength": strength, "start_percent": start, "end_percent": end}}
    wf["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    return wf


def run(studio, wf: dict) -> np.ndarray:
    before = set(studio.output_dir.rglob("*.png"))
    result = run_workflow(wf, engine=studio.engine, input_dir=studio.input_dir, output_dir=studio.output_dir,
                          temp_dir=studio.temp_dir)
    assert result.status == "success", result.error
    (png,) = set(studio.output_dir.rglob("*.png")) - before
    return np.asarray(Image.open(png).convert("RGB"))


def direct(studio, hint: torch.Tensor, *, strength: float, start: float, end: float, name: str) -> np.ndarray:
    """The same generation through the engine's steps, without the graph."""
    ckpt = studio.engine.load("tiny-sd15.safetensors")
    model = load_control_model(studio.root / "controlnet" / name)
    pos = pipeline.encode_text(ckpt, "a red square", style="comfy")
    neg = pipeline.encode_text(ckpt, "blurry", style="comfy")
    pos, neg = apply_control(pos, neg, model, hint, strength=strength, start_percent=start, end_percent=end)
    out = pipeline.ksample(ckpt, torch.zeros((1, 4, 8, 8)), pos, neg, seed=SEED, steps=STEPS, cfg=CFG,
                           sampler="euler", scheduler="normal")
    return np.clip(255.0 * pipeline.decode(ckpt, out)[0].numpy(), 0, 255).astype(np.uint8)  # SaveImage truncates


@pytest.fixture(scope="module")
def plain(control_studio):
    return run(control_studio, copy.deepcopy(BASE))


def test_controlnet_loader_and_apply_advanced_run_end_to_end(control_studio, plain):
    loader = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}}
    got = run(control_studio, controlled(loader))
    hint = torch.from_numpy(np.asarray(Image.open(control_studio.input_dir / "square.png").convert("RGB"),
                                       dtype=np.float32) / 255.0)[None]
    want = direct(control_studio, hint, strength=0.9, start=0.0, end=0.8, name="control_sd15_tiny.safetensors")
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(int) - plain.astype(int)).max() > 3  # the ControlNet changed the picture
    # the diffusers folder of the same network, listed file by file, gives the same picture
    folder = {"class_type": "ControlNetLoader",
              "inputs": {"control_net_name": "control_sd15_tiny_diffusers/diffusion_pytorch_model.safetensors"}}
    np.testing.assert_array_equal(run(control_studio, controlled(folder)), got)
    # strength 0 is no ControlNet
    np.testing.assert_array_equal(run(control_studio, controlled(loader, strength=0.0)), plain)


def test_diff_controlnet_through_diff_loader_equals_the_full_one(control_studio):
    full = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}}
    diff = {"class_type": "DiffControlNetLoader",
            "inputs": {"model": ["4", 0], "control_net_name": "diff_control_sd15_tiny.safetensors"}}
    a, b = run(control_studio, controlled(full)), run(control_studio, controlled(diff))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # (diff + base) rounds like the stored weights
    plain_loader = {"class_type": "ControlNetLoader",
                    "inputs": {"control_net_name": "diff_control_sd15_tiny.safetensors"}}
    result = run_workflow(controlled(plain_loader), engine=control_studio.engine, input_dir=control_studio.input_dir,
                          output_dir=control_studio.output_dir, temp_dir=control_studio.temp_dir)
    assert result.status == "error" and "DiffControlNetLoader" in str(result.error)


def test_preprocessor_nodes_and_t2i_adapter(control_studio, plain):
    loader = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}}
    canny = run(control_studio, controlled(loader, preprocess={"class_type": "Canny", "low_threshold": 0.2,
                                                               "high_threshold": 0.5}))
    prep = run(control_studio, controlled(loader, preprocess={
        "class_type": "ControlNetPreprocessor", "preprocessor": "canny", "resolution": 64, "threshold_a": 100,
        "threshold_b": 200, "width": 64, "height": 64, "resize_mode": "Crop and Resize"}))
    assert np.abs(canny.astype(int) - prep.astype(int)).max() > 0  # both ran; maps differ slightly in detail
    t2i = {"class_type": "T2IAdapterLoader", "inputs": {"t2i_adapter_name": "t2iadapter_tiny_sd15.safetensors"}}
    adapted = run(control_studio, controlled(t2i))
    assert np.abs(adapted.astype(int) - plain.astype(int)).max() > 3
    wrong = {"class_type": "T2IAdapterLoader", "inputs": {"t2i_adapter_name": "control_sd15_tiny.safetensors"}}
    result = run_workflow(controlled(wrong), engine=control_studio.engine, input_dir=control_studio.input_dir,
                          output_dir=control_studio.output_dir, temp_dir=control_studio.temp_dir)
    assert result.status == "error" and "not a T2I-Adapter" in str(result.error)


def test_old_apply_node_controls_the_positive_side_only(control_studio, plain):
    wf = copy.deepcopy(BASE)
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": "square.png"}}
    wf["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}}
    wf["12"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["11", 0],
                                                            "image": ["10", 0], "strength": 1.0}}
    wf["3"]["inputs"]["positive"] = ["12", 0]
    old = run(control_studio, wf)
    both = run(control_studio, controlled(
        {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}},
        strength=1.0, end=1.0))
    assert np.abs(old.astype(int) - plain.astype(int)).max() > 3 and np.abs(old.astype(int) - both.astype(int)).max() > 0


def test_a1111_mode_node_and_openpose_render(control_studio):
    from darkroom.nodes.controlnet import ControlNetApplyA1111, OpenPoseRender

    pose = {"people": [{"pose_keypoints_2d": [0, 0, 0, 32, 20, 1, 12, 20, 1] + [0, 0, 0] * 15}],
            "canvas_width": 64, "canvas_height": 64}
    (img,) = OpenPoseRender().execute(None, json.dumps(pose), 128, 128, True, True)
    assert img.shape == (1, 128, 128, 3) and img[0, 40, 64, 1] == pytest.approx(85 / 255)
    model = load_control_model(control_studio.root / "controlnet" / "control_sd15_tiny.safetensors")
    pos, neg = ControlNetApplyA1111().execute(None, [_item()], [_item()], model, img, 1.0, 0.0, 1.0,
                                              control_mode="ControlNet is more important")
    unit = pos[0].extra["control"][0]
    assert unit.mode == "control" and neg[0].extra["control"][0] is unit


def test_preprocessor_node_without_weights_names_the_file(control_studio):
    wf = controlled({"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_sd15_tiny.safetensors"}},
                    preprocess={"class_type": "ControlNetPreprocessor", "preprocessor": "depth_zoe",
                                "resolution": 64, "threshold_a": -1, "threshold_b": -1})
    result = run_workflow(wf, engine=control_studio.engine, input_dir=control_studio.input_dir,
                          output_dir=control_studio.output_dir, temp_dir=control_studio.temp_dir)
    assert result.status == "error"
    assert "ZoeD_M12_N.pt" in str(result.error) and str(control_studio.root / "annotators") in str(result.error)


def test_prepare_hint_matches_preprocessor_node(control_studio):
    from darkroom.nodes.controlnet import ControlNetPreprocessor

    class Ctx:
        services = {"engine": control_studio.engine}

    img = torch.from_numpy(np.asarray(Image.open(control_studio.input_dir / "square.png").convert("RGB"),
                                      dtype=np.float32) / 255.0)[None]
    (node,) = ControlNetPreprocessor().execute(Ctx(), img, "scribble_xdog", 64, -1, -1, None, 32, 48, "Just Resize")
    assert node.shape == (1, 48, 32, 3)
    torch.testing.assert_close(node, prepare_hint(img, "scribble_xdog", resolution=64, width=32, height=48,
                                                  mode="Just Resize"))


def _item():
    from darkroom.engine.denoiser import CondItem

    return CondItem(cross_attn=torch.zeros((1, 77, 32)))
