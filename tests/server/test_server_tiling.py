"""A1111's `tiling: true` through the real `webuiapi` client: the queued workflow carries darkroom's SeamlessTiling
node, the infotext says "Tiling: True", and pasting that infotext back reproduces the image."""

from __future__ import annotations

import base64
import io

import numpy as np
import requests
import webuiapi
from PIL import Image


def test_txt2img_tiling_runs_the_seamless_tiling_node(shared_server) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=shared_server.port, sampler="Euler", steps=3)
    common = dict(prompt="a red circle", seed=9, width=64, height=64, cfg_scale=4)
    tiled = api.txt2img(tiling=True, **common)
    plain = api.txt2img(**common)
    text = tiled.info["infotexts"][0]
    assert "Tiling: True" in text and "Tiling" not in plain.info["infotexts"][0]
    a = np.asarray(tiled.image.convert("RGB"), dtype=np.int16)
    assert np.abs(a - np.asarray(plain.image.convert("RGB"), dtype=np.int16)).max() > 0
    history = shared_server.get("/history").json()
    graphs = [entry["prompt"][2] for entry in history.values()]
    tiling_nodes = [n for g in graphs for n in g.values() if n["class_type"] == "SeamlessTiling"]
    assert len(tiling_nodes) == 1 and tiling_nodes[0]["inputs"]["enabled"] is True
    # A1111's "infotext" field fills the request from the pasted text, Tiling included
    again = requests.post(shared_server.url + "/sdapi/v1/txt2img", json={"infotext": text}, timeout=60)
    assert again.status_code == 200, again.text
    img = Image.open(io.BytesIO(base64.b64decode(again.json()["images"][0])))
    assert np.array_equal(np.asarray(img.convert("RGB"), dtype=np.int16), a)
