"""A1111's img2img script "SD upscale" through the real `webuiapi` client: listed in /scripts and /script-info,
script_args [info, overlap, upscaler_index, scale_factor] with A1111's sizes and infotext, an embedded
UltimateSDUpscale workflow that re-runs to the same pixels, and 400s naming the bad argument."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import webuiapi
from PIL import Image

from darkroom.server.config import Limits, ServerConfig
from darkroom.settings import load_settings
from darkroom.testing.tiny import shared_tiny_checkpoint
from darkroom.testing.upscalers import compact_state_dict, write_upscaler


def _server_helpers():
    """tests/server/conftest.py's LiveServer and photo, loaded under their own module name."""
    path = Path(__file__).parent.parent / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location("server_conftest_for_upscale_tiled", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


helpers = _server_helpers()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from darkroom.server.app import create_app

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("usdu-models")
    (root / "checkpoints").mkdir()
    (root / "upscale_models").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    write_upscaler(root / "upscale_models" / "tiny-x2.safetensors", compact_state_dict(scale=2, seed=3))
    settings = load_settings(models_dir=root, data_dir=root / "unused-data", output_dir=root / "unused-output",
                             device="cpu", dtype="fp32")
    cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("usdu-data"), port=0,
                       limits=Limits(max_width=256, max_height=256))  # small, so an 8× upscale is refused
    live = helpers.LiveServer(create_app(settings, cfg)).start()
    yield live
    live.stop()


def client(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_scripts_and_script_info_list_sd_upscale(server) -> None:
    api = client(server)
    scripts = api.get_scripts()
    assert "sd upscale" in scripts["img2img"] and "sd upscale" not in scripts["txt2img"]
    info = server.get("/sdapi/v1/script-info").json()
    (entry,) = [e for e in info if e["name"] == "sd upscale"]
    assert entry["is_img2img"] and not entry["is_alwayson"]
    assert [a["label"] for a in entry["args"]] == [None, "Tile overlap", "Upscaler", "Scale Factor"]
    assert entry["args"][2]["choices"] == ["None", "Lanczos", "Nearest", "tiny-x2"]
    assert [u["name"] for u in api.get_upscalers()] == entry["args"][2]["choices"]


def test_sd_upscale_runs_and_its_workflow_reruns_to_the_same_pixels(server) -> None:
    api = client(server)
    init = helpers.photo(48, 48)
    r = api.img2img(images=[init], prompt="a red circle", negative_prompt="blurry", seed=5, width=64, height=64,
                    denoising_strength=0.4, cfg_scale=5, script_name="SD upscale", script_args=[None, 32, 1, 1.5],
                    save_images=True)
    assert r.image.size == (72, 72)  # Lanczos to int(48 · 1.5) // 8 · 8, redrawn in 2 × 2 tiles of 64 × 64
    text = r.info["infotexts"][0]
    assert "Size: 64x64" in text and "Denoising strength: 0.4" in text and "Seed: 5," in text
    assert text.endswith("SD upscale overlap: 32, SD upscale upscaler: Lanczos") or \
        "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in text
    lanczos = init.resize((72, 72), Image.LANCZOS)
    assert np.abs(pixels(r.image) - pixels(lanczos)).mean() > 1  # the tiles were redrawn

    (entry,) = server.get("/history", params={"max_items": 1}).json().values()
    ref = entry["outputs"]["9"]["images"][0]
    saved = Image.open(io.BytesIO(server.get("/view", params=ref).content))
    assert saved.info["parameters"] == text
    workflow = json.loads(saved.info["prompt"])
    (usdu,) = [n for n in workflow.values() if n["class_type"] == "UltimateSDUpscaleNoUpscale"]
    inputs = usdu["inputs"]
    assert (inputs["tile_width"], inputs["tile_height"], inputs["tile_padding"]) == (32, 32, 16)
    assert (inputs["seed"], inputs["steps"], inputs["denoise"], inputs["mode_type"]) == (5, 2, 0.4, "Linear")
    scale = workflow[inputs["upscaled_image"][0]]
    assert scale["class_type"] == "ImageScale" and scale["inputs"]["upscale_method"] == "lanczos"
    assert workflow["9"]["inputs"]["images"][0] in workflow and "KSampler" not in [
        n["class_type"] for n in workflow.values()]
    assert np.array_equal(pixels(saved), pixels(r.image))
    pid = server.post("/prompt", json={"prompt": workflow}).json()["prompt_id"]
    server.wait_idle()
    out = server.get(f"/history/{pid}").json()[pid]["outputs"]["9"]["images"][0]
    rerun = Image.open(io.BytesIO(server.get("/view", params=out).content))
    assert np.array_equal(pixels(rerun), pixels(r.image))


def test_sd_upscale_with_a_model_and_several_iterations(server) -> None:
    api = client(server)
    r = api.img2img(images=[helpers.photo(40, 48)], prompt="a cat", seed=9, width=64, height=64, n_iter=2,
                    batch_size=3, denoising_strength=0.3, script_name="sd upscale",
                    script_args=["", 16, "TINY-X2", 2])  # an upscaler name works too (any case), as in A1111
    assert r.info["all_seeds"] == [9, 10]  # one result per n_iter (batch_size only batches A1111's tiles)
    assert [im.size for im in r.images] == [(96, 80)] * 2  # no grid: A1111's script returns its results only
    assert "SD upscale upscaler: tiny-x2" in r.info["infotexts"][1]
    assert not np.array_equal(pixels(r.images[0]), pixels(r.images[1]))  # seeds 9 and 10
    (entry,) = server.get("/history", params={"max_items": 1}).json().values()
    graph = entry["prompt"][2]
    classes = [n["class_type"] for n in graph.values()]
    assert classes.count("ImageUpscaleWithModel") == 1 and "UltimateSDUpscaleNoUpscale" in classes
    plain = api.img2img(images=[helpers.photo(40, 48)], seed=9, width=64, height=64, script_name="SD upscale",
                        script_args=["", 0, 0, 2])  # "None": the image keeps its size
    assert plain.image.size == (48, 40) and "SD upscale upscaler: None" in plain.info["infotexts"][0]


@pytest.mark.parametrize(("changes", "words"), [
    ({"script_args": [None, 30, 1, 2]}, "script_args[1] (overlap) must be a multiple of 8 between 0 and 32"),
    ({"script_args": [None, 64, 1, 2]}, "script_args[1] (overlap)"),
    ({"script_args": [None, 32, 9, 2]}, "script_args[2] (upscaler_index) must index GET /sdapi/v1/upscalers"),
    ({"script_args": [None, 32, "R-ESRGAN 4x+", 2]}, "script_args[2] (upscaler): no upscaler named 'R-ESRGAN 4x+'"),
    ({"script_args": [None, 32, 1, "big"]}, "script_args[3] (scale_factor) must be a number"),
    ({"script_args": [None, 32, 1, 20]}, "script_args[3] (scale_factor)"),
    ({"script_args": [None, 32, 1, 2, 5]}, "SD upscale takes [info, overlap, upscaler_index, scale_factor]"),
    ({"script_args": [None, 32.5, 1, 2]}, "script_args[1] (overlap) must be an integer"),
    ({"script_name": "Loopback"}, "script 'Loopback' is not available"),
    ({"tiling": True}, "SD upscale cannot be combined with tiling"),
    ({"script_args": [None, 32, 1, 8]}, "would make a 384x384 image, beyond the server's limits"),
])
def test_bad_script_requests_answer_400_naming_the_problem(server, changes, words) -> None:
    import base64

    buf = io.BytesIO()
    helpers.photo(48, 48).save(buf, format="PNG")
    body = {"init_images": [base64.b64encode(buf.getvalue()).decode()], "width": 64, "height": 64, "steps": 2,
            "script_name": "SD upscale", "script_args": [None, 32, 1, 2], **changes}
    resp = requests.post(server.url + "/sdapi/v1/img2img", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["detail"], resp.text
    txt = requests.post(server.url + "/sdapi/v1/txt2img", json={"script_name": "SD upscale"}, timeout=30)
    assert txt.status_code == 400 and "'SD upscale' is an img2img script" in txt.json()["detail"]
