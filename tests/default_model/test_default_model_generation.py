"""The shipped default model, run through the engine, follows prompts (checked by the deterministic analyser)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darkroom import default_model
from darkroom.shapes.adherence import make_prompt, prompt_suite, rates, score_image
from darkroom.shapes.analyse import analyse
from darkroom.shapes.dataset import render

pytestmark = pytest.mark.skipif(not default_model.available(), reason="the default model file is not built")

#: Floors for the mixed suite (36 prompts, one third large) at cfg 5: a little below the rates measured on the shipped
#: model (docs/default-model.md: background, colour, position 1.00, size 0.97, kind 0.75), so that arithmetic
#: differences between CPUs cannot flip the result. Issue #3 asks for colour and background ≥ 0.90, position ≥ 0.85.
FLOORS_CFG5 = {"background": 0.90, "colour": 0.90, "position": 0.90, "size": 0.85, "kind": 0.65}
#: Shape kinds are judged on large shapes (issue #3: ≥ 0.80): a small shape spans about 2×2 cells of the 8×8 latent,
#: and its kind is right less often (the mixed suite's kind floor above). Measured on the large suite at cfg 5: kind
#: 0.96 (chance is 0.25).
FLOORS_LARGE_CFG5 = {"kind": 0.85}
ISSUE_KIND_FLOOR = 0.80
#: How much higher the mean of the position and kind rates of the large suite is at cfg 5 than at cfg 1
#: (measured: 0.98 against 0.73; backgrounds 1.00 against 0.71).
GUIDANCE_GAIN = 0.15
SIMPLE = make_prompt("blue", "yellow", "circle", "left", "large")
#: The sampler check's prompt leaves out the position (v1 and v2 missed it often) and checks background, colour and
#: size, so that a miss means a broken sampler rather than the model's usual error: a sampler that mis-scales noise or
#: steps gives mud, not a large yellow shape on flat blue.
SAMPLER_PROMPT = "a large yellow circle on a blue background"
#: Step counts people use with each sampler (LCM is a few-step sampler).
USUAL_STEPS = {"lcm": 8}
#: Schedulers people pair with a sampler (A1111's "Automatic" for the 3M SDE samplers is exponential). On this
#: 8×8-latent model the third/fourth-order multistep samplers derail with the `normal` schedule at cfg 5 (its first
#: step from σ = 14.6 is very large); ipndm also with `exponential`, and works with simple/karras/sgm_uniform/beta.
USUAL_SCHEDULER = {"lms": "karras", "dpmpp_2m_sde": "exponential", "dpmpp_2m_sde_gpu": "exponential",
                   "dpmpp_2m_sde_heun": "exponential", "dpmpp_2m_sde_heun_gpu": "exponential",
                   "dpmpp_3m_sde": "exponential", "dpmpp_3m_sde_gpu": "exponential", "ipndm": "karras"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from darkroom.engine import Engine
    from darkroom.settings import load_settings

    root = tmp_path_factory.mktemp("dr")
    settings = load_settings(models_dir=root / "models", output_dir=root / "out", data_dir=root / "data")
    return Engine(settings, device="cpu", dtype="fp32")


def _gen(engine, prompt: str, seed: int, **kw):
    from darkroom.engine.params import GenerationParams

    p = GenerationParams(prompt=prompt, seed=seed, width=64, height=64, steps=kw.pop("steps", 20), cfg=kw.pop("cfg", 5.0),
                         **kw)
    return engine.generate(p)


_RATES: dict[tuple[str, float], dict[str, float]] = {}
SUITES = {"mixed": lambda: prompt_suite(36), "large": lambda: prompt_suite(24, seed=99, sizes=("large",))}


def _suite_rates(engine, cfg: float, suite: str = "mixed") -> dict[str, float]:
    """Adherence over a fixed prompt suite (prompt i uses seed 100 + i), computed once per (suite, cfg)."""
    if (suite, cfg) not in _RATES:
        specs = SUITES[suite]()
        scores = [score_image(_gen(engine, s.prompt, seed=100 + i, cfg=cfg).images[0], s) for i, s in enumerate(specs)]
        _RATES[suite, cfg] = rates(scores)
    return _RATES[suite, cfg]


def test_checkpoint_file_is_small_single_file_ldm_layout_with_configs() -> None:
    from safetensors import safe_open

    path = default_model.path()
    assert path.suffix == ".safetensors"
    assert path.stat().st_size < 60 * 2**20
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    # the configs the key shapes and the SD1.5 template cannot tell (heads, norm groups, latent scale …)
    config = json.loads(meta["darkroom.config"])
    assert set(config) >= {"unet", "vae", "text_encoder"}
    assert 0.05 < config["vae"]["scaling_factor"] < 5.0
    assert config["unet"]["sample_size"] == 8


def test_loads_through_the_regular_checkpoint_loader() -> None:
    from darkroom.models.family import Family
    from darkroom.models.loader import load_checkpoint

    ckpt = load_checkpoint(default_model.path())
    assert ckpt.kind.family == Family.SD1 and ckpt.kind.prediction == "eps" and not ckpt.kind.inpaint
    assert ckpt.vae_downscale == 8 and ckpt.latent_channels == 4
    assert ckpt.unet.config.cross_attention_dim == ckpt.text_encoders[0].config.hidden_size
    assert ckpt.tokenizers[0]("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert ckpt.schedule.beta_start == pytest.approx(0.00085) and ckpt.schedule.beta_end == pytest.approx(0.012)


def test_used_when_no_other_checkpoint_is_installed(engine) -> None:
    assert engine.checkpoint_path(None).resolve() == default_model.path().resolve()
    assert engine.native_size(None) == (64, 64)


def test_colours_and_backgrounds_are_followed_at_cfg_5(engine) -> None:
    r = _suite_rates(engine, cfg=5.0)
    for attr in ("background", "colour"):
        assert r[attr] >= FLOORS_CFG5[attr], (attr, r)


def test_positions_sizes_and_kinds_are_followed_at_cfg_5(engine) -> None:
    r = _suite_rates(engine, cfg=5.0)
    for attr in ("position", "size", "kind"):
        assert r[attr] >= FLOORS_CFG5[attr], (attr, r)


def test_positions_reach_the_issue_target(engine) -> None:
    assert _suite_rates(engine, cfg=5.0)["position"] >= 0.85  # issue #3's floor (FLOORS_CFG5 is higher)


def test_shape_kinds_are_followed_for_large_shapes(engine) -> None:
    r = _suite_rates(engine, cfg=5.0, suite="large")
    for attr, floor in FLOORS_LARGE_CFG5.items():
        assert r[attr] >= floor, (attr, r)


def test_shape_kinds_reach_the_issue_target(engine) -> None:
    assert _suite_rates(engine, cfg=5.0, suite="large")["kind"] >= ISSUE_KIND_FLOOR  # (FLOORS_LARGE_CFG5 is higher)


def test_guidance_helps(engine) -> None:
    r1 = _suite_rates(engine, cfg=1.0, suite="large")
    r5 = _suite_rates(engine, cfg=5.0, suite="large")
    mean1 = (r1["position"] + r1["kind"]) / 2
    mean5 = (r5["position"] + r5["kind"]) / 2
    assert mean5 >= mean1 + GUIDANCE_GAIN, (r1, r5)
    assert r5["position"] > r1["position"] and r5["kind"] > r1["kind"], (r1, r5)
    assert r5["all"] > r1["all"], (r1, r5)
    assert r5["background"] >= r1["background"], (r1, r5)


def test_same_seed_same_pixels_and_different_seeds_differ(engine) -> None:
    a = _gen(engine, SIMPLE.prompt, seed=7).images[0]
    b = _gen(engine, SIMPLE.prompt, seed=7).images[0]
    c = _gen(engine, SIMPLE.prompt, seed=8).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(c, dtype=np.int16)).mean() > 1.0


def test_batch_images_use_consecutive_seeds(engine) -> None:
    batch = _gen(engine, SIMPLE.prompt, seed=40, batch_size=2)
    single = _gen(engine, SIMPLE.prompt, seed=41)
    assert batch.seeds == [40, 41]
    assert np.array_equal(np.asarray(batch.images[1]), np.asarray(single.images[0]))


def _sampler_names() -> list[str]:
    from darkroom.sampling import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


@pytest.mark.parametrize("sampler", _sampler_names())
def test_every_sampler_draws_the_simple_prompt(engine, sampler: str) -> None:
    steps = USUAL_STEPS.get(sampler, 20)
    scheduler = USUAL_SCHEDULER.get(sampler, "normal")
    hits = 0
    for seed in (1, 2):
        s = score_image(_gen(engine, SAMPLER_PROMPT, seed=seed, sampler=sampler, scheduler=scheduler,
                             steps=steps).images[0], SIMPLE)
        hits += s["background"] and s["colour"] and s["size"]
    assert hits >= 1, sampler


def test_img2img_keeps_a_described_picture(engine, tmp_path) -> None:
    spec = make_prompt("green", "red", "square", "top right", "large")
    init = render(spec.background, [(spec.kind, spec.colour, (44.0, 18.0), 28.0)])
    from PIL import Image

    src = tmp_path / "init.png"
    Image.fromarray(init).save(src)
    out = _gen(engine, spec.prompt, seed=3, init_image=src, denoise=0.5).images[0]
    a = analyse(out)
    assert a.background == "green" and a.main is not None
    assert (a.main.colour, a.main.position) == ("red", "top right")


def test_img2img_follows_a_new_prompt_at_high_denoise(engine, tmp_path) -> None:
    init = render("green", [("square", "red", (44.0, 18.0), 28.0)])
    from PIL import Image

    src = tmp_path / "init.png"
    Image.fromarray(init).save(src)
    target = make_prompt("green", "yellow", "square", "top right", "large")
    hits = sum(score_image(_gen(engine, target.prompt, seed=s, init_image=src, denoise=0.75).images[0], target)["colour"]
               for s in (1, 2, 3))
    assert hits >= 2


def _inpaint(engine, tmp_path, init: np.ndarray, keep: np.ndarray, prompt: str, seed: int) -> np.ndarray:
    """ComfyUI-style inpainting (LoadImage alpha → SetLatentNoiseMask → KSampler at denoise 1 → ImageCompositeMasked
    back onto the original) of the pixels where `keep` is False; → (64, 64, 3) uint8."""
    from PIL import Image

    from darkroom.nodes import run_workflow

    rgba = np.dstack([init, np.where(keep, 255, 0).astype(np.uint8)])  # transparent = repaint, as ComfyUI's mask
    (tmp_path / "in").mkdir(exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in" / "init.png")
    ckpt = default_model.path().name
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "init.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["4", 1]}},
        "7": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["4", 0], "source": ["8", 0], "x": 0,
                                                                "y": 0, "resize_source": False, "mask": ["4", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": f"inpaint{seed}"}},
    }
    result = run_workflow(wf, engine=engine, input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                          temp_dir=tmp_path / "tmp", previews=False)
    item = result.outputs["9"]["images"][0]
    with Image.open(tmp_path / "out" / item["subfolder"] / item["filename"]) as im:
        return np.asarray(im.convert("RGB"))


def test_inpainting_draws_the_prompt_in_the_mask_and_keeps_the_rest(engine, tmp_path) -> None:
    init = render("green", [("square", "red", (46.0, 18.0), 28.0)])  # a red square at the top right
    keep = np.ones((64, 64), dtype=bool)
    keep[32:, :32] = False  # repaint the bottom-left quarter
    target = make_prompt("green", "yellow", "circle", "bottom left", "large")
    hits = 0
    for seed in (1, 2, 3):
        out = _inpaint(engine, tmp_path, init, keep, target.prompt, seed)
        found = {(s.colour, s.position) for s in analyse(out).shapes}
        hits += ("yellow", "bottom left") in found and ("red", "top right") in found
        assert np.array_equal(out[keep], init[keep])  # what was not masked is the original picture
        assert np.abs(out[~keep].astype(int) - init[~keep].astype(int)).mean() > 10  # the masked part was redrawn
    assert hits >= 2
