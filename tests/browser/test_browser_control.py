"""The studio's control panel in a real browser: a ControlNet unit with a live preprocessor preview that generates,
the pose editor's dragged joints reaching the control image, the reference panel without IP-Adapters, and the
upscale action making a new, larger gallery image."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from test_browser_studio import fetch_png, open_studio

pytestmark = pytest.mark.browser
sys.path.insert(0, str(Path(__file__).parents[1] / "control"))


@pytest.fixture(scope="module")
def ip_adapter(studio: Any) -> str:
    """A tiny "plus" IP-Adapter and its CLIP vision encoder in the browser studio's models folder; its title."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "ipadapter"))
    from ipa_tiny import ipadapter_state_dict, tiny_clip_vision, write_clip_vision
    from safetensors.torch import save_file

    from darkroom.testing.tiny import tiny_components

    unet = tiny_components("sd15", seed=0)["unet"]
    write_clip_vision(studio.models / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                      tiny_clip_vision(seed=3))
    (studio.models / "ipadapter").mkdir(exist_ok=True)
    save_file(ipadapter_state_dict(unet, "plus", seed=9), str(studio.models / "ipadapter" / "ip-adapter-plus_sd15.safetensors"))
    titles = requests.get(studio.server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    return next(t for t in titles if t.startswith("ip-adapter-plus_sd15 ["))


@pytest.fixture(scope="module")
def control_models(studio: Any) -> dict[str, str]:
    """A tiny ControlNet for the browser studio's tiny checkpoint, installed as a canny and an openpose file."""
    from cn_tiny import tiny_controlnet, write_controlnet

    from darkroom.testing.tiny import tiny_components

    unet = tiny_components("sd15", seed=0)["unet"]
    cn = tiny_controlnet(unet, seed=5)
    folder = studio.models / "controlnet"
    for name in ("control_tiny_canny.safetensors", "control_tiny_openpose.safetensors"):
        write_controlnet(folder / name, cn, "ldm", base_unet=unet)
    titles = requests.get(studio.server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    return {stem: next(t for t in titles if t.startswith(stem + " [")) for stem in
            ("control_tiny_canny", "control_tiny_openpose")}


def ring_picture(size: int = 64) -> Image.Image:
    """A bright disc with a hole on a dark ground: canny finds its two circles."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    arr = np.where((r < size * 0.38) & (r > size * 0.15), 230, 20).astype(np.uint8)
    return Image.fromarray(np.stack([arr, arr // 2 + 60, arr], -1))


def decode_data_url(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")).astype(np.int16)


def studio_with(browser: Any, prompt: str, steps: int, width: int, height: int) -> Any:
    """The studio page with a prompt, steps and a size typed in (a size change reaches the control panel)."""
    page = open_studio(browser)
    page.fill("#prompt", prompt)
    page.fill("#steps", str(steps))
    for k, v in (("width", width), ("height", height)):
        page.fill(f"#{k}", str(v))
        page.dispatch_event(f"#{k}", "change")
    return page


def open_panel(page: Any, panel: str) -> None:
    page.eval_on_selector(f"#{panel}", "el => { el.open = true; el.scrollIntoView(); }")


def test_unit_preview_and_generate(browser: Any, studio: Any, control_models: dict, shot: Any, tmp_path: Path) -> None:
    source = tmp_path / "ring.png"
    ring_picture().save(source)
    page = studio_with(browser, "a ring", 3, 64, 64)
    open_panel(page, "control-panel")
    page.wait_for_function("document.querySelectorAll('#cn-hint[hidden]').length === 1")  # models are installed
    page.click("#cn-add")
    unit = page.locator("#cn-units .cn-unit").first
    assert unit.locator(".cn-title").inner_text() == "Unit 1"
    unit.locator(".cn-file").set_input_files(str(source))
    page.wait_for_function("document.querySelector('.cn-unit .cn-preview').src.startsWith('data:')")
    # with "none" the preview is the picture itself
    assert np.array_equal(decode_data_url(unit.locator(".cn-preview").get_attribute("src")),
                          np.asarray(ring_picture()).astype(np.int16))
    unit.locator(".cn-module").select_option("canny")
    assert unit.locator(".cn-sliders input").count() == 3  # resolution, low and high thresholds
    page.wait_for_function("""() => { const u = document.querySelector('.cn-unit');
        return u.querySelector('.cn-preview').src !== u.querySelector('.cn-input').src && !u.querySelector('.cn-status').textContent; }""")
    unit.locator(".cn-images").scroll_into_view_if_needed()
    shot(page, "canny-preview")
    edges = decode_data_url(unit.locator(".cn-preview").get_attribute("src"))
    picture = np.asarray(ring_picture().resize(edges.shape[1::-1])).astype(np.int16)
    assert not np.array_equal(edges, picture)
    values = np.unique(edges)
    assert set(values.tolist()) <= {0, 255} and 0.002 < (edges > 0).mean() < 0.2  # thin white edges on black
    size = edges.shape[0]
    yy, xx = np.nonzero(edges.max(axis=-1))
    r = np.hypot(xx + 0.5 - size / 2, yy + 0.5 - size / 2) / size
    assert (np.minimum(np.abs(r - 0.15), np.abs(r - 0.38)) < 0.02).all()  # only on the ring's two circles
    assert (np.abs(r - 0.15) < 0.02).any() and (np.abs(r - 0.38) < 0.02).any()

    # a higher low threshold is sent to /controlnet/detect
    with page.expect_request("**/controlnet/detect") as detect:
        unit.locator(".cn-threshold_a").fill("150")
        unit.locator(".cn-threshold_a").dispatch_event("input")
    assert detect.value.post_data_json["controlnet_threshold_a"] == 150
    assert detect.value.post_data_json["controlnet_module"] == "canny"

    # the reference panel says what to install when no IP-Adapter is there
    open_panel(page, "reference-panel")
    titles = requests.get(browser.base + "/controlnet/model_list", timeout=30).json()["model_list"]
    if not any("ip-adapter" in t.lower() for t in titles):
        hint = page.inner_text("#ref-hint")
        assert "models/ipadapter" in hint and "models/clip_vision" in hint
        assert page.is_disabled("#ref-add")
    assert all("ip-adapter" not in m for m in unit.locator(".cn-module option").all_inner_texts())

    unit.locator(".cn-model").select_option(control_models["control_tiny_canny"])
    unit.locator(".cn-weight").fill("0.7")
    with page.expect_request("**/studio/generate") as sent:
        page.click("#generate")
    body = sent.value.post_data_json
    (sent_unit,) = body["controlnet"]
    assert sent_unit["module"] == "canny" and sent_unit["model"] == control_models["control_tiny_canny"]
    assert sent_unit["weight"] == 0.7 and sent_unit["threshold_a"] == 150 and sent_unit["enabled"] is True
    assert np.array_equal(decode_data_url(sent_unit["image"]), np.asarray(ring_picture()).astype(np.int16))
    assert body["references"] == []
    page.wait_for_selector("#output img.result:not(.preview)", timeout=120_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
    shot(page, "generated-with-unit")
    src = page.get_attribute("#output img.result", "src")
    assert fetch_png(browser.base, src).shape == (64, 64, 3)
    name = requests.utils.unquote(src.split("filename=")[1].split("&")[0])
    from darkroom.metadata.reading import read_image_metadata

    meta = read_image_metadata(next(studio.output.rglob(name)))
    assert meta.infotext["ControlNet 0"].startswith(f"Module: canny, Model: {control_models['control_tiny_canny']}")
    assert "Weight: 0.7" in meta.infotext["ControlNet 0"] and "Threshold A: 150" in meta.infotext["ControlNet 0"]

    # drawing instead: a stroke on the pad becomes the input, and its edges the preview
    unit.locator("button[data-source=draw]").click()
    pad = unit.locator(".cn-pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    page.wait_for_function("!document.querySelector('.cn-unit .cn-status').textContent")
    blank = unit.locator(".cn-preview").get_attribute("src")
    assert decode_data_url(blank).max() == 0  # an empty pad has no edges
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.wait_for_function("(old) => document.querySelector('.cn-unit .cn-preview').src !== old", arg=blank)
    drawn = decode_data_url(unit.locator(".cn-input").get_attribute("src"))
    rows = np.nonzero(drawn.min(axis=(1, 2)) < 128)[0]  # rows the black stroke crosses
    assert abs(rows.mean() / drawn.shape[0] - 0.5) < 0.05
    page.wait_for_function("!document.querySelector('.cn-unit .cn-status').textContent")
    stroke_edges = decode_data_url(unit.locator(".cn-preview").get_attribute("src")).max(axis=-1)
    ys, xs = np.nonzero(stroke_edges)
    assert len(ys) and abs(ys.mean() / stroke_edges.shape[0] - 0.5) < 0.05
    assert 0.15 < xs.min() / stroke_edges.shape[1] < 0.25 and 0.75 < xs.max() / stroke_edges.shape[1] < 0.85
    shot(page, "drawn-stroke")

    # removing the unit: nothing is sent any more
    unit.locator(".cn-remove").click()
    assert page.locator("#cn-units .cn-unit").count() == 0
    assert not browser.errors, browser.errors
    assert not browser.external, browser.external
    page.close()


def joint_centre(page: Any, index: int) -> tuple[float, float]:
    box = page.locator(f".cn-unit .pose-svg circle[data-joint='{index}']").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_pose_editor_drag(browser: Any, studio: Any, control_models: dict, shot: Any) -> None:
    page = studio_with(browser, "", 20, 256, 320)
    open_panel(page, "control-panel")
    page.click("#cn-add")
    unit = page.locator("#cn-units .cn-unit").first
    with page.expect_request("**/controlnet/render_openpose_json") as first:
        unit.locator("button[data-source=pose]").click()
    pose = first.value.post_data_json[0]
    assert (pose["canvas_width"], pose["canvas_height"]) == (256, 320)
    standing = np.array(pose["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert standing[:, 2].tolist() == [1] * 18
    assert standing[0, 1] < standing[1, 1] < standing[8, 1] < standing[9, 1] < standing[10, 1]  # head over feet
    assert standing[2, 0] < standing[1, 0] < standing[5, 0]  # right shoulder on the picture's left
    assert unit.locator(".cn-module").is_disabled()
    assert unit.locator(".cn-model").input_value() == control_models["control_tiny_openpose"]
    page.wait_for_function("document.querySelector('.cn-unit .cn-preview').src.startsWith('data:')")
    before = decode_data_url(unit.locator(".cn-preview").get_attribute("src"))
    assert before.shape == (320, 256, 3)
    shot(page, "standing-pose")

    # drag the right wrist (keypoint 4) up and out to the left
    page.locator(".cn-unit .pose-svg").scroll_into_view_if_needed()
    svg = page.locator(".cn-unit .pose-svg").bounding_box()
    x0, y0 = joint_centre(page, 4)
    tx, ty = svg["x"] + svg["width"] * 0.12, svg["y"] + svg["height"] * 0.2
    old_src = unit.locator(".cn-preview").get_attribute("src")  # read before the drag: the answer may come at once
    with page.expect_request("**/controlnet/render_openpose_json") as moved:
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(tx, ty, steps=6)
        page.mouse.up()
    kp = np.array(moved.value.post_data_json[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert abs(kp[4, 0] - 0.12 * 256) < 4 and abs(kp[4, 1] - 0.2 * 320) < 4
    assert np.array_equal(np.delete(kp, 4, axis=0), np.delete(standing, 4, axis=0))  # only the wrist moved
    page.wait_for_function("(old) => document.querySelector('.cn-unit .cn-preview').src !== old", arg=old_src)
    after = decode_data_url(unit.locator(".cn-preview").get_attribute("src"))
    shot(page, "wrist-raised")
    wrist = np.array([170, 255, 0])  # OpenPose's colour of keypoint 4

    def wrist_at(img: np.ndarray, x: float, y: float) -> bool:
        x, y = int(round(x)), int(round(y))
        return bool((np.abs(img[y - 1:y + 2, x - 1:x + 2] - wrist).max(axis=-1) <= 2).any())

    assert wrist_at(after, kp[4, 0], kp[4, 1]) and not wrist_at(before, kp[4, 0], kp[4, 1])
    assert wrist_at(before, standing[4, 0], standing[4, 1]) and not wrist_at(after, standing[4, 0], standing[4, 1])

    # the drawn pose is the unit's control image, sent with no preprocessor (answered here without generating)
    sent: list[dict] = []

    def answer(route: Any) -> None:
        sent.append(route.request.post_data_json)
        route.fulfill(status=400, content_type="application/json",
                      body=json.dumps({"error": "stopped by the test", "field": None}))

    page.route("**/studio/generate", answer)
    page.fill("#prompt", "a dancer")
    page.click("#generate")
    page.wait_for_function("document.getElementById('toast').textContent.includes('stopped by the test')")
    (unit_sent,) = sent[0]["controlnet"]
    assert unit_sent["module"] == "none" and unit_sent["model"] == control_models["control_tiny_openpose"]
    assert np.array_equal(decode_data_url(unit_sent["image"]), after)
    page.unroute("**/studio/generate")

    # reset: the standing figure again
    with page.expect_request("**/controlnet/render_openpose_json") as reset:
        unit.locator(".cn-pose-reset").click()
    again = np.array(reset.value.post_data_json[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert np.allclose(again, standing)
    assert not browser.errors, browser.errors
    page.close()


def test_upscale_a_gallery_image(browser: Any, studio: Any, shot: Any) -> None:
    folder = studio.output / "txt2img-images"
    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", "a tiny harbour at dawn\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 77, "
                                "Size: 48x40, Model: tiny-sd15")
    y, x = np.mgrid[0:40, 0:48]
    Image.fromarray(np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)).save(
        folder / "09001-77.png", pnginfo=info)
    scripts = requests.get(browser.base + "/sdapi/v1/scripts", timeout=30).json()
    page = open_studio(browser)
    thumb = page.locator("#gallery-grid .thumb[data-filename='09001-77.png']")
    thumb.click()
    page.wait_for_function("document.getElementById('detail-prompt').textContent === 'a tiny harbour at dawn'")
    page.click("#detail-upscale")
    methods = page.locator("#upscale-method option").all_inner_texts()
    assert "Lanczos" in methods and "None" not in methods
    offers_sd = "SD upscale (tiled img2img)" in methods
    assert offers_sd == any(s.lower() == "sd upscale" for s in scripts.get("img2img", []))
    page.select_option("#upscale-method", "Lanczos")
    page.fill("#upscale-scale", "2")
    shot(page, "upscale-form")
    before = {p.name for p in studio.output.rglob("*.png")}
    with page.expect_response("**/studio/upscale") as answered:
        page.click("#upscale-run")
    ref = answered.value.json()
    assert answered.value.status == 200, ref
    assert (ref["width"], ref["height"]) == (96, 80) and ref["subfolder"] == "extras-images"
    new = page.locator(f"#gallery-grid .thumb[data-filename='{ref['filename']}'][data-subfolder='extras-images']")
    new.wait_for()
    assert page.locator("#gallery-grid .thumb").first.get_attribute("data-filename") == ref["filename"]  # newest
    page.wait_for_function(f"document.getElementById('detail-title').textContent === {ref['filename']!r}")
    page.wait_for_function("document.getElementById('detail-source').textContent.includes('96 × 80')")
    fields = dict(zip(page.locator("#detail-fields th").all_inner_texts(),
                      page.locator("#detail-fields td").all_inner_texts()))
    assert fields["Postprocess upscaler"] == "Lanczos" and fields["Seed"] == "77"
    shot(page, "upscaled-in-gallery")
    after = {p.name for p in studio.output.rglob("*.png")}
    assert after - before == {ref["filename"]}
    with Image.open(studio.output / "extras-images" / ref["filename"]) as im:
        assert im.size == (96, 80)
    assert (folder / "09001-77.png").is_file()

    # a bad scale is refused by name, next to its field
    page.fill("#upscale-scale", "20")
    page.click("#upscale-run")
    page.wait_for_selector("#upscale-scale.invalid")
    assert "scale" in page.inner_text("#upscale-status")

    if offers_sd:  # SD upscale of the image shown (the 96 × 80 one): redrawn in tiles with image to image
        page.select_option("#upscale-method", "sd-upscale")
        assert page.is_visible("#upscale-denoise")
        page.select_option("#upscale-sd-upscaler", "Lanczos")
        page.fill("#upscale-denoise", "0.25")
        page.fill("#upscale-scale", "2")
        with page.expect_request("**/studio/generate") as sent:
            page.click("#upscale-run")
        body = sent.value.post_data_json
        assert body["mode"] == "img2img" and body["prompt"] == "a tiny harbour at dawn" and body["seed"] == 77
        assert body["sd_upscale"] == {"upscaler": "Lanczos", "scale": 2, "overlap": 32}  # at most half the tile
        assert (body["width"], body["height"]) == (64, 64) and body["denoise"] == 0.25
        page.wait_for_selector("#output img.result:not(.preview)", timeout=120_000)
        page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
        shot(page, "sd-upscaled")
        src = page.get_attribute("#output img.result", "src")
        assert fetch_png(browser.base, src).shape == (160, 192, 3)
    assert not browser.errors, browser.errors
    assert not browser.external, browser.external
    page.close()


def test_reference_image_generates(browser: Any, studio: Any, ip_adapter: str, shot: Any, tmp_path: Path) -> None:
    source = tmp_path / "reference.png"
    ring_picture(48).save(source)
    page = studio_with(browser, "a cat", 3, 64, 64)
    open_panel(page, "reference-panel")
    page.wait_for_selector("#ref-add:not([disabled])")
    assert page.is_hidden("#ref-hint")
    page.click("#ref-add")
    ref = page.locator("#ref-items .ref-item").first
    assert ref.locator(".ref-model option").all_inner_texts() == [ip_adapter]  # IP-Adapters only
    ref.locator(".ref-file").set_input_files(str(source))
    page.wait_for_function("document.querySelector('.ref-item .ref-thumb').src.startsWith('data:')")
    ref.locator(".ref-weight").fill("0.9")
    ref.locator(".ref-end").fill("0.8")
    shot(page, "reference-added")
    with page.expect_request("**/studio/generate") as sent:
        page.click("#generate")
    (sent_ref,) = sent.value.post_data_json["references"]
    assert sent_ref["model"] == ip_adapter and sent_ref["weight"] == 0.9 and sent_ref["guidance_end"] == 0.8
    assert np.array_equal(decode_data_url(sent_ref["image"]), np.asarray(ring_picture(48)).astype(np.int16))
    page.wait_for_selector("#output img.result:not(.preview)", timeout=120_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
    shot(page, "generated-with-reference")
    src = page.get_attribute("#output img.result", "src")
    name = requests.utils.unquote(src.split("filename=")[1].split("&")[0])
    from darkroom.metadata.reading import read_image_metadata

    meta = read_image_metadata(next(studio.output.rglob(name)))
    assert meta.infotext["ControlNet 0"].startswith(f"Module: ip-adapter-auto, Model: {ip_adapter}, Weight: 0.9")
    assert not browser.errors, browser.errors
    assert not browser.external, browser.external
    page.close()
