"""Every ComfyUI route's shape (plain and under /api), validation errors with ComfyUI's body, the queue's
priorities and deletion, history, uploads (renaming, masks, traversal) and /view."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import requests
from PIL import Image

from conftest import photo, txt2img_workflow


def png_bytes(img: Image.Image, **text: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def upload(server, data: bytes, name: str, path: str = "/upload/image", **form: str) -> requests.Response:
    return requests.post(server.url + path, files={"image": (name, data, "image/png")}, data=form, timeout=30)


# -- POST /prompt validation ----------------------------------------------------------------------------------------

def test_prompt_validation_errors_have_comfyui_shape(shared_server) -> None:
    url = shared_server.url + "/api/prompt"
    bad_json = requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_prompt" and bad_json.json()["node_errors"] == {}
    no_prompt = requests.post(url, json={"client_id": "x"}, timeout=30)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["type"] == "no_prompt"

    wf = txt2img_workflow()
    wf["3"]["class_type"] = "NoSuchSampler"
    unknown = requests.post(url, json={"prompt": wf}, timeout=30).json()
    assert unknown["error"]["type"] == "invalid_prompt"
    assert unknown["error"]["extra_info"]["missing_nodes"][0]["class_type"] == "NoSuchSampler"

    wf = txt2img_workflow()
    wf["3"]["inputs"]["steps"] = -4
    wf["3"]["inputs"]["cfg"] = "lots"
    r = requests.post(url, json={"prompt": wf}, timeout=30)
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errs = {e["type"]: e for e in body["node_errors"]["3"]["errors"]}
    assert errs["value_smaller_than_min"]["extra_info"]["input_name"] == "steps"
    assert errs["invalid_input_type"]["extra_info"]["input_name"] == "cfg"
    assert body["node_errors"]["3"]["class_type"] == "KSampler" and body["node_errors"]["3"]["dependent_outputs"] == ["9"]

    wf = txt2img_workflow()
    wf["5"]["inputs"]["width"] = 12000  # allowed by the node (16384), refused by the server's limit
    r = requests.post(url, json={"prompt": wf}, timeout=30)
    assert r.status_code == 400
    err = r.json()["node_errors"]["5"]["errors"][0]
    assert err["type"] == "value_bigger_than_max" and err["extra_info"]["input_name"] == "width"

    for prefix in ("../../outside", "/abs/path", "a/../../b"):
        wf = txt2img_workflow(prefix=prefix)
        r = requests.post(url, json={"prompt": wf}, timeout=30)
        assert r.status_code == 400, prefix
        err = r.json()["node_errors"]["9"]["errors"][0]
        assert err["type"] == "value_not_allowed" and err["extra_info"]["input_name"] == "filename_prefix"

    wf = txt2img_workflow()
    del wf["9"]
    assert requests.post(url, json={"prompt": wf}, timeout=30).json()["error"]["type"] == "prompt_no_outputs"
    assert shared_server.get("/queue").json()["queue_pending"] == []  # nothing invalid was queued


# -- queue ----------------------------------------------------------------------------------------------------------

def test_queue_priority_delete_clear_without_worker(make_server) -> None:
    server = make_server(worker=False)
    ids = []
    for i, extra in enumerate(({}, {}, {"front": True}, {"number": 0.5})):
        r = server.post("/prompt", json={"prompt": txt2img_workflow(seed=i), "client_id": "c", **extra})
        assert r.status_code == 200, r.text
        ids.append(r.json()["prompt_id"])
    numbers = [server.state.store.get(i).number for i in ids]
    assert numbers[0] > 0 and numbers[1] == numbers[0] + 1 and numbers[2] == -(numbers[1] + 1) and numbers[3] == 0.5
    q = server.get("/api/queue").json()
    assert q["queue_running"] == []
    assert [item[1] for item in q["queue_pending"]] == [ids[2], ids[3], ids[0], ids[1]]
    item = q["queue_pending"][0]
    assert len(item) == 5 and item[2]["3"]["class_type"] == "KSampler" and item[3] == {"client_id": "c"}
    assert item[4] == ["9"]
    assert server.get("/prompt").json() == {"exec_info": {"queue_remaining": 4}}
    assert server.post("/queue", json={"delete": [ids[0]]}).status_code == 200
    assert [i[1] for i in server.get("/queue").json()["queue_pending"]] == [ids[2], ids[3], ids[1]]
    assert server.post("/api/queue", json={"clear": True}).status_code == 200
    assert server.get("/queue").json()["queue_pending"] == []
    assert server.post("/interrupt").status_code == 200  # nothing running: a no-op
    dup = server.post("/prompt", json={"prompt": txt2img_workflow(), "prompt_id": "mine"})
    assert dup.json()["prompt_id"] == "mine"
    again = server.post("/prompt", json={"prompt": txt2img_workflow(), "prompt_id": "mine"})
    assert again.status_code == 400 and "already used" in again.json()["error"]["message"]


def test_history_routes(make_server) -> None:
    server = make_server()
    ids = [server.post("/prompt", json={"prompt": txt2img_workflow(seed=100 + i)}).json()["prompt_id"]
           for i in range(3)]
    server.wait_idle()
    hist = server.get("/history").json()
    assert list(hist) == ids  # oldest first
    assert list(server.get("/api/history", params={"max_items": 2}).json()) == ids[1:]
    assert list(server.get("/history", params={"max_items": 1, "offset": 0}).json()) == ids[:1]
    assert server.get("/history/nope").json() == {}
    assert server.post("/history", json={"delete": [ids[0]]}).status_code == 200
    assert list(server.get("/history").json()) == ids[1:]
    assert server.post("/history", json={"clear": True}).status_code == 200
    assert server.get("/history").json() == {}
    bad = server.post("/history", json={"delete": "x"})
    assert bad.status_code == 400


# -- uploads and /view -------------------------------------------------------------------------------------------

def test_upload_renaming_reuse_and_refusals(shared_server) -> None:
    a, b = png_bytes(photo(32, 32)), png_bytes(photo(40, 40))
    first = upload(shared_server, a, "up.png")
    assert first.status_code == 200 and first.json() == {"name": "up.png", "subfolder": "", "type": "input"}
    assert upload(shared_server, a, "up.png").json()["name"] == "up.png"  # same bytes: reused
    assert upload(shared_server, b, "up.png").json()["name"] == "up (1).png"  # other bytes: new name
    assert upload(shared_server, b, "up.png").json()["name"] == "up (1).png"
    inp = shared_server.state.folders.input
    assert (inp / "up.png").read_bytes() == a and (inp / "up (1).png").read_bytes() == b
    sub = upload(shared_server, a, "s.png", subfolder="pics/day1")
    assert sub.json() == {"name": "s.png", "subfolder": "pics/day1", "type": "input"}
    over = upload(shared_server, b, "up.png", overwrite="true")
    assert over.json()["name"] == "up.png" and (inp / "up.png").read_bytes() == b
    for name, form in (("../evil.png", {}), ("ok.png", {"subfolder": "../../x"}), ("ok.png", {"subfolder": "/etc"}),
                       ("ok.png", {"type": "models"})):
        r = upload(shared_server, a, name, **form)
        assert r.status_code == 400, (name, form, r.text)
    not_image = upload(shared_server, b"hello", "x.png")
    assert not_image.status_code == 400 and "not a readable image" in not_image.json()["error"]
    assert not (inp.parent / "evil.png").exists()
    # the LoadImage combo lists uploads
    choices = shared_server.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "up (1).png" in choices and "pics/day1/s.png" in choices


def test_upload_mask_copies_alpha_onto_the_original(shared_server) -> None:
    original = photo(32, 32)
    assert upload(shared_server, png_bytes(original, prompt="{\"k\": 1}"), "orig.png").status_code == 200
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 16, 16))
    r = upload(shared_server, png_bytes(mask), "clipspace-mask.png", path="/upload/mask",
               original_ref=json.dumps({"filename": "orig.png", "subfolder": "", "type": "input"}))
    assert r.status_code == 200, r.text
    ref = r.json()
    assert ref["type"] == "input" and ref["name"] == "clipspace-mask.png"
    with Image.open(shared_server.state.folders.input / ref["name"]) as out:
        assert out.mode == "RGBA" and out.info.get("prompt") == "{\"k\": 1}"
        alpha = np.asarray(out.getchannel("A"))
        rgb = np.asarray(out.convert("RGB"))
    assert alpha[10, 10] == 0 and alpha[0, 0] == 255 and alpha[20, 20] == 255
    assert np.array_equal(rgb, np.asarray(original))
    missing = upload(shared_server, png_bytes(mask), "m.png", path="/upload/mask",
                     original_ref=json.dumps({"filename": "nope.png", "type": "input"}))
    assert missing.status_code == 404


def test_view_and_traversal(shared_server, tmp_path) -> None:
    out = shared_server.state.folders.output
    (out / "sub").mkdir(exist_ok=True)
    img = Image.new("RGBA", (16, 12), (200, 100, 50, 128))
    img.save(out / "sub" / "v.png")
    (tmp_path / "secret.png").write_bytes(png_bytes(photo(8, 8)))
    os.symlink(tmp_path, out / "escape", target_is_directory=True)
    os.symlink(tmp_path / "secret.png", out / "link.png")

    r = shared_server.get("/view", params={"filename": "v.png", "subfolder": "sub"})
    assert r.status_code == 200 and r.content == (out / "sub" / "v.png").read_bytes()
    assert shared_server.get("/api/view", params={"filename": "v.png [output]", "subfolder": "sub"}).status_code == 200
    webp = shared_server.get("/view", params={"filename": "v.png", "subfolder": "sub", "preview": "webp;50"})
    assert webp.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).size == (16, 12)
    rgb = Image.open(io.BytesIO(shared_server.get("/view", params={"filename": "v.png", "subfolder": "sub",
                                                                  "channel": "rgb"}).content))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
    a = Image.open(io.BytesIO(shared_server.get("/view", params={"filename": "v.png", "subfolder": "sub",
                                                                "channel": "a"}).content))
    assert a.getchannel("A").getpixel((0, 0)) == 128
    cases = [({"filename": "../darkroom.sqlite3"}, 400), ({"filename": "/etc/passwd"}, 400),
             ({"filename": "x.png", "subfolder": "../.."}, 403), ({"filename": "secret.png", "subfolder": "escape"}, 403),
             ({"filename": "link.png"}, 403), ({"filename": "nope.png"}, 404), ({"filename": "v.png", "type": "x"}, 400),
             ({"filename": "..\\x.png"}, 400)]
    for params, status in cases:
        resp = shared_server.get("/view", params=params)
        assert resp.status_code == status, (params, resp.status_code, resp.text)


# -- information routes ------------------------------------------------------------------------------------------

def test_information_routes(shared_server) -> None:
    for prefix in ("", "/api"):
        info = shared_server.get(prefix + "/object_info").json()
        ks = info["KSampler"]
        assert ks["input"]["required"]["seed"][0] == "INT" and ks["output"] == ["LATENT"]
        assert ks["input_order"]["required"][0] == "model" and ks["output_node"] is False
        ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        assert ckpts == ["tiny-sd15.safetensors", "tiny-sd15_b.safetensors"]
        assert shared_server.get(prefix + "/object_info/SaveImage").json()["SaveImage"]["output_node"] is True
        assert shared_server.get(prefix + "/object_info/Nope").json() == {}
        assert "checkpoints" in shared_server.get(prefix + "/models").json()
        assert shared_server.get(prefix + "/models/checkpoints").json() == ckpts
        assert shared_server.get(prefix + "/models/loras").json() == ["tiny-lora.safetensors"]
        assert shared_server.get(prefix + "/models/nope").status_code == 404
        assert shared_server.get(prefix + "/embeddings").json() == []
        meta = shared_server.get(prefix + "/view_metadata/checkpoints",
                                 params={"filename": "tiny-sd15_b.safetensors"})
        assert meta.status_code == 200 and meta.json()["modelspec.title"] == "tiny b"
        assert shared_server.get(prefix + "/view_metadata/checkpoints",
                                 params={"filename": "/etc/passwd"}).status_code == 404
        stats = shared_server.get(prefix + "/system_stats").json()
        assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
                "required_frontend_version", "embedded_python", "argv"} <= set(stats["system"])
        dev = stats["devices"][0]
        assert dev["type"] == "cpu" and {"name", "index", "vram_total", "vram_free", "torch_vram_total",
                                         "torch_vram_free"} <= set(dev)
        feats = shared_server.get(prefix + "/features").json()
        assert feats == {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
        assert shared_server.post(prefix + "/free", json={"unload_models": True, "free_memory": True}).status_code == 200
        assert shared_server.get(prefix + "/extensions").json() == []


def test_openapi_describes_the_routes(shared_server) -> None:
    spec = shared_server.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/prompt", "/api/prompt", "/queue", "/history/{prompt_id}", "/view", "/upload/image",
                 "/upload/mask", "/object_info/{node_class}", "/system_stats", "/sdapi/v1/txt2img",
                 "/sdapi/v1/img2img", "/sdapi/v1/options", "/sdapi/v1/progress", "/sdapi/v1/png-info"):
        assert path in paths, path
    body = paths["/prompt"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["prompt"]
    assert "Txt2ImgRequest" in json.dumps(paths["/sdapi/v1/txt2img"]["post"]["requestBody"])
    assert not any("422" in op["responses"] for ops in paths.values() for op in ops.values())
    assert {"400", "401", "403", "413"} <= set(paths["/upload/image"]["post"]["responses"])
    # every GET route without parameters answers with a status the description lists
    for path, ops in paths.items():
        op = ops.get("get")
        if op is None or "{" in path or any(p.get("required") for p in op.get("parameters", [])):
            continue
        r = shared_server.get(path)
        assert str(r.status_code) in op["responses"], (path, r.status_code)
