"""The studio page in a real browser: generate with live progress, the gallery, inpainting, dropped A1111 PNGs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

pytestmark = pytest.mark.browser

# Records what the page shows while it works: progress texts, whether a step preview appeared.
WATCH_JS = """() => {
  window.__seen = {progress: [], previews: 0, fill: []};
  const text = document.getElementById('progress-text');
  new MutationObserver(() => {
    window.__seen.progress.push(text.textContent);
    window.__seen.fill.push(document.getElementById('bar-fill').style.width);
  }).observe(text, {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => {
    const p = document.getElementById('live-preview');
    if (p && p.src) window.__seen.previews += 1;
  }).observe(document.getElementById('output'), {childList: true, subtree: true, attributes: true});
}"""


def open_studio(browser: Any, width: int = 1440, height: int = 900) -> Any:
    page = browser.new_page(width, height)
    page.goto(browser.base + "/")
    page.evaluate("localStorage.removeItem('darkroom.studio.form')")
    page.reload()
    page.wait_for_selector("body.ready")
    page.wait_for_selector("#connection.ok")
    return page


def set_range(page: Any, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                          value)


def fetch_png(base: str, src: str) -> np.ndarray:
    url = src if src.startswith("http") else base + src
    r = requests.get(url, timeout=30)
    r.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(np.int16)


def drag_file(page: Any, selector: str, name: str, data: bytes, events: tuple[str, ...]) -> None:
    """Fire drag events carrying a file at an element, as a user dragging it from the desktop would."""
    page.evaluate("""([sel, name, b64, events]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/png'}));
        const target = document.querySelector(sel);
        for (const type of events) {
          target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
        }
    }""", [selector, name, base64.b64encode(data).decode("ascii"), list(events)])


def test_generate_progress_gallery_and_parameters(browser: Any, studio: Any, shot: Any) -> None:
    page = open_studio(browser)
    shot(page, "empty-studio")
    prompt = "a lighthouse on a cliff at dusk, oil painting"
    page.fill("#prompt", prompt)
    page.fill("#negative_prompt", "blurry")
    page.fill("#steps", "24")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#seed", "4242")
    page.select_option("#sampler", "euler_ancestral")
    page.select_option("#scheduler", "karras")
    page.evaluate(WATCH_JS)
    shot(page, "prompt-typed")
    page.click("#generate")
    page.wait_for_function("window.__seen.progress.some(t => /Step \\d+ \\/ 24/.test(t))", timeout=60_000)
    shot(page, "progress")
    page.wait_for_selector("#output img.result:not(.preview)", timeout=60_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
    seen = page.evaluate("window.__seen")
    steps = [t for t in seen["progress"] if "Step" in t]
    assert any(t.endswith("Step 24 / 24") for t in steps), steps
    assert seen["previews"] >= 1, "no step preview was shown"
    assert seen["fill"][-1] == "100%"
    assert "seed 4242" in page.inner_text("#progress-text")
    result_src = page.get_attribute("#output img.result", "src")
    assert "filename=" in result_src
    shot(page, "result")

    thumb = page.locator(f"#gallery-grid .thumb[title='{prompt}']")
    thumb.wait_for()
    assert page.locator("#gallery-grid .thumb").first.get_attribute("title") == prompt  # newest first
    thumb.click()
    page.wait_for_function(f"document.getElementById('detail-prompt').textContent === {prompt!r}")
    fields = dict(zip(page.locator("#detail-fields th").all_inner_texts(),
                      page.locator("#detail-fields td").all_inner_texts()))
    assert fields["Seed"] == "4242"
    assert fields["Steps"] == "24"
    assert fields["Sampler"] == "Euler a"
    assert fields["Schedule type"] == "Karras"
    assert fields["Size"] == "64x64"
    assert page.inner_text("#detail-negative") == "blurry"
    shot(page, "image-parameters")

    # "Use these settings" brings everything back after the form changed
    page.click("#detail-close")
    page.fill("#prompt", "something else")
    page.fill("#steps", "3")
    thumb.click()
    page.wait_for_function(f"document.getElementById('detail-prompt').textContent === {prompt!r}")
    page.click("#detail-use")
    assert page.input_value("#prompt") == prompt
    assert page.input_value("#steps") == "24"
    assert page.input_value("#seed") == "4242"
    assert page.input_value("#sampler") == "euler_ancestral"
    assert page.input_value("#scheduler") == "karras"

    # download the file as it is on disk, then send the image to the inpaint canvas
    thumb.click()
    page.wait_for_function(f"document.getElementById('detail-prompt').textContent === {prompt!r}")
    with page.expect_download() as download:
        page.click("#detail-download")
    name = page.locator("#gallery-grid .thumb").first.get_attribute("data-filename")
    assert download.value.suggested_filename == name
    assert Path(download.value.path()).read_bytes() == next(studio.output.rglob(name)).read_bytes()
    page.click("#detail-inpaint")
    page.wait_for_selector("#canvas-wrap.has-image")
    assert page.is_checked("input[name=mode][value=inpaint]")
    assert page.inner_text("#canvas-size") == "64 × 64"
    shot(page, "sent-to-inpaint")
    page.check("input[name=mode][value=txt2img]")

    # search by prompt text
    page.fill("#gallery-search", "lighthouse")
    page.wait_for_function("document.getElementById('gallery-count').textContent === '1 found'")
    page.fill("#gallery-search", "zebra")
    page.wait_for_function("document.getElementById('gallery-count').textContent === '0 found'")
    assert page.locator("#gallery-grid .thumb").count() == 0
    shot(page, "search-no-match")
    page.fill("#gallery-search", "")
    thumb.wait_for()

    # delete asks first; "Keep it" keeps the file, "Delete" removes it from disk and the gallery
    files = sorted(p.name for p in studio.output.rglob("*.png"))
    name = page.locator("#gallery-grid .thumb").first.get_attribute("data-filename")
    assert name in files
    thumb.click()
    page.click("#detail-delete")
    page.wait_for_selector("#confirm[open]")
    shot(page, "delete-confirmation")
    page.click("#confirm-no")
    assert (next(studio.output.rglob(name))).is_file()
    page.click("#detail-delete")
    page.click("#confirm-yes")
    page.wait_for_function(f"!document.querySelector('#gallery-grid .thumb[data-filename=\"{name}\"]')")
    assert not list(studio.output.rglob(name))
    shot(page, "deleted")
    assert not browser.errors, browser.errors
    assert not browser.external, browser.external
    page.close()


def test_inpaint_changes_only_the_masked_area(browser: Any, studio: Any, shot: Any, tmp_path: Any) -> None:
    y, x = np.mgrid[0:64, 0:64]
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[..., 0] = 40 + 3 * x
    picture[..., 1] = 200 - 2 * y
    picture[..., 2] = np.where((x - 20) ** 2 + (y - 32) ** 2 < 120, 230, 60)
    source = tmp_path / "source.png"
    Image.fromarray(picture).save(source)

    page = open_studio(browser)
    page.fill("#prompt", "a glowing orange moon")
    page.fill("#steps", "8")
    page.check("input[name=mode][value=inpaint]")
    page.wait_for_selector("#canvas-view:not([hidden])")
    page.set_input_files("#load-image", str(source))
    page.wait_for_selector("#canvas-wrap.has-image")
    assert page.input_value("#width") == "64" and page.input_value("#height") == "64"
    set_range(page, "#brush-size", 10)
    page.fill("#mask_blur", "0")
    page.dispatch_event("#mask_blur", "input")
    box = page.locator("#mask-canvas").bounding_box()
    sx, sy = box["width"] / 64, box["height"] / 64
    for row in range(10, 56, 6):  # strokes over the right part of the picture
        page.mouse.move(box["x"] + 44 * sx, box["y"] + row * sy)
        page.mouse.down()
        page.mouse.move(box["x"] + 56 * sx, box["y"] + row * sy, steps=4)
        page.mouse.up()
    alpha = np.array(page.evaluate("""() => {
        const c = document.getElementById('mask-canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 3));
    }""")).reshape(64, 64)
    masked = alpha > 0
    assert 0.1 < masked.mean() < 0.5 and not masked[:, :30].any()
    shot(page, "mask-painted")

    page.click("#undo")  # undo the last stroke, then paint it again
    assert (np.array(page.evaluate("""() => {
        const c = document.getElementById('mask-canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 3));
    }""")).reshape(64, 64) > 0).sum() < masked.sum()
    page.mouse.move(box["x"] + 44 * sx, box["y"] + 52 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 56 * sx, box["y"] + 52 * sy, steps=4)
    page.mouse.up()

    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # the keyboard way to generate
    page.wait_for_selector("#output img.result:not(.preview)", timeout=60_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
    shot(page, "inpainted")
    result = fetch_png(browser.base, page.get_attribute("#output img.result", "src"))
    assert result.shape == (64, 64, 3)
    diff = np.abs(result - picture.astype(np.int16)).max(axis=-1)
    # grow the painted area by a latent cell so only clearly untouched pixels count as "the rest"
    near = np.zeros_like(masked)
    for dy in range(-8, 9):
        for dx in range(-8, 9):
            near |= np.roll(np.roll(masked, dy, 0), dx, 1)
    assert diff[~near].max() <= 2, "pixels outside the mask changed"
    assert diff[masked].mean() > 20, "the masked area did not change"
    detail = requests.get(browser.base + "/studio/gallery?q=glowing+orange+moon", timeout=30).json()
    assert detail["total"] == 1 and detail["items"][0]["subfolder"] == "img2img-images"
    assert not browser.errors, browser.errors
    page.close()


def a1111_png() -> bytes:
    info = PngInfo()
    info.add_text("parameters", "a cozy cabin in the snowy woods, warm light, <lora:tiny-lora:0.8>\n"
                                "Negative prompt: blurry, lowres\n"
                                "Steps: 23, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, "
                                "Size: 512x768, Model hash: 0123456789, Model: tiny-sd15, Clip skip: 2, "
                                "Version: v1.10.1")
    buf = io.BytesIO()
    Image.new("RGB", (32, 48), (90, 120, 160)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_drop_a1111_png_loads_its_parameters(browser: Any, studio: Any, shot: Any) -> None:
    page = open_studio(browser)
    data = a1111_png()
    drag_file(page, "#output", "cabin.png", data, ("dragenter", "dragover"))
    page.wait_for_selector("body.dragging")
    shot(page, "dragging-png")
    drag_file(page, "#output", "cabin.png", data, ("drop",))
    page.wait_for_selector("#toast.show.ok")
    assert page.input_value("#prompt") == "a cozy cabin in the snowy woods, warm light, <lora:tiny-lora:0.8>"
    assert page.input_value("#negative_prompt") == "blurry, lowres"
    assert page.input_value("#steps") == "23"
    assert page.input_value("#sampler") == "dpmpp_2m"
    assert page.input_value("#scheduler") == "karras"
    assert page.input_value("#cfg") == "6.5"
    assert page.input_value("#seed") == "1234567"
    assert (page.input_value("#width"), page.input_value("#height")) == ("512", "768")
    assert page.input_value("#clip_skip") == "2"
    assert page.input_value("#model") == "tiny-sd15.safetensors"
    assert "a1111" in page.inner_text("#toast")
    shot(page, "parameters-loaded")

    # a PNG without parameters says so and offers to use it as the source picture
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (10, 200, 10)).save(buf, format="PNG")
    drag_file(page, "#output", "plain.png", buf.getvalue(), ("dragenter", "dragover", "drop"))
    page.wait_for_function("document.getElementById('toast').textContent.includes('no generation parameters')")
    page.click("#toast button")
    page.wait_for_selector("#canvas-wrap.has-image")
    assert page.is_checked("input[name=mode][value=img2img]")
    assert (page.input_value("#width"), page.input_value("#height")) == ("96", "80")
    shot(page, "plain-png-on-canvas")

    # LoRA picker inserts a tag at the cursor
    page.fill("#prompt", "a red barn")
    page.select_option("#lora-pick", "tiny-lora.safetensors")
    page.click("#lora-insert")
    assert page.input_value("#prompt") == "a red barn, <lora:tiny-lora:1>"
    assert not browser.errors, browser.errors
    assert not browser.external, browser.external
    page.close()


def test_laptop_width_layout(browser: Any, studio: Any, shot: Any) -> None:
    """At a laptop's 1280×720 the controls, the stage and the gallery are all on screen, nothing overlaps."""
    page = open_studio(browser, 1280, 720)
    boxes = {sel: page.locator(sel).bounding_box() for sel in (".controls", ".stage", ".gallery", "#generate")}
    shot(page, "laptop-1280")
    assert boxes["#generate"]["y"] + boxes["#generate"]["height"] <= 720
    assert boxes[".controls"]["x"] + boxes[".controls"]["width"] <= boxes[".stage"]["x"]
    assert boxes[".stage"]["width"] >= 500
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.close()


def test_outpaint_extends_the_canvas(browser: Any, studio: Any, shot: Any, tmp_path: Any) -> None:
    y, x = np.mgrid[0:64, 0:64]
    picture = np.stack([60 + 2 * x, 80 + 2 * y, np.full_like(x, 150)], -1).astype(np.uint8)
    source = tmp_path / "outpaint.png"
    Image.fromarray(picture).save(source)
    page = open_studio(browser)
    page.fill("#prompt", "a wide meadow")
    page.fill("#steps", "6")
    page.check("input[name=mode][value=img2img]")
    page.set_input_files("#load-image", str(source))
    page.wait_for_selector("#canvas-wrap.has-image")
    page.select_option("#extend-by", "64")
    page.click("#extend-right")
    assert page.inner_text("#canvas-size") == "128 × 64"
    assert (page.input_value("#width"), page.input_value("#height")) == ("128", "64")
    assert page.is_checked("input[name=mode][value=inpaint]")
    assert page.is_checked("input[name=masked_content][value=fill]")
    assert page.input_value("#denoise") == "1"
    shot(page, "extended-right")
    page.click("#generate")
    page.wait_for_selector("#output img.result:not(.preview)", timeout=60_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Done')")
    shot(page, "outpainted")
    result = fetch_png(browser.base, page.get_attribute("#output img.result", "src"))
    assert result.shape == (64, 128, 3)
    # a 16 px overlap and mask blur 4 reach back to about x = 36: the columns left of that stay the picture
    assert np.abs(result[:, :28] - picture[:, :28].astype(np.int16)).max() <= 2
    assert np.abs(result[:, 72:] - picture[:, 63:64].astype(np.int16)).mean() > 10
    assert not browser.errors, browser.errors
    page.close()


def test_cancel_stops_a_running_job(browser: Any, studio: Any, shot: Any) -> None:
    page = open_studio(browser)
    before = requests.get(browser.base + "/studio/gallery", timeout=10).json()["total"]
    page.fill("#prompt", "a very long job")
    page.fill("#steps", "1000")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.evaluate(WATCH_JS)
    page.click("#generate")
    page.wait_for_function("window.__seen.progress.some(t => t.startsWith('Step'))", timeout=60_000)
    assert page.inner_text("#queue") == "queue 1"
    assert page.is_enabled("#cancel")
    shot(page, "running")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('progress-text').textContent === 'Cancelled'", timeout=30_000)
    page.wait_for_function("document.getElementById('queue').textContent === 'queue 0'")
    assert not page.is_enabled("#cancel")
    shot(page, "cancelled")
    steps = [t for t in page.evaluate("window.__seen.progress") if t.startswith("Step")]
    assert steps and not any(t.startswith("Step 1000") for t in steps)
    assert requests.get(browser.base + "/studio/gallery", timeout=10).json()["total"] == before
    assert not browser.errors, browser.errors
    page.close()
