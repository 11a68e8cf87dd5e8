"""A1111 clients that use the ControlNet extension work: the `webuiapi` client's ControlNet units in txt2img/img2img
give the engine's pixels, and /controlnet/model_list, module_list, detect and render_openpose_json answer as the
extension does."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import webuiapi
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from cn_studio import shared_control_studio  # noqa: E402
from cn_tiny import square_picture  # noqa: E402

from darkroom.testing.studio import start_live_server  # noqa: E402


@pytest.fixture(scope="module")
def control_studio():
    """The shared tiny models folder with ControlNets (built once per process)."""
    return shared_control_studio()


@pytest.fixture(scope="module")
def server(control_studio, tmp_path_factory):
    live = start_live_server(control_studio.engine, tmp_path_factory.mktemp("cn-server"))
    yield live
    live.stop()


def api_client(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)


def b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def title(server, stem: str) -> str:
    (found,) = [t for t in api_client(server).controlnet_model_list() if t.startswith(stem + " [")]
    return found


def test_model_and_module_lists(server, control_studio):
    from darkroom.control.names import legacy_hash

    api = api_client(server)
    assert api.controlnet_version() == 2
    titles = api.controlnet_model_list()
    h = legacy_hash(control_studio.root / "controlnet" / "control_sd15_tiny.safetensors")
    assert f"control_sd15_tiny [{h}]" in titles
    assert any(t.startswith("control_sd15_tiny_diffusers [") for t in titles)  # a diffusers folder by its name
    assert any(t.startswith("t2iadapter_tiny_sd15 [") for t in titles) and len(titles) == 4
    modules = server.get("/controlnet/module_list").json()
    assert modules["module_list"][:3] == ["none", "invert", "canny"]
    canny = modules["module_detail"]["canny"]
    assert [s["name"] for s in canny["sliders"]][1:] == ["Canny Low Threshold", "Canny High Threshold"]
    assert canny["builtin"] and not modules["module_detail"]["depth"]["builtin"]
    aliases = server.get("/controlnet/module_list", params={"alias_names": "true"}).json()["module_list"]
    assert "invert (from white bg & black line)" in aliases and "depth_midas" in aliases
    assert "controlnet" in server.get("/sdapi/v1/scripts").json()["txt2img"]
    types = server.get("/controlnet/control_types").json()["control_types"]
    assert "canny" in types["Canny"]["module_list"] and types["All"]["model_list"][0] == "None"


def test_detect_runs_preprocessors_and_names_missing_weights(server):
    api = api_client(server)
    r = api.controlnet_detect([square_picture()], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    (img,) = r.images
    edges = np.asarray(img.convert("L")) > 127
    assert edges[16:48, 14:18].any(axis=1)[2:-2].all() and not edges[24:40, 24:40].any()
    r = server.post("/controlnet/detect", json={"controlnet_module": "depth_midas",
                                                 "controlnet_input_images": [b64_png(square_picture())]})
    assert r.status_code == 422 and "dpt_hybrid-midas-501f0c75.pt" in r.json()["detail"]
    assert "annotators" in r.json()["detail"]
    r = server.post("/controlnet/detect", json={"controlnet_module": "blur_everything",
                                                 "controlnet_input_images": [b64_png(square_picture())]})
    assert r.status_code == 422 and r.json()["detail"].startswith("Module not available")
    r = server.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": []})
    assert r.status_code == 422 and r.json()["detail"] == "No image selected"


def test_render_openpose_json(server):
    pose = {"people": [{"pose_keypoints_2d": [0, 0, 0, 32, 20, 1, 12, 20, 1] + [0, 0, 0] * 15}],
            "canvas_width": 64, "canvas_height": 64}
    r = server.post("/controlnet/render_openpose_json", json=[pose])
    assert r.status_code == 200 and r.json()["info"] == "Success"
    img = decode(r.json()["images"][0])
    assert tuple(img[20, 32]) == (255, 85, 0) and tuple(img[20, 22]) == (153, 0, 0)
    bad = server.post("/controlnet/render_openpose_json", json=[{"people": []}])
    assert bad.status_code == 422 and "canvas_width" in bad.json()["detail"]


def test_txt2img_with_a_controlnet_unit_matches_the_engine(server, control_studio, tmp_path):
    from darkroom.control.units import ControlNetUnit
    from darkroom.engine import GenerationParams

    api = api_client(server)
    name = title(server, "control_sd15_tiny")
    unit = webuiapi.ControlNetUnit(image=square_picture(), module="canny", model=name, weight=0.9,
                                   guidance_end=0.8, pixel_perfect=True, resize_mode="Crop and Resize",
                                   threshold_a=100, threshold_b=200)
    kw = dict(prompt="a red square", negative_prompt="blurry", seed=9, width=64, height=64, cfg_scale=6)
    plain = api.txt2img(alwayson_scripts={}, **kw)  # webuiapi's default dict keeps units between calls
    r = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **kw)
    assert np.abs(np.asarray(r.image, dtype=int) - np.asarray(plain.image, dtype=int)).max() > 3
    text = r.info["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {name}, Weight: 0.9, Resize Mode: Crop and Resize, ' \
           f'Processor Res: 64, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 0.8, ' \
           f'Pixel Perfect: True, Control Mode: Balanced"' in text
    # the same request through the engine, with the picture as a file: the same pixels
    path = tmp_path / "square.png"
    square_picture().save(path)
    res = control_studio.engine.generate(GenerationParams(
        prompt="a red square", negative_prompt="blurry", seed=9, width=64, height=64, steps=3, cfg=6.0,
        sampler="euler_ancestral", scheduler="normal", model="tiny-sd15.safetensors",
        controlnets=[ControlNetUnit(model="control_sd15_tiny", image=path, module="canny", weight=0.9,
                                    guidance_end=0.8, processor_res=64, threshold_a=100, threshold_b=200,
                                    pixel_perfect=True)]))
    np.testing.assert_array_equal(np.asarray(r.image), np.asarray(res.images[0]))
    assert res.infotexts[0] == text
    # the job ran as a ComfyUI graph with the ControlNet nodes
    (entry,) = server.get("/history", params={"max_items": 1}).json().values()
    kinds = {n["class_type"] for n in entry["prompt"][2].values()}
    assert {"LoadImage", "ControlNetPreprocessor", "DiffControlNetLoader", "ControlNetApplyAdvanced"} <= kinds


def test_img2img_unit_without_image_uses_the_init_image(server):
    api = api_client(server)
    init = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    unit = webuiapi.ControlNetUnit(module="invert", model=title(server, "control_sd15_tiny"),
                                   control_mode=1, resize_mode="Just Resize")
    r = api.img2img(images=[init], prompt="a square", seed=4, width=64, height=64, denoising_strength=0.6,
                    controlnet_units=[unit], alwayson_scripts={})
    assert r.image.size == (64, 64)
    assert "Control Mode: My prompt is more important" in r.info["infotexts"][0]


@pytest.mark.parametrize("unit, field, words", [
    (dict(model="no_such_controlnet", module="canny"), "model", "no controlnet model named"),
    (dict(model="control_sd15_tiny", module="canny", image=None), "image", "has no image"),
    (dict(model="control_sd15_tiny", module="canny", control_mode="Loud"), "control_mode", "unknown control mode"),
    (dict(model="control_sd15_tiny", module="inpaint_only"), "mask", "needs a mask"),
    (dict(model="control_sd15_tiny", module="sharpen"), "module", "unknown preprocessor"),
    (dict(model="control_sd15_tiny", module="canny", colour="red"), "args[0]", "unknown ControlNet unit field"),
])
def test_bad_units_are_refused_by_field(server, unit, field, words):
    body = {"image": b64_png(square_picture()), **unit}
    if body["image"] is None:
        del body["image"]
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1,
                                                "alwayson_scripts": {"controlnet": {"args": [body]}}})
    assert r.status_code == 400, r.text
    assert words in r.json()["detail"] and field in r.json()["detail"]


def test_disabled_and_empty_units_are_ignored(server):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3,
            "alwayson_scripts": {"ControlNet": {"args": [{"enabled": False, "model": "control_sd15_tiny",
                                                          "module": "canny"},
                                                         {"model": "None", "module": "none"}]}}}
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200 and "ControlNet" not in r.json()["info"]
