"""Our request as a ComfyUI API workflow: node classes, input names, links and values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darkroom.engine.params import GenerationParams, HiresParams, LoraRef
from darkroom.metadata.comfy_summary import is_link, summarize_comfy_prompt
from darkroom.metadata.workflow import workflow_from_params


def _check_links(wf: dict) -> None:
    """Every link points at an existing node; ids are strings; every node has class_type and inputs."""
    for nid, node in wf.items():
        assert isinstance(nid, str) and set(node) >= {"class_type", "inputs"}
        for v in node["inputs"].values():
            if is_link(v):
                assert isinstance(v[0], str) and v[0] in wf, (nid, v)


def _by_class(wf: dict, cls: str) -> list[tuple[str, dict]]:
    return [(k, n["inputs"]) for k, n in wf.items() if n["class_type"] == cls]


def test_plain_txt2img_matches_comfy_basic_example_layout():
    p = GenerationParams(prompt="beautiful scenery", negative_prompt="text, watermark", sampler="euler",
                         scheduler="normal", steps=20, cfg=8.0, width=512, height=512)
    wf = workflow_from_params(p, seed=5, model_name="v1-5-pruned-emaonly.safetensors")
    _check_links(wf)
    assert list(wf) == ["3", "4", "5", "6", "7", "8", "9"]
    assert wf["3"] == {"inputs": {"seed": 5, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
                                  "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                  "latent_image": ["5", 0]},
                       "class_type": "KSampler", "_meta": {"title": "KSampler"}}
    assert wf["4"]["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}
    assert wf["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert wf["6"]["inputs"] == {"text": "beautiful scenery", "clip": ["4", 1]}
    assert wf["7"]["inputs"] == {"text": "text, watermark", "clip": ["4", 1]}
    assert wf["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert wf["9"]["class_type"] == "SaveImage" and wf["9"]["inputs"]["images"] == ["8", 0]
    json.dumps(wf)  # plain JSON


def test_loras_vae_clip_skip_chain():
    p = GenerationParams(prompt="a castle <lora:detail:0.5:0.8> at night <lora:style:1.2>", clip_skip=2,
                         vae="vae-ft-mse.safetensors", model="sub/model.safetensors",
                         loras=[LoraRef("detail", 0.5, 0.8)])
    wf = workflow_from_params(p, seed=1, lora_files={"style": "styles/style_v2.safetensors"})
    _check_links(wf)
    assert wf["4"]["inputs"]["ckpt_name"] == "sub/model.safetensors"
    (vae_id, vae), = _by_class(wf, "VAELoader")
    assert vae == {"vae_name": "vae-ft-mse.safetensors"}
    loras = _by_class(wf, "LoraLoader")
    assert [(i["lora_name"], i["strength_model"], i["strength_clip"]) for _, i in loras] == \
        [("detail.safetensors", 0.8, 0.5), ("styles/style_v2.safetensors", 1.2, 1.2)]
    assert loras[0][1]["model"] == ["4", 0] and loras[1][1]["model"] == [loras[0][0], 0]
    (skip_id, skip), = _by_class(wf, "CLIPSetLastLayer")
    assert skip == {"clip": [loras[1][0], 1], "stop_at_clip_layer": -2}
    assert wf["6"]["inputs"]["clip"] == [skip_id, 0]
    assert "<lora" not in wf["6"]["inputs"]["text"] and wf["6"]["inputs"]["text"].startswith("a castle")
    assert wf["3"]["inputs"]["model"] == [loras[1][0], 0]
    assert wf["8"]["inputs"]["vae"] == [vae_id, 0]


def test_img2img_graph():
    p = GenerationParams(prompt="p", init_image=Path("/somewhere/photo.jpg"), denoise=0.6, width=640, height=448,
                         batch_size=2)
    wf = workflow_from_params(p, seed=3, model_name="m.safetensors")
    _check_links(wf)
    (load_id, load), = _by_class(wf, "LoadImage")
    assert load == {"image": "photo.jpg"}
    (scale_id, scale), = _by_class(wf, "ImageScale")
    assert scale == {"image": [load_id, 0], "upscale_method": "lanczos", "width": 640, "height": 448,
                     "crop": "disabled"}
    assert wf["5"]["class_type"] == "VAEEncode" and wf["5"]["inputs"] == {"pixels": [scale_id, 0], "vae": ["4", 2]}
    (rep_id, rep), = _by_class(wf, "RepeatLatentBatch")
    assert rep == {"samples": ["5", 0], "amount": 2}
    assert wf["3"]["inputs"]["denoise"] == 0.6 and wf["3"]["inputs"]["latent_image"] == [rep_id, 0]
    assert not _by_class(wf, "EmptyLatentImage")


def test_hires_latent_by_scale_and_by_size():
    p = GenerationParams(prompt="p", steps=20, width=512, height=768,
                         hires=HiresParams(scale=1.5, upscaler="Latent (nearest-exact)", steps=0, denoise=0.45))
    wf = workflow_from_params(p, seed=9, model_name="m.safetensors")
    _check_links(wf)
    (up_id, up), = _by_class(wf, "LatentUpscaleBy")
    assert up == {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}
    second = [(k, i) for k, i in _by_class(wf, "KSampler") if k != "3"]
    (sid, s), = second
    assert s["latent_image"] == [up_id, 0] and s["denoise"] == 0.45 and s["steps"] == 20 and s["seed"] == 9
    assert wf["8"]["inputs"]["samples"] == [sid, 0]
    # an explicit size (or a scale that LatentUpscaleBy would round differently) uses LatentUpscale
    p2 = GenerationParams(prompt="p", width=512, height=512,
                          hires=HiresParams(scale=2, upscaler="Latent", width=1024, height=768, steps=7))
    wf2 = workflow_from_params(p2, seed=9, model_name="m.safetensors")
    (_, up2), = _by_class(wf2, "LatentUpscale")
    assert (up2["width"], up2["height"], up2["upscale_method"], up2["crop"]) == (1024, 768, "bilinear", "disabled")
    p3 = GenerationParams(prompt="p", width=504, height=512, hires=HiresParams(scale=1.3, upscaler="Latent (bicubic)"))
    (_, up3), = _by_class(workflow_from_params(p3, seed=1, model_name="m"), "LatentUpscale")
    assert (up3["width"], up3["height"], up3["upscale_method"]) == (648, 664, "bicubic")


def test_hires_image_upscalers():
    p = GenerationParams(prompt="p", width=512, height=512, hires=HiresParams(scale=2, upscaler="Lanczos"))
    wf = workflow_from_params(p, seed=1, model_name="m")
    _check_links(wf)
    (_, scale), = _by_class(wf, "ImageScale")
    assert (scale["upscale_method"], scale["width"], scale["height"]) == ("lanczos", 1024, 1024)
    assert len(_by_class(wf, "VAEDecode")) == 2 and len(_by_class(wf, "VAEEncode")) == 1
    p2 = GenerationParams(prompt="p", hires=HiresParams(scale=2, upscaler="R-ESRGAN 4x+"))
    wf2 = workflow_from_params(p2, seed=1, model_name="m", upscale_model_name="RealESRGAN_x4plus.pth")
    _check_links(wf2)
    (loader_id, loader), = _by_class(wf2, "UpscaleModelLoader")
    assert loader == {"model_name": "RealESRGAN_x4plus.pth"}
    (_, up), = _by_class(wf2, "ImageUpscaleWithModel")
    assert up["upscale_model"] == [loader_id, 0]


def test_refiner_two_advanced_samplers_and_img2img_steps():
    p = GenerationParams(prompt="p <lora:x:1>", negative_prompt="n", steps=20, refiner="refiner.safetensors",
                         refiner_switch=0.8, width=1024, height=1024)
    wf = workflow_from_params(p, seed=11, model_name="base.safetensors")
    _check_links(wf)
    base = wf["3"]["inputs"]
    assert wf["3"]["class_type"] == "KSamplerAdvanced"
    assert (base["add_noise"], base["noise_seed"], base["steps"], base["start_at_step"], base["end_at_step"],
            base["return_with_leftover_noise"]) == ("enable", 11, 20, 0, 16, "enable")
    adv = [(k, i) for k, i in _by_class(wf, "KSamplerAdvanced") if k != "3"]
    (rid, ref), = adv
    assert (ref["add_noise"], ref["start_at_step"], ref["end_at_step"], ref["return_with_leftover_noise"]) == \
        ("disable", 16, 10000, "disable")
    loaders = dict(_by_class(wf, "CheckpointLoaderSimple"))
    ref_ckpt = next(k for k, i in loaders.items() if i["ckpt_name"] == "refiner.safetensors")
    assert ref["model"] == [ref_ckpt, 0] and wf["8"]["inputs"]["vae"] == [ref_ckpt, 2]
    texts = {wf[ref["positive"][0]]["inputs"]["text"], wf[ref["negative"][0]]["inputs"]["text"]}
    assert texts == {"p ", "n"}
    # img2img with denoise 0.5: a 40-step schedule whose last 20 steps run, split at 16
    p2 = GenerationParams(prompt="p", steps=20, refiner="r", init_image=Path("i.png"), denoise=0.5)
    wf2 = workflow_from_params(p2, seed=1, model_name="m")
    b2 = wf2["3"]["inputs"]
    assert (b2["steps"], b2["start_at_step"], b2["end_at_step"]) == (40, 20, 36)


def test_workflow_summary_round_trip_and_errors():
    p = GenerationParams(prompt="a red cube", negative_prompt="blur", sampler="dpmpp_2m", scheduler="karras",
                         steps=17, cfg=5.5, width=384, height=256, loras=[LoraRef("l", 0.3, 0.4)],
                         hires=HiresParams(scale=2, upscaler="Latent", denoise=0.5, steps=6))
    c = summarize_comfy_prompt(workflow_from_params(p, seed=77, model_name="m.safetensors"))
    assert (c["positive"], c["negative"], c["seed"], c["steps"], c["cfg"]) == ("a red cube", "blur", 77, 17, 5.5)
    assert (c["sampler_name"], c["scheduler"], c["width"], c["height"], c["checkpoint"]) == \
        ("dpmpp_2m", "karras", 384, 256, "m.safetensors")
    assert c["loras"] == [{"name": "l.safetensors", "strength_model": 0.4, "strength_clip": 0.3}]
    assert c["second_pass"]["denoise"] == 0.5 and c["second_pass"]["steps"] == 6
    with pytest.raises(ValueError, match="seed"):
        workflow_from_params(p, seed=-1, model_name="m")
    with pytest.raises(ValueError, match="checkpoint"):
        workflow_from_params(p, seed=1)
