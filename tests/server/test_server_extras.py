"""A1111's extras API through the real `webuiapi` client: upscaling by a factor and to a size (with A1111's /8
target, repeated model passes and centre crop), blending a second upscaler, batches, the upscaler listing, hires fix
with a model, and the errors (unknown upscaler, face restoration) — the model work runs on the server's worker."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import requests
import torch
import webuiapi
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import LiveServer, photo
from darkroom.engine.resize import lanczos
from darkroom.engine.vae import pil_to_tensor, tensor_to_pil
from darkroom.server.config import Limits, ServerConfig
from darkroom.settings import load_settings
from darkroom.testing.tiny import shared_tiny_checkpoint
from darkroom.testing.upscalers import compact_state_dict, esrgan_state_dict, write_upscaler
from darkroom.upscale import load_upscale_model, upscale_image

LIMIT = 300_000  # pixels: small, so the size limit is testable


@pytest.fixture(scope="module")
def extras_server(tmp_path_factory):
    from darkroom.server.app import create_app

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("extras-models")
    ups = root / "upscale_models"
    ups.mkdir()
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    write_upscaler(ups / "4x-tiny.safetensors", esrgan_state_dict("old", scale=4, nf=8, nb=1, gc=4, seed=1))
    write_upscaler(ups / "tiny-two.safetensors", compact_state_dict(scale=2, nf=8, num_conv=2, seed=2))
    write_upscaler(ups / "RealESRGAN_x4plus.safetensors", esrgan_state_dict("new", scale=4, nf=8, nb=1, gc=4, seed=3))
    settings = load_settings(models_dir=root, data_dir=root / "unused-data", output_dir=root / "unused-output",
                             device="cpu", dtype="fp32")
    cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("extras-data"), port=0,
                       limits=Limits(max_image_pixels=LIMIT))
    server = LiveServer(create_app(settings, cfg)).start()
    server.models_root = root
    yield server
    server.stop()


def client(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def expected(server, file: str, img: Image.Image, passes: int, size: tuple[int, int]) -> np.ndarray:
    """What the graph computes: the model `passes` times, then Lanczos to `size` (ComfyUI's ImageScale)."""
    model = load_upscale_model(server.models_root / "upscale_models" / file)
    t = pil_to_tensor(img)  # (1, H, W, 3)
    for _ in range(passes):
        t = upscale_image(model, t)
    if (t.shape[2], t.shape[1]) != size:
        t = lanczos(t.movedim(-1, 1), *size).movedim(1, -1)
    return pixels(tensor_to_pil(t)[0])


def test_scale_by_with_a_model_runs_on_the_worker(extras_server) -> None:
    api = client(extras_server)
    img = photo(24, 40)
    r = api.extra_single_image(image=img, upscaler_1="4x-tiny", upscaling_resize=2)
    assert r.image.size == (80, 48)  # one ×4 pass, Lanczos down to int(40·2)//8·8 × int(24·2)//8·8
    assert np.array_equal(pixels(r.image), expected(extras_server, "4x-tiny.safetensors", img, 1, (80, 48)))
    assert r.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: 4x-tiny</p>"
    assert r.image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: 4x-tiny"
    plain = pixels(img.resize((80, 48), Image.LANCZOS))
    assert np.abs(pixels(r.image) - plain).mean() > 5  # the model did something a resize would not
    # a 1.3× request with a ×4 model still ends on A1111's multiple-of-8 target
    odd = api.extra_single_image(image=img, upscaler_1="4x-tiny", upscaling_resize=1.3)
    assert odd.image.size == (48, 24)
    history = extras_server.get("/history").json()
    graphs = [entry["prompt"][2] for entry in history.values()]
    assert any(n["class_type"] == "ImageUpscaleWithModel" and n["inputs"]["upscale_model"]
               for g in graphs for n in g.values())


def test_scale_to_size_plans_passes_from_the_model_scale_and_crops(extras_server) -> None:
    api = client(extras_server)
    img = photo(24, 40)
    # by = max(64/40, 64/24); target int(40·by)//8·8 × int(24·by)//8·8 = 104 × 64; the ×2 model (scale read from
    # its tensors: the name says nothing) runs twice (80×48, 160×96) before Lanczos to 104×64
    full = api.extra_single_image(image=img, resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64,
                                  upscaling_crop=False, upscaler_1="tiny-two")
    assert full.image.size == (104, 64)
    want = expected(extras_server, "tiny-two.safetensors", img, 2, (104, 64))
    assert np.array_equal(pixels(full.image), want)
    assert full.info == "<p>Postprocess upscale to: 64x64, Postprocess upscaler: tiny-two</p>"
    crop = api.extra_single_image(image=img, resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64,
                                  upscaling_crop=True, upscaler_1="tiny-two")
    assert crop.image.size == (64, 64)
    assert np.array_equal(pixels(crop.image), want[:, 20:84])  # centred: (64 − 104) / 2 = −20
    assert crop.info == ("<p>Postprocess upscale to: 64x64, Postprocess crop to: 64x64, "
                         "Postprocess upscaler: tiny-two</p>")


def test_second_upscaler_is_blended_and_builtins_resize(extras_server) -> None:
    api = client(extras_server)
    img = photo(24, 40)
    first = api.extra_single_image(image=img, upscaler_1="4x-tiny", upscaling_resize=2).image
    second = api.extra_single_image(image=img, upscaler_1="Lanczos", upscaling_resize=2).image
    assert np.abs(pixels(second) - pixels(img.resize((80, 48), Image.LANCZOS))).max() <= 1
    nearest = api.extra_single_image(image=img, upscaler_1="Nearest", upscaling_resize=2).image
    assert np.abs(pixels(nearest) - pixels(img.resize((80, 48), Image.NEAREST))).max() <= 1
    both = api.extra_single_image(image=img, upscaler_1="4x-tiny", upscaler_2="Lanczos",
                                  extras_upscaler_2_visibility=0.4, upscaling_resize=2)
    blended = Image.blend(first.convert("RGB"), second.convert("RGB"), 0.4)
    assert np.array_equal(pixels(both.image), pixels(blended))
    assert both.info == ("<p>Postprocess upscale by: 2.0, Postprocess upscaler: 4x-tiny, "
                         "Postprocess upscaler 2: Lanczos</p>")
    # no first upscaler: nothing happens, and A1111 does not even look the second one up
    unchanged = api.extra_single_image(image=img, upscaler_1="None", upscaler_2="Not-Installed",
                                       extras_upscaler_2_visibility=0.5)
    assert np.array_equal(pixels(unchanged.image), pixels(img)) and unchanged.info == "<p></p>"


def test_batch_images_and_text_chunks(extras_server) -> None:
    api = client(extras_server)
    a, b = photo(24, 40), photo(32, 32)
    r = api.extra_batch_images(images=[a, b], upscaler_1="R-ESRGAN 4x+", upscaling_resize=1.5)
    assert [im.size for im in r.images] == [(56, 32), (48, 48)]
    assert r.info == "<p>Postprocess upscale by: 1.5, Postprocess upscaler: R-ESRGAN 4x+</p>"
    assert np.array_equal(pixels(r.images[1]),
                          expected(extras_server, "RealESRGAN_x4plus.safetensors", b, 1, (48, 48)))
    # the input's text chunks (A1111 infotext) stay in the upscaled PNG, beside the postprocessing text
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3, Seed: 7")
    buf = io.BytesIO()
    a.save(buf, format="PNG", pnginfo=info)
    resp = requests.post(extras_server.url + "/sdapi/v1/extra-single-image", timeout=60,
                         json={"image": base64.b64encode(buf.getvalue()).decode(), "upscaler_1": "Lanczos"})
    assert resp.status_code == 200, resp.text
    out = Image.open(io.BytesIO(base64.b64decode(resp.json()["image"])))
    assert out.size == (80, 48) and out.info["parameters"] == "a cat\nSteps: 3, Seed: 7"
    assert out.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


def test_errors_name_the_problem(extras_server) -> None:
    base = extras_server.url + "/sdapi/v1"
    good = base64.b64encode(_png(photo(24, 40))).decode()
    cases = [
        ({"upscaler_1": "4x-Nope"}, "4x-Nope"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "Nope-2x"}, "upscaler_2"),
        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, "GFPGAN"),
        ({"upscaler_1": "Lanczos", "codeformer_visibility": 1}, "CodeFormer"),
        ({"upscaler_1": "Lanczos", "resize_mode": 2}, "resize_mode"),
        ({"upscaler_1": "4x-tiny", "resize_mode": 1, "upscaling_resize_w": 1000, "upscaling_resize_h": 1000},
         "limit"),
    ]
    for body, needle in cases:
        resp = requests.post(base + "/extra-single-image", json={"image": good, **body}, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert needle in resp.json()["detail"], (body, resp.text)
    assert "available: None, Lanczos, Nearest, 4x-tiny" in requests.post(
        base + "/extra-single-image", json={"image": good, "upscaler_1": "4x-Nope"}, timeout=30).json()["detail"]
    empty = requests.post(base + "/extra-single-image", json={"image": "", "upscaler_1": "Lanczos"}, timeout=30)
    assert empty.status_code == 400 and "image" in empty.json()["detail"]
    none = requests.post(base + "/extra-batch-images", json={"imageList": [], "upscaler_1": "Lanczos"}, timeout=30)
    assert none.status_code == 400 and "imageList" in none.json()["detail"]


def test_upscaler_listing_and_hires_fix_with_a_model(extras_server) -> None:
    api = client(extras_server)
    rows = api.get_upscalers()
    assert [r["name"] for r in rows] == ["None", "Lanczos", "Nearest", "4x-tiny", "R-ESRGAN 4x+", "tiny-two"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["tiny-two"]["scale"] == 2 and by_name["4x-tiny"]["scale"] == 4  # read from the tensors
    assert by_name["4x-tiny"]["model_name"] == "4x-tiny.safetensors"
    assert by_name["4x-tiny"]["model_path"].endswith("upscale_models/4x-tiny.safetensors")
    assert by_name["None"]["model_path"] is None and by_name["Lanczos"]["scale"] == 4
    assert [m["name"] for m in api.get_realesrgan_models()] == ["R-ESRGAN 4x+"]
    hires = api.txt2img(prompt="a cat", seed=1, width=64, height=64, enable_hr=True, hr_scale=1.5,
                        hr_upscaler="4x-tiny", hr_second_pass_steps=1, denoising_strength=0.5)
    assert hires.image.size == (96, 96)
    assert "Hires upscaler: 4x-tiny" in hires.info["infotexts"][0]
    resp = requests.post(extras_server.url + "/sdapi/v1/txt2img", timeout=30,
                         json={"enable_hr": True, "hr_upscaler": "8x-Missing", "width": 64, "height": 64})
    assert resp.status_code == 400 and "8x-Missing" in resp.json()["detail"]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
