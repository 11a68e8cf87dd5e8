"""The studio's control panel, reference images, SD upscale and upscale action, without a browser: how the page's
units become A1111 ControlNet units, what the workflow and the image get, /studio/upscale's new files, and 400s
naming the page's field."""

from __future__ import annotations

import base64
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).parents[1] / "control"))
sys.path.insert(0, str(Path(__file__).parents[1] / "ipadapter"))
from cn_studio import shared_control_studio  # noqa: E402
from cn_tiny import square_picture  # noqa: E402
from ipa_studio import PLUS, reference_picture, shared_ip_studio  # noqa: E402

from darkroom.server.routes_studio import (  # noqa: E402
    StudioError, StudioParams, a1111_request, control_args)

SOURCE_TEXT = ("a red circle\nNegative prompt: blur\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 48x40, "
               "Model: tiny-sd15")


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def make_client(tmp_path_factory: pytest.TempPathFactory):
    """TestClients over the shared tiny models folder with ControlNets (worker on when asked)."""
    from fastapi.testclient import TestClient

    from darkroom.server.app import create_app
    from darkroom.server.config import ServerConfig

    with contextlib.ExitStack() as stack:
        def make(worker: bool = False, studio: Any = None) -> Any:
            studio = studio or shared_control_studio()
            cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("studio-control"), worker=worker)
            app = create_app(studio.engine.settings, cfg, engine=studio.engine)
            return stack.enter_context(TestClient(app, base_url="http://127.0.0.1:8188"))

        yield make


def cn_title(client: Any, stem: str) -> str:
    (title,) = [t for t in client.get("/controlnet/model_list").json()["model_list"] if t.startswith(stem + " [")]
    return title


# -- translation ------------------------------------------------------------------------------------------------------

def test_units_and_references_become_alwayson_controlnet_args() -> None:
    square = data_url(square_picture())
    p = StudioParams(prompt="x", controlnet=[
        {"model": "control_sd15_tiny [abcd1234]", "module": "canny", "image": square, "weight": 0.6,
         "guidance_start": 0.1, "guidance_end": 0.8, "control_mode": "ControlNet is more important",
         "threshold_a": 50, "threshold_b": 150},
        {"enabled": False, "model": "other", "image": square},
        {"model": "control_sd15_tiny", "image": square.split(",", 1)[1], "resize_mode": "Just Resize"},
    ], references=[
        {"model": "ip-adapter_sd15 [00000000]", "image": square, "weight": 0.7, "guidance_start": 0.2,
         "guidance_end": 0.9},
        {"enabled": False, "model": "ip-adapter_sd15", "image": square},
    ])
    req = a1111_request(p)
    args = req.alwayson_scripts["controlnet"]["args"]
    assert len(args) == 3  # disabled units and references are left out
    first, third, ref = args
    raw = square.split(",", 1)[1]
    assert first == {"enabled": True, "model": "control_sd15_tiny [abcd1234]", "module": "canny", "image": raw,
                     "weight": 0.6, "guidance_start": 0.1, "guidance_end": 0.8,
                     "control_mode": "ControlNet is more important", "resize_mode": "Crop and Resize",
                     "processor_res": -1, "threshold_a": 50.0, "threshold_b": 150.0, "pixel_perfect": False}
    assert third["image"] == raw and third["resize_mode"] == "Just Resize" and third["module"] == "none"
    assert ref == {"module": "ip-adapter-auto", "model": "ip-adapter_sd15 [00000000]", "image": raw, "weight": 0.7,
                   "guidance_start": 0.2, "guidance_end": 0.9}
    assert control_args(p)[1] == ["controlnet.0", "controlnet.2", "references.0"]
    # no units: no alwayson entry at all
    assert a1111_request(StudioParams(prompt="x")).alwayson_scripts == {}


def test_sd_upscale_is_the_a1111_script_with_the_upscaler_index() -> None:
    init = data_url(square_picture())
    p = StudioParams(mode="img2img", init_image=init, denoise=0.3, width=64, height=64,
                     sd_upscale={"upscaler": "Nearest", "scale": 2, "overlap": 16})
    req = a1111_request(p, ["None", "Lanczos", "Nearest"])
    assert req.script_name == "SD upscale"
    assert req.script_args == ["", 16, 2, 2.0]
    assert req.denoising_strength == 0.3 and req.width == 64
    with pytest.raises(StudioError) as e:
        a1111_request(p, ["None", "Lanczos"])
    assert e.value.field == "sd_upscale.upscaler" and "'Nearest'" in e.value.message
    with pytest.raises(StudioError) as e:
        a1111_request(StudioParams(sd_upscale={"upscaler": "Lanczos"}), ["Lanczos"])
    assert e.value.field == "sd_upscale"


def test_a_unit_reaches_the_workflow(make_client) -> None:
    c = make_client()
    title = cn_title(c, "control_sd15_tiny")
    r = c.post("/studio/workflow", json={
        "prompt": "a square", "width": 64, "height": 64, "steps": 2, "seed": 3,
        "controlnet": [{"model": title, "module": "canny", "image": data_url(square_picture()), "weight": 0.55,
                        "guidance_start": 0.25, "guidance_end": 0.75}]})
    assert r.status_code == 200, r.text
    wf = r.json()["workflow"]
    (pre,) = [n for n in wf.values() if n["class_type"] == "ControlNetPreprocessor"]
    assert pre["inputs"]["preprocessor"] == "canny"
    (apply,) = [n for n in wf.values() if n["class_type"].startswith("ControlNetApply")]
    assert apply["inputs"]["strength"] == pytest.approx(0.55)
    assert apply["inputs"]["start_percent"] == pytest.approx(0.25)
    assert apply["inputs"]["end_percent"] == pytest.approx(0.75)
    (loader,) = [n for n in wf.values() if "ControlNetLoader" in n["class_type"]]
    assert loader["inputs"]["control_net_name"] == "control_sd15_tiny.safetensors"


@pytest.mark.parametrize("unit, field, words", [
    ({"weight": 12}, "controlnet.0.weight", "less than or equal to 10"),
    ({"control_mode": "Loud"}, "controlnet.0.control_mode", "Balanced"),
    ({"colour": "red"}, "controlnet.0.colour", "Extra inputs"),
    ({"model": "no-such-controlnet"}, "controlnet.0.model", "ControlNet unit 1 (model)"),
    ({"module": "no_such_preprocessor"}, "controlnet.0.module", "unknown preprocessor"),
    ({"guidance_start": 0.9, "guidance_end": 0.2}, "controlnet.0.guidance_start", "ControlNet unit 1"),
    ({"image": None}, "controlnet.0.image", "upload or draw its control image"),
    ({"model": ""}, "controlnet.0.model", "pick a model"),
])
def test_bad_units_answer_400_naming_the_field(make_client, unit: dict, field: str, words: str) -> None:
    c = make_client()
    good = {"model": cn_title(c, "control_sd15_tiny"), "module": "canny", "image": data_url(square_picture())}
    r = c.post("/studio/generate", json={"prompt": "x", "width": 64, "height": 64,
                                         "controlnet": [{**good, **unit}]})
    assert r.status_code == 400, r.text
    body = r.json()
    named = body.get("field") or body["errors"][0]["field"]
    text = body["error"] if body.get("field") else body["detail"]
    assert named == field, body
    assert words in text, body


def test_a_reference_without_picture_or_model_is_named(make_client) -> None:
    c = make_client()
    square = data_url(square_picture())
    for ref, field in (({"model": "ip-adapter_sd15"}, "references.0.image"), ({"image": square}, "references.0.model")):
        r = c.post("/studio/generate", json={"prompt": "x", "references": [ref]})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    # a disabled one is left out entirely
    r = c.post("/studio/workflow", json={"prompt": "x", "width": 64, "height": 64,
                                         "references": [{"enabled": False}]})
    assert r.status_code == 200, r.text


def generated(c: Any, body: dict) -> tuple[np.ndarray, Any]:
    """Queue POST /studio/generate, wait for its one image: (pixels, metadata)."""
    from darkroom.metadata.reading import read_image_metadata

    r = c.post("/studio/generate", json=body)
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    deadline = time.time() + 120
    while not (entry := c.get(f"/history/{prompt_id}").json().get(prompt_id)) and time.time() < deadline:
        time.sleep(0.1)
    assert entry and entry["status"]["status_str"] == "success", entry
    (ref,) = entry["outputs"]["9"]["images"]
    path = c.app.state.darkroom.folders.output / ref["subfolder"] / ref["filename"]
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    return pixels, read_image_metadata(path)


def test_generate_with_a_unit_writes_its_infotext(make_client) -> None:
    c = make_client(worker=True)
    title = cn_title(c, "control_sd15_tiny")
    unit = {"model": title, "module": "canny", "image": data_url(square_picture()), "weight": 0.8}
    _, meta = generated(c, {"prompt": "a square", "width": 64, "height": 64, "steps": 2, "seed": 9,
                            "controlnet": [unit]})
    assert meta.infotext["ControlNet 0"].startswith("Module: canny, Model: " + title)
    assert "Weight: 0.8" in meta.infotext["ControlNet 0"]


def test_a_reference_image_changes_the_picture(make_client) -> None:
    c = make_client(worker=True, studio=shared_ip_studio())
    plus = cn_title(c, PLUS.removesuffix(".safetensors"))
    base = {"prompt": "a cat", "width": 64, "height": 64, "steps": 3, "seed": 13, "cfg": 5}
    plain, _ = generated(c, base)
    ref = {"model": plus, "image": data_url(reference_picture()), "weight": 1.0, "guidance_start": 0.0,
           "guidance_end": 1.0}
    with_ref, meta = generated(c, {**base, "references": [ref]})
    assert np.abs(with_ref - plain).mean() > 1.0
    assert meta.infotext["ControlNet 0"].startswith(f"Module: ip-adapter-auto, Model: {plus}, Weight: 1")
    off, _ = generated(c, {**base, "references": [{**ref, "enabled": False}]})
    assert np.array_equal(off, plain)


def test_sd_upscale_through_the_studio(make_client) -> None:
    c = make_client(worker=True)
    y, x = np.mgrid[0:64, 0:64]
    picture = Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))
    body = {"prompt": "a gradient", "mode": "img2img", "init_image": data_url(picture), "width": 64, "height": 64,
            "steps": 2, "seed": 4, "denoise": 0.2, "sd_upscale": {"upscaler": "Lanczos", "scale": 2, "overlap": 16}}
    pixels, meta = generated(c, body)
    assert pixels.shape == (128, 128, 3)
    assert meta.infotext["SD upscale overlap"] == "16" and meta.infotext["SD upscale upscaler"] == "Lanczos"
    assert meta.infotext["Denoising strength"] == "0.2" and "Size: 64x64," in meta.parameters  # the tile size
    r = c.post("/studio/generate", json={**body, "sd_upscale": {"upscaler": "Lanczos", "overlap": 40}})
    assert r.status_code == 400 and r.json()["field"] == "sd_upscale" and "overlap" in r.json()["error"], r.text


# -- upscale --------------------------------------------------------------------------------------------------------

def _source(c: Any) -> tuple[Path, np.ndarray]:
    """A 48×40 darkroom-style PNG in output/txt2img-images with A1111 parameters and a ComfyUI prompt chunk."""
    out = c.app.state.darkroom.folders.output / "txt2img-images"
    out.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:40, 0:48]
    arr = np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)
    info = PngInfo()
    info.add_text("parameters", SOURCE_TEXT)
    info.add_text("prompt", '{"1": {"class_type": "EmptyLatentImage", "inputs": {}}}')
    path = out / "00001-5.png"
    Image.fromarray(arr).save(path, pnginfo=info)
    return path, arr


def test_upscale_writes_a_new_image_with_extras_infotext(make_client) -> None:
    from darkroom.metadata.reading import read_image_metadata

    c = make_client(worker=True)
    path, arr = _source(c)
    before = path.read_bytes()
    r = c.post("/studio/upscale", json={"filename": path.name, "subfolder": "txt2img-images",
                                        "upscaler": "Lanczos", "scale": 2})
    assert r.status_code == 200, r.text
    ref = r.json()
    assert ref["subfolder"] == "extras-images" and ref["filename"] == "00001.png"
    assert (ref["width"], ref["height"]) == (96, 80)
    new = c.app.state.darkroom.folders.output / ref["subfolder"] / ref["filename"]
    with Image.open(new) as im:
        assert im.size == (96, 80)
        small = np.asarray(im.convert("RGB").resize((48, 40), Image.BOX)).astype(int)
    assert np.abs(small - arr.astype(int)).mean() < 4  # the same picture, larger
    assert path.read_bytes() == before  # the source is untouched
    meta = read_image_metadata(new)
    assert meta.parameters == SOURCE_TEXT + ", Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert meta.infotext["Seed"] == "5" and meta.infotext["Postprocess upscaler"] == "Lanczos"
    assert meta.text["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert meta.prompt == {"1": {"class_type": "EmptyLatentImage", "inputs": {}}}

    # again: a second file, never over the first; the gallery lists it with its prompt
    r2 = c.post("/studio/upscale", json={"filename": path.name, "subfolder": "txt2img-images",
                                         "upscaler": "Nearest", "scale": 1.5})
    assert r2.status_code == 200, r2.text
    assert r2.json()["filename"] == "00002.png" and (r2.json()["width"], r2.json()["height"]) == (72, 56)
    items = c.get("/studio/gallery?q=red circle").json()["items"]
    assert {(i["subfolder"], i["filename"]) for i in items} >= {("extras-images", "00001.png"),
                                                                ("extras-images", "00002.png")}


@pytest.mark.parametrize("body, status, field", [
    ({"upscaler": "4x-NoSuchModel"}, 400, "upscaler"),
    ({"upscaler": "None"}, 400, "upscaler"),
    ({"scale": 20}, 400, "scale"),
    ({"filename": "missing.png"}, 404, "filename"),
    ({"filename": "../../secret.png"}, 400, "filename"),
    ({"size": 3}, 400, "size"),
])
def test_upscale_bad_input_names_the_field(make_client, body: dict, status: int, field: str) -> None:
    c = make_client()  # no worker: nothing may be queued for a bad request
    path, _ = _source(c)
    r = c.post("/studio/upscale", json={"filename": path.name, "subfolder": "txt2img-images", "upscaler": "Lanczos",
                                        **body})
    assert r.status_code == status, r.text
    got = r.json()
    assert (got.get("field") or got["errors"][0]["field"]) == field, got
    assert c.app.state.darkroom.queue.remaining() == 0
