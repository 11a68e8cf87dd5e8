"""A1111's /sdapi/v1 through the real `webuiapi` client: txt2img, img2img with a mask, png-info, model switching
through options, progress with a live preview, interrupt and skip, and the errors A1111 clients must get."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from conftest import photo


def client(server, **kw) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3, **kw)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_txt2img_batch_shape_infotext_and_seeds(shared_server) -> None:
    api = client(shared_server)
    r = api.txt2img(prompt="a red (circle:1.2)", negative_prompt="blurry", seed=42, width=64, height=64,
                    batch_size=2, cfg_scale=5)
    info = r.info
    assert isinstance(r.json["info"], str)  # A1111 sends info as a JSON string
    assert info["all_seeds"] == [42, 43] and info["seed"] == 42
    assert info["index_of_first_image"] == 1 and len(r.images) == 3  # grid first, as A1111 returns
    assert r.images[0].size == (128, 64) and all(im.size == (64, 64) for im in r.images[1:])
    assert info["sd_model_name"] == "tiny-sd15" and info["sampler_name"] == "Euler a" and info["steps"] == 3
    text = info["infotexts"][1]
    lines = text.split("\n")
    assert lines[0] == "a red (circle:1.2)" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 64x64, Model hash: ")
    assert ", Model: tiny-sd15, " in lines[2] and "Version: darkroom" in lines[2]
    assert info["infotexts"][2].split("\n")[2].startswith("Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: 43,")
    assert r.images[1].info["parameters"] == text  # the PNG carries its infotext
    assert r.parameters["prompt"] == "a red (circle:1.2)" and r.parameters["steps"] == 3
    # every image of a batch reproduces alone: seed 43 by itself gives image 2's pixels
    single = api.txt2img(prompt="a red (circle:1.2)", negative_prompt="blurry", seed=43, width=64, height=64,
                         cfg_scale=5)
    assert len(single.images) == 1
    assert np.array_equal(pixels(single.image), pixels(r.images[2]))
    assert not np.array_equal(pixels(r.images[1]), pixels(r.images[2]))
    # png-info round trip
    pi = api.png_info(r.images[1])
    assert pi.info == text
    assert pi.json["parameters"]["Seed"] == "42" and pi.json["parameters"]["Size-1"] == "64"
    assert pi.json["parameters"]["Negative prompt"] == "blurry"


def test_img2img_inpaint_whole_picture_keeps_unmasked_pixels(shared_server) -> None:
    api = client(shared_server)
    init = photo(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    r = api.img2img(images=[init], mask_image=mask, inpainting_fill=1, inpaint_full_res=False, mask_blur=2,
                    denoising_strength=0.9, width=64, height=64, seed=5, prompt="x", cfg_scale=2)
    assert len(r.images) == 1 and r.image.size == (64, 64)
    out, orig = pixels(r.image), pixels(init)
    far = np.ones((64, 64), bool)
    far[16:48, 16:48] = False
    assert np.array_equal(out[far], orig[far])  # the overlay keeps everything outside the (blurred) mask
    assert np.abs(out[28:36, 28:36] - orig[28:36, 28:36]).max() > 0  # the masked square was repainted
    text = r.info["infotexts"][0]
    assert "Denoising strength: 0.9" in text and "Mask blur: 2" in text
    assert r.parameters["init_images"] is None and r.parameters["mask"] is None
    inv = api.img2img(images=[init], mask_image=mask, inpainting_fill=1, inpaint_full_res=False, mask_blur=0,
                      inpainting_mask_invert=1, denoising_strength=0.9, width=64, height=64, seed=5, prompt="x")
    out = pixels(inv.image)
    assert np.array_equal(out[24:40, 24:40], orig[24:40, 24:40])  # inverted: the square is kept
    assert np.abs(out[:8] - orig[:8]).max() > 0
    assert "Mask mode: Inpaint not masked" in inv.info["infotexts"][0]


def test_img2img_only_masked_pastes_back_into_the_full_image(shared_server) -> None:
    api = client(shared_server)
    init = photo(96, 96)
    mask = Image.new("L", (96, 96), 0)
    mask.paste(255, (40, 40, 56, 56))
    r = api.img2img(images=[init], mask_image=mask, inpainting_fill=0, inpaint_full_res=True,
                    inpaint_full_res_padding=8, mask_blur=0, denoising_strength=1.0, width=64, height=64, seed=9,
                    prompt="y")
    assert r.image.size == (96, 96)  # the result is the original with the crop pasted back
    out, orig = pixels(r.image), pixels(init)
    assert np.array_equal(out[:30], orig[:30]) and np.array_equal(out[:, :30], orig[:, :30])
    assert np.abs(out[42:54, 42:54] - orig[42:54, 42:54]).max() > 0
    text = r.info["infotexts"][0]
    assert "Inpaint area: Only masked" in text and "Masked content: fill" in text
    assert "Masked area padding: 8" in text


def test_plain_img2img_and_errors(shared_server) -> None:
    api = client(shared_server)
    r = api.img2img(images=[photo(80, 48)], denoising_strength=0.5, width=64, height=64, seed=3, prompt="z")
    assert r.image.size == (64, 64) and "Denoising strength: 0.5" in r.info["infotexts"][0]
    base = shared_server.url + "/sdapi/v1"
    missing = requests.post(base + "/img2img", json={"prompt": "a"}, timeout=30)
    assert missing.status_code == 404 and "Init image not found" in missing.json()["detail"]
    with pytest.raises(RuntimeError) as ex:
        api.txt2img(prompt="a", alwayson_scripts={"ADetailer": {"args": [False]}})  # ControlNet is known (#7)
    assert ex.value.args[0] == 400 and "ADetailer" in ex.value.args[1] and "alwayson_scripts" in ex.value.args[1]
    for body, field in (({"width": 100_000}, "width"), ({"steps": 0}, "steps"), ({"batch_size": 100}, "batch_size"),
                        ({"sampler_name": "No Such Sampler"}, "sampler"), ({"prompt": "x" * 30_000}, "prompt"),
                        ({"steps": "many"}, "steps"), ({"restore_faces": True}, "restore_faces")):
        resp = requests.post(base + "/txt2img", json=body, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert field in resp.json()["detail"], (body, resp.text)
    bad_lora = requests.post(base + "/txt2img", json={"prompt": "<lora:nope:1>", "steps": 2, "width": 64,
                                                      "height": 64}, timeout=30)
    assert bad_lora.status_code == 400 and "nope" in bad_lora.json()["detail"]
    extras = requests.post(base + "/extra-single-image", json={"image": ""}, timeout=30)
    assert extras.status_code == 400 and "image" in extras.json()["detail"]


def test_lora_hires_styles(shared_server) -> None:
    (shared_server.state.config.data_dir / "styles.csv").write_text(
        "name,prompt,negative_prompt\nmoody,\"{prompt}, dark mood\",\"bright\"\n", encoding="utf-8")
    api = client(shared_server)
    styles = api.get_prompt_styles()
    assert styles == [{"name": "moody", "prompt": "{prompt}, dark mood", "negative_prompt": "bright"}]
    plain = api.txt2img(prompt="a cat", seed=1, width=64, height=64)
    lora = api.txt2img(prompt="a cat <lora:tiny-lora:1>", seed=1, width=64, height=64)
    assert "Lora hashes: \"tiny-lora: " in lora.info["infotexts"][0]
    assert not np.array_equal(pixels(plain.image), pixels(lora.image))
    styled = api.txt2img(prompt="a cat", styles=["moody"], seed=1, width=64, height=64)
    assert styled.info["prompt"] == "a cat, dark mood" and styled.info["negative_prompt"] == "bright"
    hires = api.txt2img(prompt="a cat", seed=1, width=64, height=64, enable_hr=True, hr_scale=1.5,
                        hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5)
    assert hires.image.size == (96, 96)
    text = hires.info["infotexts"][0]
    assert "Size: 64x64" in text and "Hires upscale: 1.5" in text and "Hires steps: 2" in text
    assert "Hires upscaler: Latent" in text and "Denoising strength: 0.5" in text
    names = [lo["name"] for lo in api.get_loras()]
    assert names == ["tiny-lora"]


def test_listings(shared_server) -> None:
    api = client(shared_server)
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= set(samplers)
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"} and "k_dpmpp_2m" in samplers["DPM++ 2M"]["aliases"]
    assert "Karras" in [s["label"] for s in api.get_schedulers()]
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert "Latent (nearest-exact)" in [m["name"] for m in api.get_latent_upscale_modes()]
    assert api.get_scripts() == {"txt2img": ["refiner", "controlnet"],
                                 "img2img": ["sd upscale", "refiner", "controlnet"]}  # sd upscale: issue #7
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_sd_vae() == [] and api.get_hypernetworks() == []
    mem = api.get_memory()
    assert mem["ram"]["total"] > 0 and "error" in mem["cuda"]
    assert api.refresh_checkpoints() is None
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["tiny-sd15", "tiny-sd15_b"]
    assert models[0]["filename"].endswith("tiny-sd15.safetensors")


def test_options_switch_the_model(make_server) -> None:
    server = make_server()
    api = client(server)
    assert api.util_get_current_model().startswith("tiny-sd15.safetensors")
    a = api.txt2img(prompt="p", seed=2, width=64, height=64)
    api.util_set_model("tiny-sd15_b")
    assert api.util_get_current_model().startswith("tiny-sd15_b.safetensors")
    b = api.txt2img(prompt="p", seed=2, width=64, height=64)
    assert b.info["sd_model_name"] == "tiny-sd15_b" and a.info["sd_model_name"] == "tiny-sd15"
    assert ", Model: tiny-sd15_b, " in b.info["infotexts"][0]
    assert not np.array_equal(pixels(a.image), pixels(b.image))
    # once hashed, titles carry the A1111 short hash; the title selects the model too
    titles = api.util_get_model_names()
    assert all(t.endswith("]") for t in titles)
    api.set_options({"sd_model_checkpoint": titles[0]})
    assert api.get_options()["sd_model_checkpoint"] == titles[0]
    c = api.txt2img(prompt="p", seed=2, width=64, height=64)
    assert np.array_equal(pixels(a.image), pixels(c.image))
    # a per-request override wins over the option, and unknown models are refused
    d = api.txt2img(prompt="p", seed=2, width=64, height=64, override_settings={"sd_model_checkpoint": "tiny-sd15_b"})
    assert np.array_equal(pixels(b.image), pixels(d.image))
    bad = requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "missing"}, timeout=30)
    assert bad.status_code == 400 and "missing" in bad.json()["detail"]
    # the choice persists across a restart
    data_dir = server.state.config.data_dir
    server.stop()
    again = make_server(data_dir)
    assert client(again).util_get_current_model() == titles[0]


def _wait(cond, timeout: float = 60.0, every: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def test_progress_with_preview_then_interrupt(shared_server) -> None:
    api = client(shared_server)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(prompt="slow", steps=1000, seed=8,
                                                                      width=64, height=64)))
    t.start()
    prog = _wait(lambda: (p := api.get_progress())["state"]["sampling_step"] >= 2 and p["current_image"] and p)
    assert prog["state"]["sampling_steps"] == 1000 and prog["state"]["job_count"] == 1
    assert 0 < prog["progress"] < 1 and prog["eta_relative"] > 0
    preview = Image.open(__import__("io").BytesIO(__import__("base64").b64decode(prog["current_image"])))
    assert preview.size == (8, 8)
    started = time.time()
    api.interrupt()
    t.join(60)
    assert time.time() - started < 20
    r = out["r"]
    assert r.images == [] and r.info["all_seeds"] == [8]  # A1111 answers 200 with what was done
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    hist = shared_server.get("/history", params={"max_items": 1}).json()
    (entry,) = hist.values()
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]


def test_skip_moves_to_the_next_image(shared_server) -> None:
    api = client(shared_server)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(prompt="skip me", steps=150, seed=30,
                                                                      n_iter=2, width=64, height=64)))
    t.start()
    _wait(lambda: api.get_progress()["state"]["sampling_step"] >= 1)
    api.skip()
    t.join(60)
    r = out["r"]
    assert len(r.images) == 1 and "Seed: 31," in r.info["infotexts"][0]
    assert r.info["all_seeds"] == [30, 31]


def test_a1111_images_are_comfyui_graphs(shared_server) -> None:
    """The saved image embeds its workflow; queued through /prompt it gives the same pixels."""
    import io
    import json

    api = client(shared_server)
    r = api.txt2img(prompt="a (red:1.3) [square]", negative_prompt="dull", seed=321, width=64, height=64,
                    save_images=True, sampler_name="DPM++ 2M", scheduler="Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in r.info["infotexts"][0]
    hist = shared_server.get("/history", params={"max_items": 1}).json()
    (entry,) = hist.values()
    run_graph = entry["prompt"][2]
    assert run_graph["6"]["class_type"] == "CLIPTextEncodeA1111"  # A1111 weighting is kept
    assert run_graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m" and run_graph["3"]["inputs"]["scheduler"] == "karras"
    ref = entry["outputs"]["9"]["images"][0]
    assert ref["type"] == "output" and ref["subfolder"] == "txt2img-images"
    saved = Image.open(io.BytesIO(shared_server.get("/view", params=ref).content))
    assert saved.info["parameters"] == r.info["infotexts"][0]
    workflow = json.loads(saved.info["prompt"])
    assert workflow["9"]["class_type"] == "SaveImage" and workflow["3"]["inputs"]["seed"] == 321
    assert np.array_equal(pixels(saved), pixels(r.image))
    pid = shared_server.post("/prompt", json={"prompt": workflow}).json()["prompt_id"]
    shared_server.wait_idle()
    out = shared_server.get(f"/history/{pid}").json()[pid]["outputs"]["9"]["images"][0]
    rerun = Image.open(io.BytesIO(shared_server.get("/view", params=out).content))
    assert np.array_equal(pixels(rerun), pixels(r.image))
    plain = api.txt2img(prompt="a cat", negative_prompt="", seed=1, width=64, height=64)
    assert plain.image.size == (64, 64)
    (entry,) = shared_server.get("/history", params={"max_items": 1}).json().values()
    assert entry["prompt"][2]["6"]["class_type"] == "CLIPTextEncode"  # plain prompts stay portable to ComfyUI


def test_a1111_request_matches_the_engine(shared_server, models) -> None:
    """The same request through /sdapi/v1 and through Engine.generate: same pixels, same infotext."""
    from darkroom.engine import GenerationParams

    api = client(shared_server)
    r = api.txt2img(prompt="a (red:1.3) cat", negative_prompt="dull", seed=5, width=64, height=64,
                    sampler_name="Euler a", cfg_scale=6, steps=3,
                    override_settings={"sd_model_checkpoint": "tiny-sd15"})
    res = models.engine.generate(GenerationParams(
        prompt="a (red:1.3) cat", negative_prompt="dull", seed=5, width=64, height=64, steps=3,
        sampler="euler_ancestral", scheduler="normal", cfg=6.0, model="tiny-sd15.safetensors"))
    assert np.array_equal(pixels(r.image), pixels(res.images[0]))
    assert r.info["infotexts"][0] == res.infotexts[0]


def test_waiting_client_hears_when_its_job_is_deleted(make_server) -> None:
    server = make_server(worker=False)
    api = client(server)
    out: dict = {}

    def call() -> None:
        try:
            api.txt2img(prompt="never", width=64, height=64)
        except RuntimeError as ex:
            out["error"] = ex.args

    t = threading.Thread(target=call)
    t.start()
    _wait(lambda: server.get("/queue").json()["queue_pending"])
    assert server.post("/queue", json={"clear": True}).status_code == 200
    t.join(30)
    assert out["error"][0] == 409 and "removed from the queue" in out["error"][1]
