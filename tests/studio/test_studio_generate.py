"""POST /studio/generate end to end without a browser: events reach the page's websocket client, images land in
output/ with their parameters, inpainting keeps the unmasked pixels."""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def follow(ws: Any, prompt_id: str, limit: int = 5000) -> tuple[list[dict], list[bytes]]:
    """Events and binary frames until `executing` with node null for prompt_id."""
    events, frames = [], []
    for _ in range(limit):
        message = ws.receive()
        if message.get("bytes") is not None:
            frames.append(message["bytes"])
            continue
        event = json.loads(message["text"])
        events.append(event)
        data = event.get("data") or {}
        if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return events, frames
    raise AssertionError(f"the job did not finish: {[e['type'] for e in events]}")


def connect(client: Any, client_id: str) -> Any:
    ws = client.websocket_connect(f"ws://127.0.0.1:8188/ws?clientId={client_id}")
    ws.__enter__()
    assert json.loads(ws.receive()["text"])["type"] == "status"
    ws.send_text(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    return ws


def test_batch_reaches_the_page_and_output(make_client) -> None:
    c = make_client(worker=True)
    ws = connect(c, "studio-page-1")
    try:
        r = c.post("/studio/generate", json={"prompt": "a small red circle", "negative_prompt": "blur", "steps": 4,
                                             "width": 64, "height": 64, "seed": 7, "batch_size": 2,
                                             "client_id": "studio-page-1"})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["seeds"] == [7, 8] and job["count"] == 2
        events, frames = follow(ws, job["prompt_id"])
    finally:
        ws.__exit__(None, None, None)
    types = [e["type"] for e in events]
    assert types.count("execution_start") == 2
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress and all(p["prompt_id"] == job["prompt_id"] for p in progress)
    assert progress[-1]["value"] == progress[-1]["max"] == 4
    assert frames, "no step preview frames"
    kind, length = struct.unpack(">II", frames[0][:8])
    assert kind == 4 and json.loads(frames[0][8:8 + length])["prompt_id"] == job["prompt_id"]

    entry = c.get(f"/history/{job['prompt_id']}").json()[job["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 2
    out = c.app.state.darkroom.folders.output
    from darkroom.metadata.reading import read_image_metadata

    seeds = []
    for ref in images:
        meta = read_image_metadata(out / ref["subfolder"] / ref["filename"])
        assert meta.infotext["Prompt"] == "a small red circle" and meta.infotext["Negative prompt"] == "blur"
        assert meta.prompt is not None  # the equivalent ComfyUI workflow travels along
        seeds.append(int(meta.infotext["Seed"]))
    assert seeds == [7, 8]
    gallery = c.get("/studio/gallery?q=small red circle").json()
    assert gallery["total"] == 2


def test_inpaint_keeps_the_unmasked_pixels(make_client) -> None:
    c = make_client(worker=True)
    y, x = np.mgrid[0:64, 0:64]
    picture = np.stack([40 + 3 * x, 200 - 2 * y, np.full_like(x, 90)], -1).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 40:60] = 255
    ws = connect(c, "studio-page-2")
    try:
        r = c.post("/studio/generate", json={
            "prompt": "a moon", "steps": 4, "width": 64, "height": 64, "seed": 3, "mode": "inpaint",
            "init_image": data_url(Image.fromarray(picture)), "mask": data_url(Image.fromarray(mask)),
            "mask_blur": 0, "denoise": 0.9, "client_id": "studio-page-2"})
        assert r.status_code == 200, r.text
        job = r.json()
        follow(ws, job["prompt_id"])
    finally:
        ws.__exit__(None, None, None)
    entry = c.get(f"/history/{job['prompt_id']}").json()[job["prompt_id"]]
    (ref,) = entry["outputs"]["9"]["images"]
    assert ref["subfolder"] == "img2img-images"
    result = np.asarray(Image.open(c.app.state.darkroom.folders.output / ref["subfolder"] / ref["filename"])
                        .convert("RGB")).astype(int)
    diff = np.abs(result - picture.astype(int)).max(-1)
    keep = np.ones((64, 64), bool)
    keep[0:64, 32:64] = False  # the mask plus a margin of latent cells
    assert diff[keep].max() <= 2
    assert diff[mask > 0].mean() > 10
