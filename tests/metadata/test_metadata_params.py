"""Our GenerationParams ↔ A1111 infotext keys (uses darkroom.sampling.names for the sampler labels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom import __version__
from darkroom.engine.params import GenerationParams, HiresParams, LoraRef
from darkroom.metadata.infotext import infotext_for, parse_infotext, params_from_infotext

pytest.importorskip("darkroom.sampling.names")


def test_infotext_for_txt2img_hires_loras():
    p = GenerationParams(prompt="a (red) cube <lora:detail:0.7>", negative_prompt="blurry, lowres",
                         sampler="dpmpp_2m", scheduler="karras", steps=24, cfg=6.0, width=512, height=640,
                         clip_skip=2, vae="vae-ft-mse.safetensors",
                         hires=HiresParams(scale=1.5, upscaler="Latent", steps=12, denoise=0.55),
                         loras=[LoraRef("detail", 0.7, 0.7)])
    text = infotext_for(p, seed=1234, model_name="dreamy_v2.safetensors", model_hash="0123456789",
                        vae_hash="abcdef0123", lora_hashes={"detail": "7c6bad76eb54"},
                        extra={"ENSD": 31337, "Custom key": "x: y"})
    assert text == (
        "a (red) cube <lora:detail:0.7>\nNegative prompt: blurry, lowres\n"
        "Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1234, Size: 512x640, "
        "Model hash: 0123456789, Model: dreamy_v2, VAE hash: abcdef0123, VAE: vae-ft-mse.safetensors, "
        "Denoising strength: 0.55, Clip skip: 2, ENSD: 31337, Hires upscale: 1.5, Hires steps: 12, "
        "Hires upscaler: Latent, Lora hashes: \"detail: 7c6bad76eb54\", Custom key: \"x: y\", "
        f"Version: darkroom {__version__}")


def test_infotext_for_minimal_txt2img_omits_optional_keys():
    p = GenerationParams(prompt="cat", sampler="euler_ancestral", scheduler="karras", steps=20, cfg=7.5)
    text = infotext_for(p, seed=7, model_name="m")
    assert text.startswith("cat\nSteps: 20, Sampler: Euler a, ")
    assert "CFG scale: 7.5, Seed: 7, Size: 512x512, Model: m, Version: darkroom" in text
    for key in ("Negative prompt", "Clip skip", "Denoising strength", "Hires", "Model hash", "VAE", "Refiner"):
        assert key not in text
    assert infotext_for(p, seed=7, model_name="m", extra={"Version": "v9"}).endswith(", Version: v9")
    assert infotext_for(p, seed=7, model_name="m", version="x 1").endswith(", Version: x 1")


def test_infotext_for_img2img_and_refiner_and_engine_extras():
    p = GenerationParams(prompt="x", init_image=Path("/tmp/in.png"), denoise=0.6, sampler="euler",
                         scheduler="karras", refiner="sd_xl_refiner_1.0.safetensors", refiner_switch=0.8)
    # the engine passes ready-made hash strings through `extra`; they keep A1111's slot order
    text = infotext_for(p, seed=1, model_name="base", extra={"TI hashes": "neg: 1", "Lora hashes": "l: 2"},
                        refiner_hash="7440042bbd")
    line = text.splitlines()[-1]
    assert "Denoising strength: 0.6" in line
    assert line.index("Lora hashes") < line.index("TI hashes") < line.index("Refiner: sd_xl_refiner_1.0 [7440042bbd]")
    assert "Refiner switch at: 0.8" in line


def test_params_from_infotext_round_trip():
    p = GenerationParams(prompt="a\nb", negative_prompt="n", sampler="dpmpp_2m", scheduler="karras", steps=31,
                         cfg=4.5, seed=99, width=576, height=448, clip_skip=3, vae="v.safetensors",
                         hires=HiresParams(scale=2.0, upscaler="Latent (nearest-exact)", steps=5, denoise=0.4))
    text = infotext_for(p, seed=99, model_name="model_x", model_hash="00ff00ff00")
    q, extras = params_from_infotext(text)
    assert (q.prompt, q.negative_prompt, q.sampler, q.scheduler) == ("a\nb", "n", "dpmpp_2m", "karras")
    assert (q.steps, q.cfg, q.seed, q.width, q.height, q.clip_skip) == (31, 4.5, 99, 576, 448, 3)
    assert q.model == "model_x" and q.vae == "v.safetensors"
    assert q.hires == HiresParams(scale=2.0, upscaler="Latent (nearest-exact)", steps=5, denoise=0.4)
    assert extras["Model hash"] == "00ff00ff00" and extras["Version"].startswith("darkroom")


def test_params_from_real_a1111_infotext():
    text = ("castle on a hill\nNegative prompt: fog\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, "
            "Seed: 5, Size: 768x512, Model hash: 6ce0161689, Model: v1-5, Denoising strength: 0.35, "
            "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.7, Version: v1.6.0")
    q, extras = params_from_infotext(text)
    assert (q.sampler, q.scheduler) == ("dpmpp_2m", "karras")  # old combined label
    assert q.hires is None and q.denoise == 0.35  # no hires keys: an img2img strength
    assert q.refiner == "sd_xl_refiner_1.0" and q.refiner_switch == 0.7
    assert (q.width, q.height) == (768, 512)
    assert extras == {"Model hash": "6ce0161689", "Version": "v1.6.0"}
    assert parse_infotext(text)["Refiner switch by sampling steps"] is True  # v1.6 < 1.8 back-compat


def test_params_from_infotext_bad_number_is_clear():
    from darkroom.metadata.infotext import InfotextError

    with pytest.raises(InfotextError, match="Steps"):
        params_from_infotext("x\nSteps: many, Sampler: Euler, Seed: 1, CFG scale: 7")
