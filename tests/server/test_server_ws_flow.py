"""A websocket client that follows ComfyUI's protocol: queue with client_id, read events until `executing` with
node null, fetch /history/{id}, download the image through /view; binary preview frames of types 1 and 4."""

from __future__ import annotations

import io
import json
import struct

import pytest
import websocket
from PIL import Image

from conftest import txt2img_workflow


def read_until_done(ws: websocket.WebSocket, prompt_id: str, limit: int = 2000) -> tuple[list[dict], list[bytes]]:
    """JSON events and binary frames until `executing` with node null for prompt_id."""
    events, frames = [], []
    for _ in range(limit):
        op, data = ws.recv_data()
        if op == websocket.ABNF.OPCODE_BINARY:
            frames.append(data)
            continue
        msg = json.loads(data)
        events.append(msg)
        d = msg.get("data", {})
        if msg["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
            return events, frames
    raise AssertionError(f"no final executing message; got {[e['type'] for e in events]}")


def connect(server, client_id: str, flags: dict | None) -> websocket.WebSocket:
    ws = websocket.create_connection(f"{server.ws_url}/ws?clientId={client_id}", timeout=60)
    first = json.loads(ws.recv())
    assert first["type"] == "status"
    assert first["data"]["sid"] == client_id
    assert "queue_remaining" in first["data"]["status"]["exec_info"]
    if flags is not None:
        ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        for _ in range(20):
            msg = json.loads(ws.recv())
            if msg["type"] == "feature_flags":
                assert msg["data"]["supports_preview_metadata"] is True
                assert msg["data"]["max_upload_size"] > 0
                break
        else:
            raise AssertionError("no feature_flags reply")
    return ws


@pytest.mark.parametrize("metadata_previews", [False, True])
def test_comfy_client_flow(shared_server, metadata_previews: bool) -> None:
    client_id = f"client-{metadata_previews}"
    ws = connect(shared_server, client_id, {"supports_preview_metadata": metadata_previews})
    wf = txt2img_workflow(seed=11 + metadata_previews, steps=3)
    r = shared_server.post("/prompt", json={"prompt": wf, "client_id": client_id})
    assert r.status_code == 200, r.text
    body = r.json()
    prompt_id = body["prompt_id"]
    assert isinstance(body["number"], int) and body["node_errors"] == {}
    events, frames = read_until_done(ws, prompt_id)
    ws.close()
    types = [e["type"] for e in events]
    mine = [e for e in events if e["data"].get("prompt_id") == prompt_id]
    order = [e["type"] for e in mine if e["type"] in ("execution_start", "execution_cached", "execution_success")]
    assert order == ["execution_start", "execution_cached", "execution_success"], types
    executing = [e["data"]["node"] for e in mine if e["type"] == "executing"]
    cached = next(e["data"]["nodes"] for e in mine if e["type"] == "execution_cached")
    assert executing[-1] is None and {"3", "8", "9"} <= set(executing[:-1])
    assert set(executing[:-1]) | set(cached) == set(wf)  # every node ran or came from the cache
    assert not set(executing[:-1]) & set(cached)
    progress = [e["data"] for e in mine if e["type"] == "progress"]
    assert [p["value"] for p in progress if p["node"] == "3"] == [1, 2, 3]
    assert all(p["max"] == 3 for p in progress if p["node"] == "3")
    executed = [e["data"] for e in mine if e["type"] == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "9"
    image_ref = executed[0]["output"]["images"][0]
    assert image_ref["type"] == "output" and image_ref["filename"].endswith(".png")
    assert "status" in types  # queue changes are broadcast

    # previews: one per sampling step, type 4 with metadata only for clients that asked for it
    assert len(frames) == 3
    for frame in frames:
        kind = struct.unpack(">I", frame[:4])[0]
        if metadata_previews:
            assert kind == 4
            (n,) = struct.unpack(">I", frame[4:8])
            meta = json.loads(frame[8:8 + n])
            assert meta["prompt_id"] == prompt_id and meta["node_id"] == "3" and meta["image_type"] == "image/jpeg"
            image = Image.open(io.BytesIO(frame[8 + n:]))
        else:
            assert kind == 1 and struct.unpack(">I", frame[4:8])[0] == 1  # JPEG
            image = Image.open(io.BytesIO(frame[8:]))
        assert image.format == "JPEG" and image.size == (8, 8)  # latent-sized preview of a 64×64 image

    hist = shared_server.get(f"/history/{prompt_id}").json()
    entry = hist[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == prompt_id and entry["prompt"][2]["3"]["class_type"] == "KSampler"
    assert entry["prompt"][3]["client_id"] == client_id and entry["prompt"][4] == ["9"]
    assert entry["outputs"]["9"]["images"] == [image_ref]
    view = shared_server.get("/api/view", params={"filename": image_ref["filename"], "type": "output",
                                                  "subfolder": image_ref["subfolder"]})
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(view.content))
    assert img.size == (64, 64)
    assert json.loads(img.info["prompt"])["3"]["inputs"]["seed"] == wf["3"]["inputs"]["seed"]


def test_interrupt_by_prompt_id_and_reconnect(shared_server) -> None:
    ws = connect(shared_server, "int", None)
    pid = shared_server.post("/prompt", json={"prompt": txt2img_workflow(seed=77, steps=1000),
                                              "client_id": "int"}).json()["prompt_id"]
    for _ in range(5000):  # wait until it samples
        op, data = ws.recv_data()
        if op == websocket.ABNF.OPCODE_TEXT and json.loads(data)["type"] == "progress":
            break
    # a reconnecting client with the same id is told what is running
    again = websocket.create_connection(f"{shared_server.ws_url}/ws?clientId=int", timeout=60)
    assert json.loads(again.recv())["type"] == "status"
    resent = json.loads(again.recv())
    assert resent["type"] == "executing" and resent["data"] == {"node": "3", "display_node": "3", "prompt_id": pid}
    assert shared_server.post("/interrupt", json={"prompt_id": "someone-else"}).status_code == 200
    step = shared_server.state.worker.progress.step
    import time

    time.sleep(0.3)
    assert shared_server.state.worker.progress.step > step  # another prompt's id interrupts nothing
    assert shared_server.post("/api/interrupt", json={"prompt_id": pid}).status_code == 200
    events, _ = read_until_done(again, pid)
    again.close()
    ws.close()
    interrupted = [e for e in events if e["type"] == "execution_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["data"]["node_id"] == "3"
    entry = shared_server.get(f"/history/{pid}").json()[pid]
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


def test_failing_job_does_not_stop_the_queue(make_server, monkeypatch) -> None:
    import torch

    from darkroom.engine import pipeline

    server = make_server()
    real = pipeline.ksample
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "ksample", flaky)
    ws = connect(server, "oom", None)
    bad = server.post("/prompt", json={"prompt": txt2img_workflow(seed=3), "client_id": "oom"}).json()["prompt_id"]
    good = server.post("/prompt", json={"prompt": txt2img_workflow(seed=4), "client_id": "oom"}).json()["prompt_id"]
    events, _ = read_until_done(ws, bad)
    err = next(e["data"] for e in events if e["type"] == "execution_error")
    assert err["node_id"] == "3" and "out of memory" in err["exception_message"]
    assert "TIPS" in err["exception_message"] and err["exception_type"].endswith("OutOfMemoryError")
    read_until_done(ws, good)
    ws.close()
    hist = server.get("/history").json()
    assert hist[bad]["status"]["status_str"] == "error" and hist[good]["status"]["status_str"] == "success"
