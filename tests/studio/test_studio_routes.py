"""The studio's JSON routes and the pages' files: options, PNG info, workflows, validation, gallery, delete."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 64), **texts: str) -> bytes:
    info = PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


A1111_TEXT = ("a cozy cabin, <lora:tiny-lora:0.8>\nNegative prompt: blurry\nSteps: 23, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, Model hash: 0123456789, "
              "Model: tiny-sd15, Version: v1.10.1")


def test_pages_and_editor_files(make_client) -> None:
    c = make_client()
    page = c.get("/")
    assert page.status_code == 200 and "darkroom studio" in page.text
    assert page.headers["cache-control"] == "no-cache"
    assert c.get("/web/js/main.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/web/../server/app.py").status_code == 404
    assert c.get("/web/%2e%2e/server/app.py").status_code == 404
    editor = c.get("/graph/")
    assert editor.status_code == 200 and "<title>ComfyUI</title>" in editor.text
    assert c.get("/graph", follow_redirects=False).headers["location"] == "/graph/"
    assert c.get("/graph/scripts/app.js").status_code == 200
    assert c.get("/graph/api/extensions").json() == ["/extensions/darkroom/studio-bridge.js"]
    assert c.get("/api/extensions").json() == []  # ComfyUI's own list (plain API) is unchanged
    bridge = c.get("/graph/extensions/darkroom/studio-bridge.js")
    assert bridge.status_code == 200 and "registerExtension" in bridge.text
    assert c.get("/graph/templates/index.json").json() == []
    assert c.get("/graph/api/no-such-route").status_code == 404
    assert c.get("/assets/images/favicon_progress_16x16/frame_0.png").status_code == 200


def test_editor_api_under_graph_prefix(make_client) -> None:
    """The editor at /graph/ calls /graph/api/...: the ComfyUI routes answer there too."""
    c = make_client()
    info = c.get("/graph/api/object_info/KSampler").json()
    assert "KSampler" in info
    assert c.get("/graph/api/system_stats").json()["system"]["required_frontend_version"] == "1.27.10"
    assert c.get("/graph/api/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert c.get("/graph/api/experiment/models/checkpoints").json()[0]["name"] == "tiny-sd15.safetensors"
    assert [m["name"] for m in c.get("/api/experiment/models").json()][0] == "checkpoints"
    assert c.get("/graph/api/experiment/models/nope").status_code == 404
    assert c.get("/graph/api/i18n").json() == {}
    assert c.get("/graph/api/workflow_templates").json() == {}
    assert "checkpoints" in c.get("/graph/internal/folder_paths").json()
    assert c.get("/internal/files/bogus").status_code == 400
    raw = c.get("/graph/internal/logs/raw").json()
    assert set(raw) == {"entries", "size"}
    with c.websocket_connect("ws://127.0.0.1:8188/graph/ws?clientId=abc") as ws:
        first = ws.receive_json()
        assert first["type"] == "status" and first["data"]["sid"] == "abc"


def test_options_list_models_with_family(make_client) -> None:
    c = make_client()
    o = c.get("/studio/options").json()
    assert o["checkpoints"] == [{"name": "tiny-sd15.safetensors", "label": "SD1.x", "family": "sd1",
                                 "builtin": False, "native_size": None}]
    assert o["default_model"] == "tiny-sd15.safetensors"
    assert "euler" in o["samplers"] and "karras" in o["schedulers"]
    assert [512, 512] in o["size_presets"]["SD1.5"] and [1024, 1024] in o["size_presets"]["SDXL"]
    h = c.get("/studio/model-hash?name=tiny-sd15.safetensors").json()["hash"]
    assert len(h) == 10 and int(h, 16) >= 0
    assert c.get("/studio/model-hash?name=nope").status_code == 404
    assert c.get(f"/studio/model-hash?name={__file__}").status_code == 404  # only installed models, no paths


def test_png_info_reads_a1111_comfy_and_plain_images(make_client) -> None:
    c = make_client()
    d = c.post("/studio/png-info", content=png(parameters=A1111_TEXT)).json()
    assert d["source"] == "a1111"
    s = d["settings"]
    assert s["prompt"] == "a cozy cabin, <lora:tiny-lora:0.8>" and s["negative_prompt"] == "blurry"
    assert (s["steps"], s["sampler"], s["scheduler"], s["cfg"], s["seed"]) == (23, "dpmpp_2m", "karras", 6.5, 1234567)
    assert (s["width"], s["height"]) == (512, 768)
    assert s["model"] == "tiny-sd15.safetensors"  # A1111's "Model: tiny-sd15" is found in the registry
    assert ["Model hash", "0123456789"] in d["fields"]

    prompt = json.loads((Path(__file__).parents[1] / "workflows" / "lora.json").read_text())
    d = c.post("/studio/png-info", content=png(prompt=json.dumps(prompt))).json()
    assert d["source"] == "comfyui" and d["settings"] is not None
    assert "<lora:" in d["settings"]["prompt"]  # LoRA nodes come back as prompt tags
    assert d["workflow"] == prompt

    d = c.post("/studio/png-info", content=png()).json()
    assert d["settings"] is None and d["source"] is None
    bad = c.post("/studio/png-info", content=b"not an image")
    assert bad.status_code == 400 and bad.json()["error"]
    b64 = "data:image/png;base64," + __import__("base64").b64encode(png(parameters=A1111_TEXT)).decode()
    assert c.post("/studio/png-info", content=b64.encode()).json()["settings"]["seed"] == 1234567


def test_generate_checks_requests_by_field(make_client) -> None:
    c = make_client()

    def err(body: dict) -> tuple[int, str | None, str]:
        r = c.post("/studio/generate", json={"prompt": "x", **body})
        j = r.json()
        return r.status_code, j.get("field"), j.get("error") or ""

    assert err({"model": "nope.safetensors"})[:2] == (400, "model")
    assert err({"model": __file__})[:2] == (400, "model")
    assert c.post("/studio/generate", json={"prompt": "x", "model": "tiny-sd15", "steps": 0}).json()["field"] == \
        "steps"  # the stem names the installed file
    assert err({"mode": "img2img"})[:2] == (400, "init_image")
    img = "data:image/png;base64," + __import__("base64").b64encode(png()).decode()
    assert err({"mode": "inpaint", "init_image": img})[:2] == (400, "mask")
    assert err({"width": 100})[:2] == (400, "width")
    assert err({"steps": 0})[:2] == (400, "steps")
    assert err({"sampler": "nonsense"})[:2] == (400, "sampler")
    status, _, message = err({"prompt": "x <lora:missing:1>"})
    assert status == 400 and "missing" in message
    r = c.post("/studio/generate", json={"prompt": "x", "unknown_field": 1})
    assert r.status_code == 400  # typos are refused, not ignored
    assert c.get("/queue").json()["queue_pending"] == []


def test_workflow_is_the_graph_the_studio_would_run(make_client) -> None:
    c = make_client()
    r = c.post("/studio/workflow", json={"prompt": "a paper boat", "negative_prompt": "text", "steps": 7,
                                         "width": 64, "height": 64, "seed": 99, "sampler": "dpmpp_2m",
                                         "scheduler": "karras"}).json()
    wf = r["workflow"]
    assert r["seed"] == 99
    assert wf["3"]["class_type"] == "KSampler"
    assert (wf["3"]["inputs"]["steps"], wf["3"]["inputs"]["seed"], wf["3"]["inputs"]["sampler_name"],
            wf["3"]["inputs"]["scheduler"]) == (7, 99, "dpmpp_2m", "karras")
    assert wf["4"]["inputs"]["ckpt_name"] == "tiny-sd15.safetensors"
    assert wf["6"]["inputs"]["text"] == "a paper boat" and wf["7"]["inputs"]["text"] == "text"
    assert wf["9"]["class_type"] == "SaveImage"
    # the editor can queue it as is
    assert c.post("/prompt", json={"prompt": wf}).status_code == 200


def test_gallery_lists_output_newest_first_searches_and_deletes(make_client) -> None:
    c = make_client()
    st = c.app.state.darkroom
    out = st.folders.output
    (out / "txt2img-images").mkdir(parents=True)
    files = {
        "txt2img-images/00001-1.png": png(parameters=A1111_TEXT),
        "ComfyUI_00001_.png": png((0, 0, 200), prompt=json.dumps(json.loads(
            (Path(__file__).parents[1] / "workflows" / "txt2img.json").read_text()))),
        "plain.png": png((0, 200, 0)),
    }
    now = time.time()
    for i, (name, data) in enumerate(files.items()):
        (out / name).write_bytes(data)
        os.utime(out / name, (now - 100 + i, now - 100 + i))
    (out / ".hidden.png").write_bytes(png())
    (out / "notes.txt").write_text("x")
    g = c.get("/studio/gallery").json()
    assert g["total"] == 3
    assert [i["filename"] for i in g["items"]] == ["plain.png", "ComfyUI_00001_.png", "00001-1.png"]
    first = g["items"][2]
    assert first["subfolder"] == "txt2img-images" and first["prompt"].startswith("a cozy cabin")
    assert first["seed"] == 1234567 and first["source"] == "a1111"
    assert c.get(first["url"]).content == files["txt2img-images/00001-1.png"]
    thumb = c.get(first["thumb"])
    assert thumb.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    assert [i["filename"] for i in c.get("/studio/gallery?q=COZY cabin").json()["items"]] == ["00001-1.png"]
    assert c.get("/studio/gallery?q=glass bottle").json()["items"][0]["filename"] == "ComfyUI_00001_.png"
    assert c.get("/studio/gallery?q=zebra").json()["total"] == 0
    assert [i["filename"] for i in c.get("/studio/gallery?limit=1&offset=1").json()["items"]] == \
        ["ComfyUI_00001_.png"]

    d = c.get("/studio/image?filename=00001-1.png&subfolder=txt2img-images").json()
    assert d["settings"]["seed"] == 1234567 and d["prompt"] == "a cozy cabin, <lora:tiny-lora:0.8>"
    assert c.get("/studio/image?filename=../darkroom.sqlite3").status_code == 400
    assert c.get("/studio/image?filename=missing.png").status_code == 404

    # a history job that made two images: its entry goes once both files are deleted
    from darkroom.server.store import Job

    job = Job(prompt_id="job-1", number=1, prompt={}, outputs_to_execute=["9"])
    st.store.insert(job)
    job.status = "success"
    job.outputs = {"9": {"images": [{"filename": "plain.png", "subfolder": "", "type": "output"},
                                    {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    st.store.finish(job)
    r = c.post("/studio/delete", json={"filename": "plain.png", "subfolder": ""}).json()
    assert r == {"deleted": True, "history_removed": []}
    assert not (out / "plain.png").exists()
    assert "job-1" in c.get("/history").json()
    r = c.post("/studio/delete", json={"filename": "ComfyUI_00001_.png"}).json()
    assert r["history_removed"] == ["job-1"]
    assert "job-1" not in c.get("/history").json()
    assert c.get("/studio/gallery").json()["total"] == 1
    assert c.post("/studio/delete", json={"filename": "plain.png"}).status_code == 404
    assert c.post("/studio/delete", json={"filename": "../darkroom.sqlite3"}).status_code == 400
    assert (st.config.data_dir / "darkroom.sqlite3").exists()


def test_clearing_history_never_hides_images(make_client) -> None:
    c = make_client()
    out = c.app.state.darkroom.folders.output
    (out / "kept.png").write_bytes(png())
    assert c.post("/history", json={"clear": True}).status_code == 200
    assert [i["filename"] for i in c.get("/studio/gallery").json()["items"]] == ["kept.png"]
