"""Reference images in requests: A1111 ControlNet-extension units with IP-Adapter modules change the image (one and
two units, each its own image and weight), weight 0 and an empty guidance window leave it exactly as without a unit,
the embedded workflow re-runs to the same pixels, the typed engine request gives the A1111 pixels and infotext,
weight_type reaches the attention, and missing files are 400s that say what to install where."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from ipa_studio import ENCODER, PLAIN, PLUS, REFERENCE, reference_picture, shared_ip_studio  # noqa: E402

from darkroom.control.units import ControlNetUnit  # noqa: E402
from darkroom.engine import GenerationParams, HiresParams, RequestError  # noqa: E402
from darkroom.nodes import run_workflow  # noqa: E402
from darkroom.testing.studio import CHECKPOINT, start_live_server  # noqa: E402

BASE = {"prompt": "a cat", "negative_prompt": "blurry", "seed": 13, "width": 64, "height": 64, "steps": 3,
        "cfg_scale": 5, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def studio():
    return shared_ip_studio()


@pytest.fixture(scope="module")
def server(studio, tmp_path_factory):
    live = start_live_server(studio.engine, tmp_path_factory.mktemp("ip-server"))
    yield live
    live.stop()


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def title(server, stem: str) -> str:
    (found,) = [t for t in server.get("/controlnet/model_list").json()["model_list"] if t.startswith(stem + " [")]
    return found


def txt2img(server, *units: dict, **extra) -> tuple[np.ndarray, str]:
    body = {**BASE, **extra, "alwayson_scripts": {"controlnet": {"args": list(units)}}}
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).convert("RGB"), dtype=int)
    return pixels, json.loads(data["info"])["infotexts"][0]


def rerun(engine, workflow: dict, input_dir: Path, out: Path) -> np.ndarray:
    """Run an embedded workflow with the node engine; its one saved image."""
    res = run_workflow(workflow, engine=engine, input_dir=input_dir, output_dir=out, temp_dir=out / "temp")
    assert res.status == "success", res.error
    (png,) = list(out.rglob("*.png"))
    return np.asarray(Image.open(png).convert("RGB"), dtype=int)


def test_lists_show_ip_adapters_and_their_modules(server):
    models = server.get("/controlnet/model_list").json()["model_list"]
    plus, plain = title(server, "ip-adapter-plus_sd15"), title(server, "ip-adapter_sd15")  # ipadapter/, controlnet/
    modules = server.get("/controlnet/module_list").json()
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith",
            "ip-adapter-auto"} <= set(modules["module_list"]) and modules["module_list"][0] == "none"
    assert modules["module_detail"]["ip-adapter-auto"]["sliders"] == []
    aliases = server.get("/controlnet/module_list", params={"alias_names": "true"}).json()["module_list"]
    assert {"ip-adapter_clip_h", "ip-adapter_clip_g", "ip-adapter-auto"} <= set(aliases)
    ip_type = server.get("/controlnet/control_types").json()["control_types"]["IP-Adapter"]
    assert ip_type["model_list"] == ["None", *sorted([plain, plus], key=str.lower)] and plus in models
    assert ip_type["default_option"] == "ip-adapter-auto"
    # the node editor can load the adapter A1111 keeps in models/controlnet
    info = server.get("/object_info/IPAdapterModelLoader").json()["IPAdapterModelLoader"]
    assert sorted(info["input"]["required"]["ipadapter_file"][0]) == sorted([PLAIN, PLUS])
    r = server.post("/controlnet/detect", json={"controlnet_module": "ip-adapter-auto",
                                                 "controlnet_input_images": [b64(reference_picture())]})
    assert r.status_code == 422 and "not a control map" in r.json()["detail"]


def test_a1111_reference_units(server, studio, tmp_path):
    plus, plain = title(server, "ip-adapter-plus_sd15"), title(server, "ip-adapter_sd15")
    ref, other = b64(reference_picture()), b64(reference_picture(seed=5, size=(40, 56)))
    one = {"module": "ip-adapter-auto", "model": plus, "image": ref, "weight": 1.0, "guidance_start": 0.0,
           "guidance_end": 1.0}
    second = {"module": "ip-adapter_clip_h", "model": plain, "image": other, "weight": 0.8}
    plain_px, plain_text = txt2img(server)
    one_px, one_text = txt2img(server, one)
    assert np.abs(one_px - plain_px).max() > 3  # the reference image changes the picture
    assert f'ControlNet 0: "Module: ip-adapter-auto, Model: {plus}, Weight: 1, Resize Mode: Crop and Resize, ' \
           f'Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0, Guidance End: 1, ' \
           f'Pixel Perfect: False, Control Mode: Balanced"' in one_text
    two_px, two_text = txt2img(server, one, second, save_images=True)
    assert np.abs(two_px - one_px).max() > 3 and np.abs(two_px - plain_px).max() > 3
    assert f'ControlNet 1: "Module: ip-adapter_clip_sd15, Model: {plain}, Weight: 0.8,' in two_text
    # the saved image's embedded workflow re-runs to the same pixels with the node engine
    (entry,) = server.get("/history", params={"max_items": 1}).json().values()
    saved = entry["outputs"]["9"]["images"][0]
    png = server.get("/view", params={"filename": saved["filename"], "subfolder": saved["subfolder"],
                                      "type": "output"})
    workflow = json.loads(Image.open(io.BytesIO(png.content)).text["prompt"])
    kinds = [n["class_type"] for n in workflow.values()]
    assert kinds.count("IPAdapterAdvanced") == 2 and kinds.count("CLIPVisionLoader") == 1
    assert {n["inputs"]["clip_name"] for n in workflow.values() if n["class_type"] == "CLIPVisionLoader"} == {ENCODER}
    np.testing.assert_array_equal(rerun(studio.engine, workflow, server.state.folders.input, tmp_path), two_px)
    # weight 0, and a guidance window holding no step (start = end between the steps' sigmas): exactly no unit
    assert np.array_equal(txt2img(server, {**one, "weight": 0})[0], plain_px)
    assert np.array_equal(txt2img(server, {**one, "guidance_start": 0.3, "guidance_end": 0.3})[0], plain_px)
    # the typed engine request with the same unit: the A1111 pixels and infotext
    path = tmp_path / "ref.png"
    reference_picture().save(path)
    res = studio.engine.generate(GenerationParams(
        prompt="a cat", negative_prompt="blurry", seed=13, width=64, height=64, steps=3, cfg=5.0, model=CHECKPOINT,
        controlnets=[ControlNetUnit(model=plus, module="ip-adapter-auto", image=path)]))
    np.testing.assert_array_equal(np.asarray(res.images[0], dtype=int), one_px)
    assert res.infotexts[0] == one_text


def test_engine_request_with_hires_and_weight_types_reproduces(studio, tmp_path):
    ref = studio.input_dir / REFERENCE
    common = dict(prompt="a cat", negative_prompt="blurry", seed=21, width=64, height=64, steps=3, cfg=5.0)
    units = [ControlNetUnit(model=PLUS, module="ip-adapter_clip_sd15", image=ref, hr_option="Low res only"),
             ControlNetUnit(model="ip-adapter_sd15", module="ip-adapter-auto", image=ref, weight=0.7,
                            weight_type="ease in", guidance_end=0.8)]
    result = studio.engine.generate(GenerationParams(**common, hires=HiresParams(scale=1.5, steps=2, denoise=0.6),
                                                     controlnets=units))
    wf = result.workflows[0]
    hires_sampler = next(n for n in wf.values() if n["_meta"]["title"] == "KSampler (hires)")
    assert wf[wf["3"]["inputs"]["model"][0]]["class_type"] == "IPAdapterAdvanced"
    assert wf[hires_sampler["inputs"]["model"][0]]["inputs"]["model"] == ["4", 0]  # only the "Both" unit
    assert "Hr Option: Low res only" in result.infotexts[0] and "Weight Type: ease in" in result.infotexts[0]
    got = rerun(studio.engine, wf, studio.input_dir, tmp_path)
    np.testing.assert_array_equal(np.asarray(result.images[0], dtype=int), got)
    # weight_type reaches the attention: the tiny SD1.5 UNet has no composition blocks (transformers 4, 5)
    plain = studio.engine.generate(GenerationParams(**common)).images[0]
    composition = studio.engine.generate(GenerationParams(**common, controlnets=[
        ControlNetUnit(model=PLUS, module="ip-adapter-auto", image=ref, weight_type="composition")])).images[0]
    assert np.array_equal(np.asarray(composition), np.asarray(plain))


def test_engine_names_a_missing_encoder(studio):
    unit = ControlNetUnit(model=PLUS, module="ip-adapter-auto", image=studio.input_dir / REFERENCE,
                          clip_vision="CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")
    with pytest.raises(RequestError, match="no clip_vision model named 'CLIP-ViT-bigG"):
        studio.engine.generate(GenerationParams(prompt="x", width=64, height=64, steps=1, seed=1,
                                                controlnets=[unit]))


@pytest.mark.parametrize("unit, field, words", [
    (dict(module="ip-adapter_clip_sd15", model="ip-adapter_nope"), "model", ["no IP-Adapter named 'ip-adapter_nope'",
                                                                            PLUS, PLAIN]),
    (dict(module="ip-adapter_clip_sdxl", model=PLUS), "clip_vision",
     ["CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "clip_vision", "h94/IP-Adapter"]),
    (dict(module="ip-adapter_face_id_plus", model=PLUS), "module", ["insightface"]),
    (dict(module="ip-adapter-auto", model=PLUS, weight_type="style transfer precise"), "weight_type",
     ["not supported"]),
    (dict(module="canny", model=PLAIN), "module", ["is an IP-Adapter"]),
])
def test_bad_reference_units_are_400s_naming_the_problem(server, studio, unit, field, words):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1, "alwayson_scripts": {"controlnet": {"args": [
        {"image": b64(reference_picture()), **unit}]}}})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert f"args[0].{field}" in detail and all(w in detail for w in words), detail
    if field == "clip_vision":
        assert str(studio.root / "clip_vision") in detail
