"""Safety: no network listening without a token; the token on HTTP and websocket; ComfyUI's origin check (and
DNS rebinding); body, upload and image-size limits."""

from __future__ import annotations

import io
import json

import pytest
import requests
import webuiapi
import websocket
from PIL import Image

from conftest import photo, txt2img_workflow
from darkroom.server.config import Limits, ServerConfig, ServerConfigError

TOKEN = "s3cret-token-123"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_listening_on_the_network_needs_a_token(capsys) -> None:
    with pytest.raises(ServerConfigError, match="--token"):
        ServerConfig(host="0.0.0.0").check()
    with pytest.raises(ServerConfigError, match="--token"):
        ServerConfig(host="192.168.1.20").check()
    with pytest.raises(ServerConfigError, match="at least 8"):
        ServerConfig(host="0.0.0.0", token="short").check()
    ServerConfig(host="0.0.0.0", token=TOKEN).check()
    ServerConfig(host="::1").check()
    from darkroom.cli import main

    assert main(["serve", "--listen"]) == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    assert main(["serve", "--host", "10.0.0.7"]) == 2
    assert "--token" in capsys.readouterr().err


def test_token_is_checked_on_http_and_websocket(make_server) -> None:
    server = make_server(token=TOKEN)
    r = server.get("/prompt")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert server.get("/prompt", headers={"Authorization": "Bearer wrong-token-000"}).status_code == 401
    assert server.get("/api/prompt", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert server.get("/queue", headers={"X-Darkroom-Token": TOKEN}).status_code == 200
    assert server.get("/history", params={"token": TOKEN}).status_code == 200
    assert server.get("/sdapi/v1/options", auth=("anyone", TOKEN)).status_code == 200
    assert server.post("/prompt", json={"prompt": txt2img_workflow()}).status_code == 401
    assert server.get("/view", params={"filename": "x.png"}).status_code == 401
    assert server.state.queue.remaining() == 0
    # the A1111 client with Basic credentials
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="me", password=TOKEN, steps=2)
    assert api.txt2img(prompt="p", seed=1, width=64, height=64).image.size == (64, 64)
    with pytest.raises(RuntimeError) as ex:
        webuiapi.WebUIApi(host="127.0.0.1", port=server.port, steps=2).txt2img(prompt="p", width=64, height=64)
    assert ex.value.args[0] == 401
    # websocket: refused without the token, accepted with it (query or header)
    with pytest.raises(websocket.WebSocketBadStatusException) as bad:
        websocket.create_connection(f"{server.ws_url}/ws?clientId=a", timeout=10)
    assert bad.value.status_code == 403
    for url, headers in ((f"{server.ws_url}/ws?clientId=a&token={TOKEN}", None),
                         (f"{server.ws_url}/api/ws?clientId=b", [f"Authorization: Bearer {TOKEN}"])):
        ws = websocket.create_connection(url, timeout=10, header=headers)
        assert json.loads(ws.recv())["type"] == "status"
        ws.close()


def test_cross_origin_pages_cannot_queue_work(shared_server) -> None:
    evil = {"Origin": "http://evil.example"}
    r = requests.post(shared_server.url + "/prompt", json={"prompt": txt2img_workflow()}, headers=evil, timeout=30)
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    for origin in ("null", f"http://127.0.0.1:{shared_server.port + 1}", f"http://localhost:{shared_server.port}"):
        assert requests.post(shared_server.url + "/api/prompt", json={"prompt": txt2img_workflow()},
                             headers={"Origin": origin}, timeout=30).status_code == 403, origin
    for path, body in (("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2}), ("/interrupt", {}),
                       ("/queue", {"clear": True})):
        assert requests.post(shared_server.url + path, json=body, headers=evil, timeout=30).status_code == 403
    assert shared_server.state.queue.remaining() == 0
    same = requests.get(shared_server.url + "/prompt", headers={"Origin": shared_server.url}, timeout=30)
    assert same.status_code == 200
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 looks same-origin but names another host
    rebound = requests.get(shared_server.url + "/prompt", headers={"Host": f"evil.example:{shared_server.port}",
                                                                   "Origin": f"http://evil.example:{shared_server.port}"},
                           timeout=30)
    assert rebound.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"{shared_server.ws_url}/ws", origin="http://evil.example", timeout=10)
    ws = websocket.create_connection(f"{shared_server.ws_url}/ws", origin=shared_server.url, timeout=10)
    assert json.loads(ws.recv())["type"] == "status"
    ws.close()


def test_cors_flag_allows_a_named_origin(make_server) -> None:
    server = make_server(cors_origins=("http://studio.example",))
    ok = requests.get(server.url + "/prompt", headers={"Origin": "http://studio.example"}, timeout=30)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://studio.example"
    pre = requests.options(server.url + "/prompt", headers={"Origin": "http://studio.example",
                                                            "Access-Control-Request-Method": "POST"}, timeout=30)
    assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]
    other = requests.get(server.url + "/prompt", headers={"Origin": "http://other.example"}, timeout=30)
    assert other.status_code == 403


def test_size_limits(make_server) -> None:
    server = make_server(limits=Limits(max_upload_bytes=4000, max_body_bytes=20_000, max_image_pixels=50 * 50))
    big = png(Image.effect_noise((64, 64), 50).convert("RGB"))
    assert len(big) > 5000
    r = requests.post(server.url + "/upload/image", files={"image": ("big.png", big, "image/png")}, timeout=30)
    assert r.status_code == 413
    r = requests.post(server.url + "/upload/image", files={"image": ("wide.png", png(photo(60, 60)), "image/png")},
                      timeout=30)
    assert r.status_code == 400 and "too large" in r.json()["error"]  # 3600 pixels > 2500: never decoded
    assert requests.post(server.url + "/upload/image", files={"image": ("ok.png", png(photo(40, 40)), "image/png")},
                         timeout=30).status_code == 200
    huge = {"prompt": txt2img_workflow(), "extra_data": {"pad": "x" * 30_000}}
    assert requests.post(server.url + "/prompt", json=huge, timeout=30).status_code == 413

    def chunks():
        for _ in range(10):
            yield b" " * 4000

    streamed = requests.post(server.url + "/prompt", data=chunks(), headers={"Content-Type": "application/json"},
                             timeout=30)
    assert streamed.status_code == 413
    b64 = {"init_images": [__import__("base64").b64encode(png(photo(60, 60))).decode()], "width": 64,
           "height": 64, "steps": 2}
    r = requests.post(server.url + "/sdapi/v1/img2img", json=b64, timeout=30)
    assert r.status_code == 400 and "too large" in r.json()["detail"]
    info = requests.post(server.url + "/sdapi/v1/png-info", json={"image": b64["init_images"][0]}, timeout=30)
    assert info.status_code == 400 and "too large" in info.json()["detail"]
    junk = requests.post(server.url + "/sdapi/v1/png-info", json={"image": "aGVsbG8="}, timeout=30)
    assert junk.status_code == 400
    assert server.state.queue.remaining() == 0
