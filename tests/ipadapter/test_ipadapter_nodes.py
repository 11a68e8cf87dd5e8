"""A ComfyUI-style workflow with CLIPVisionLoader, IPAdapterModelLoader and IPAdapterAdvanced runs end to end on a
tiny checkpoint and gives the pixels of the same steps called directly; weight 0 equals no IP-Adapter."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ipa_studio import ENCODER, PLUS, REFERENCE, shared_ip_studio
from PIL import Image

from darkroom.engine import pipeline
from darkroom.ipadapter.attention import attach, installed
from darkroom.ipadapter.clip_vision import ClipVisionOutput, load_clip_vision
from darkroom.ipadapter.model import load_ipadapter
from darkroom.nodes import run_workflow
from darkroom.nodes.ipadapter import CLIPVisionEncode, reference_use

SEED, STEPS, CFG = 5, 3, 5.0
BASE: dict = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ip", "images": ["8", 0]}},
}


def with_ipadapter(weight: float, *, start: float = 0.0, end: float = 1.0, weight_type: str = "linear") -> dict:
    wf = copy.deepcopy(BASE)
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    wf["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": ENCODER}}
    wf["12"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": PLUS}}
    wf["13"] = {"class_type": "IPAdapterAdvanced",
                "inputs": {"model": ["4", 0], "ipadapter": ["12", 0], "image": ["10", 0], "weight": weight,
                           "weight_type": weight_type, "combine_embeds": "concat", "start_at": start, "end_at": end,
                           "embeds_scaling": "V only", "clip_vision": ["11", 0]}}
    wf["3"]["inputs"]["model"] = ["13", 0]
    return wf


@pytest.fixture(scope="module")
def studio():
    """The shared tiny studio: checkpoint, CLIP vision encoder, a plus IP-Adapter and the reference picture."""
    st = shared_ip_studio()
    return {"root": st.root, "engine": st.engine, "input": st.input_dir, "output": st.output_dir,
            "temp": st.temp_dir}


def run(studio, wf: dict) -> np.ndarray:
    before = set(studio["output"].rglob("*.png"))
    result = run_workflow(wf, engine=studio["engine"], input_dir=studio["input"], output_dir=studio["output"],
                          temp_dir=studio["temp"])
    assert result.status == "success", result.error
    (png,) = set(studio["output"].rglob("*.png")) - before
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


def direct(studio, weight: float, start: float, end: float) -> np.ndarray:
    """The same generation through the engine's steps and the ipadapter package, without the graph."""
    root = studio["root"]
    ckpt = studio["engine"].load("tiny-sd15.safetensors")
    vision = load_clip_vision(root / "clip_vision" / ENCODER)
    adapter = load_ipadapter(root / "ipadapter" / PLUS)
    image = torch.from_numpy(np.asarray(Image.open(studio["input"] / REFERENCE).convert("RGB"),
                                        dtype=np.float32) / 255.0)[None]
    use = reference_use(adapter, vision, image, weight=weight, start_at=start, end_at=end)
    ms = pipeline.model_sampling_for(ckpt)
    pos = attach(pipeline.encode_text(ckpt, "a cat", style="comfy"), [use], ms)
    neg = attach(pipeline.encode_text(ckpt, "blurry", style="comfy"), [use], ms)
    with installed(ckpt.unet, [use]):
        out = pipeline.ksample(ckpt, torch.zeros((1, 4, 8, 8)), pos, neg, seed=SEED, steps=STEPS, cfg=CFG,
                               sampler="euler", scheduler="normal")
    return np.clip(255.0 * pipeline.decode(ckpt, out)[0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)


def test_workflow_runs_and_matches_direct_steps(studio):
    plain = run(studio, copy.deepcopy(BASE))
    guided = run(studio, with_ipadapter(1.0, start=0.0, end=0.7))
    assert np.abs(guided - plain).max() > 3  # the reference image changes the picture
    assert np.array_equal(guided, direct(studio, 1.0, 0.0, 0.7))
    assert np.array_equal(run(studio, with_ipadapter(0.0)), plain)  # weight 0 == no IP-Adapter
    # 3 "normal" steps evaluate sigmas 14.6, 1.62, 0.029: a window of sigmas [1.91, 5.09] holds none of them,
    # [1.37, 1.91] only the middle one
    assert np.array_equal(run(studio, with_ipadapter(1.0, start=0.2, end=0.45)), plain)
    middle = run(studio, with_ipadapter(1.0, start=0.45, end=0.55))
    assert np.abs(middle - plain).max() > 0 and np.abs(middle - guided).max() > 0
    # an attention mask of zeros keeps the reference out everywhere; of ones, everywhere in
    masked = with_ipadapter(1.0, start=0.0, end=0.7)
    masked["15"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    masked["13"]["inputs"]["attn_mask"] = ["15", 0]
    assert np.array_equal(run(studio, masked), plain)
    masked["15"]["inputs"]["value"] = 1.0
    assert np.array_equal(run(studio, masked), guided)
    # two IPAdapterAdvanced in a chain: a second one at weight 0 changes nothing, at 0.8 it does
    chained = with_ipadapter(1.0, start=0.0, end=0.7)
    chained["14"] = copy.deepcopy(chained["13"])
    chained["14"]["inputs"].update(model=["13", 0], weight=0.0, weight_type="ease in", combine_embeds="average")
    chained["3"]["inputs"]["model"] = ["14", 0]
    assert np.array_equal(run(studio, chained), guided)
    chained["14"]["inputs"]["weight"] = 0.8
    assert np.abs(run(studio, chained) - guided).max() > 0
    # the UNet is left as it was: a plain run after the guided ones is unchanged
    assert np.array_equal(run(studio, copy.deepcopy(BASE)), plain)


def test_unsupported_options_fail_with_a_message(studio):
    result = run_workflow(with_ipadapter(1.0, weight_type="style transfer precise"), engine=studio["engine"],
                          input_dir=studio["input"], output_dir=studio["output"], temp_dir=studio["temp"])
    assert result.status != "success"
    assert "not supported" in str(result.error)


def test_negative_image_gives_the_uncond_tokens(studio):
    root = studio["root"]
    vision = load_clip_vision(root / "clip_vision" / ENCODER)
    adapter = load_ipadapter(root / "ipadapter" / PLUS)
    img, neg = torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)
    use = reference_use(adapter, vision, img, image_negative=neg)
    torch.testing.assert_close(use.uncond, adapter.project(vision.encode(neg).penultimate_hidden_states))
    default = reference_use(adapter, vision, img)
    torch.testing.assert_close(default.cond, use.cond)
    assert not torch.allclose(default.uncond, use.uncond)


def test_clip_vision_encode_node(studio):
    vision = load_clip_vision(studio["root"] / "clip_vision" / ENCODER)
    img = torch.rand(2, 32, 48, 3)
    (out,) = CLIPVisionEncode().execute(None, vision, img, "none")
    assert isinstance(out, ClipVisionOutput) and out.image_embeds.shape == (2, 32)
    (centre,) = CLIPVisionEncode().execute(None, vision, img, "center")
    assert not torch.allclose(out.image_embeds, centre.image_embeds)
    with pytest.raises(TypeError, match="clip_vision"):
        CLIPVisionEncode().execute(None, "nope", img, "center")
