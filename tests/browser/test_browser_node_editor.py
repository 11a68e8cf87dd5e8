"""ComfyUI's own frontend at /graph/: the default workflow runs and shows its image; the studio's settings open
there as a graph ("Open as workflow"); saved workflows land in the user folder."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.browser

READY_JS = "() => !!(window.app && window.app.graph && window.app.graph.nodes.length > 0 && window.app.canvas)"
# the image(s) a SaveImage node shows once its output arrived over the websocket
SAVE_IMAGES_JS = """() => {
  const node = window.app.graph.nodes.find(n => n.type === 'SaveImage');
  return node && node.imgs ? node.imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.src) : [];
}"""


def open_editor(browser: Any, page: Any = None) -> Any:
    page = page or browser.new_page()
    if page.url == "about:blank":
        page.goto(browser.base + "/graph/")
    page.wait_for_function(READY_JS, timeout=90_000)
    page.wait_for_function("() => !document.querySelector('.p-progressspinner, .comfy-progress-spinner')")
    return page


def widget(page: Any, node_type: str, name: str) -> Any:
    return page.evaluate("""([t, n]) => {
        const node = window.app.graph.nodes.find(x => x.type === t);
        return node ? node.widgets.find(w => w.name === n)?.value : undefined;
    }""", [node_type, name])


def widget_point(page: Any, node_type: str, name: str) -> tuple[float, float]:
    """Where a node's widget is drawn on the screen (the canvas is not DOM: compute it from the view)."""
    return tuple(page.evaluate("""([t, n]) => {
        const node = window.app.graph.nodes.find(x => x.type === t);
        const w = node.widgets.find(w => w.name === n);
        const ds = window.app.canvas.ds;
        const y = node.pos[1] + (w.last_y ?? w.y) + LiteGraph.NODE_WIDGET_HEIGHT / 2;
        const x = node.pos[0] + node.size[0] / 2;
        const rect = window.app.canvas.canvas.getBoundingClientRect();
        return [rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y + ds.offset[1]) * ds.scale];
    }""", [node_type, name]))


def choose(page: Any, node_type: str, name: str, value: str) -> None:
    """Click a combo widget and pick an entry from its menu."""
    page.mouse.click(*widget_point(page, node_type, name))
    page.locator(".litecontextmenu .litemenu-entry", has_text=value).click()


def type_number(page: Any, node_type: str, name: str, value: int) -> None:
    """Click a number widget's value and type a new one in the prompt that opens."""
    page.mouse.click(*widget_point(page, node_type, name))
    box = page.locator(".graphdialog input")
    box.fill(str(value))
    box.press("Enter")


def queue_with_keyboard(page: Any) -> None:
    """Ctrl+Enter on the canvas (ComfyUI's Queue Prompt shortcut), then '.' to fit every node in view."""
    box = page.locator("#graph-canvas").bounding_box()
    page.mouse.click(box["x"] + 60, box["y"] + box["height"] - 60)  # an empty canvas corner, gives it focus
    page.keyboard.press("Control+Enter")
    page.keyboard.press(".")


def wait_history(base: str, count: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = requests.get(base + "/history", timeout=10).json()
        done = {k: v for k, v in history.items() if v["status"]["completed"]}
        if len(done) >= count:
            return history
        time.sleep(0.2)
    raise TimeoutError("the queued workflow did not finish")


def test_default_workflow_runs_and_shows_its_image(browser: Any, studio: Any, shot: Any) -> None:
    page = open_editor(browser)
    shot(page, "editor-opened")
    before = len(requests.get(browser.base + "/history", timeout=10).json())
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.LoadDefaultWorkflow')")
    page.wait_for_function("() => window.app.graph.nodes.filter(n => n.type === 'CLIPTextEncode').length === 2")
    types = sorted(page.evaluate("() => window.app.graph.nodes.map(n => n.type)"))
    assert types == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                            "KSampler", "VAEDecode", "SaveImage"])
    assert widget(page, "KSampler", "steps") == 20
    shot(page, "default-workflow")
    # the default graph names v1-5-pruned-emaonly, which is not installed: pick the installed checkpoint
    choose(page, "CheckpointLoaderSimple", "ckpt_name", "tiny-sd15.safetensors")
    assert widget(page, "CheckpointLoaderSimple", "ckpt_name") == "tiny-sd15.safetensors"
    # 512×512 takes a minute on a 2-core CPU even with the tiny model: make the picture small
    type_number(page, "EmptyLatentImage", "width", 64)
    type_number(page, "EmptyLatentImage", "height", 64)
    assert (widget(page, "EmptyLatentImage", "width"), widget(page, "EmptyLatentImage", "height")) == (64, 64)
    shot(page, "model-and-size-chosen")
    queue_with_keyboard(page)
    history = wait_history(browser.base, before + 1)
    page.wait_for_function(f"({SAVE_IMAGES_JS})().length > 0", timeout=30_000)
    time.sleep(0.5)
    shot(page, "output-image")
    newest = max(history.values(), key=lambda h: h["prompt"][0])
    assert newest["status"]["status_str"] == "success"
    (image,) = newest["outputs"]["9"]["images"]
    assert image["filename"].startswith("ComfyUI_") and image["type"] == "output"
    assert (studio.output / image["subfolder"] / image["filename"]).is_file()
    srcs = page.evaluate(SAVE_IMAGES_JS)
    assert any(image["filename"] in s for s in srcs), srcs
    workflow = newest["prompt"][3]["extra_pnginfo"]["workflow"]  # the UI graph travels with the job
    assert len(workflow["nodes"]) == 7
    assert not browser.external, browser.external
    assert not browser.errors, browser.errors
    page.close()


def test_studio_settings_open_as_workflow(browser: Any, studio: Any, shot: Any) -> None:
    studio_page = browser.new_page()
    studio_page.goto(browser.base + "/")
    studio_page.wait_for_selector("body.ready")
    prompt = "a paper boat on a quiet pond"
    studio_page.fill("#prompt", prompt)
    studio_page.fill("#negative_prompt", "text, watermark")
    studio_page.check("input[name=mode][value=txt2img]")
    studio_page.fill("#steps", "7")
    studio_page.fill("#width", "64")
    studio_page.fill("#height", "64")
    studio_page.fill("#seed", "99")
    with browser.context.expect_page() as popup:
        studio_page.click("#open-workflow")
    page = open_editor(browser, popup.value)
    page.wait_for_function("() => (window.__darkroomLoaded || 0) >= 1", timeout=30_000)
    texts = page.evaluate("""() => window.app.graph.nodes.filter(n => n.type === 'CLIPTextEncode')
                                      .map(n => n.widgets[0].value)""")
    assert sorted(texts) == sorted([prompt, "text, watermark"])
    assert widget(page, "KSampler", "steps") == 7
    assert widget(page, "KSampler", "seed") == 99
    assert widget(page, "EmptyLatentImage", "width") == 64
    shot(page, "studio-graph")
    before = len(requests.get(browser.base + "/history", timeout=10).json())
    queue_with_keyboard(page)
    wait_history(browser.base, before + 1)
    page.wait_for_function(f"({SAVE_IMAGES_JS})().length > 0", timeout=30_000)
    time.sleep(0.5)
    shot(page, "studio-graph-output")

    # Save the workflow (Ctrl+S) and find it in the server's user folder
    page.keyboard.press("Control+s")
    dialog = page.locator(".p-dialog input")
    dialog.wait_for(timeout=10_000)
    dialog.fill("paper boat")
    page.keyboard.press("Enter")
    saved = studio.data / "user" / "default" / "workflows" / "paper boat.json"
    deadline = time.time() + 10
    while not saved.is_file() and time.time() < deadline:
        time.sleep(0.1)
    assert saved.is_file()
    graph = json.loads(saved.read_text(encoding="utf-8"))
    assert any(n.get("widgets_values", [None])[0] == prompt for n in graph["nodes"] if n["type"] == "CLIPTextEncode")
    listed = requests.get(browser.base + "/graph/api/userdata?dir=workflows&recurse=true&split=false&full_info=true",
                          timeout=10).json()
    assert [f["path"] for f in listed] == ["paper boat.json"]
    shot(page, "saved")
    assert not browser.external, browser.external
    page.close()
    studio_page.close()
