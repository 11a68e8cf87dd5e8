"""Simple mode is a graph: the ComfyUI workflow embedded in each image made by `Engine.generate`, run through the
node engine, gives exactly the same pixels — for plain and A1111-weighted prompts, img2img, hires fix, LoRA and
seamless tiling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darkroom.engine import Engine, GenerationParams, HiresParams
from darkroom.nodes import run_workflow
from darkroom.settings import Settings
from darkroom.testing.lora_files import write_kohya_lora
from darkroom.testing.tiny import shared_tiny_checkpoint, shared_tiny_components


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("m")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    comps = shared_tiny_components("sd15")
    write_kohya_lora(root / "loras" / "style.safetensors", comps["unet"], [comps["text_encoder"]])
    return Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"))


def _run_embedded(engine: Engine, workflow: dict, tmp_path: Path, init: Path | None = None) -> np.ndarray:
    inp, out, tmp = tmp_path / "input", tmp_path / "output", tmp_path / "temp"
    for d in (inp, out, tmp):
        d.mkdir(exist_ok=True)
    if init is not None:
        shutil.copy(init, inp / init.name)
    result = run_workflow(workflow, engine=engine, input_dir=inp, output_dir=out, temp_dir=tmp)
    assert result.status == "success", result.error
    (png,) = list(out.rglob("*.png"))
    return np.asarray(Image.open(png).convert("RGB"))


CASES = {
    "plain": dict(prompt="a red circle at the top left", negative_prompt="blurry"),
    "a1111 weights": dict(prompt="a (red:1.3) circle, [blue] background BREAK square", negative_prompt="(ugly)"),
    "lora tag": dict(prompt="a red circle <lora:style:0.7>", negative_prompt=""),
    "hires": dict(prompt="a circle", hires=HiresParams(scale=1.5, steps=2, denoise=0.6)),
    "hires lanczos": dict(prompt="a circle", hires=HiresParams(scale=2, steps=1, upscaler="Lanczos")),
    "karras ancestral": dict(prompt="a circle", sampler="euler_ancestral", scheduler="karras"),
    "tiling hires": dict(prompt="a circle", tiling=True, hires=HiresParams(scale=1.5, steps=1, upscaler="Lanczos")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_embedded_workflow_reproduces_the_image(engine, tmp_path, case):
    params = GenerationParams(width=64, height=64, steps=3, cfg=5.0, seed=21, **CASES[case])
    result = engine.generate(params)
    ours = np.asarray(result.images[0])
    theirs = _run_embedded(engine, result.workflows[0], tmp_path)
    np.testing.assert_array_equal(ours, theirs)
    encoders = {n["class_type"] for n in result.workflows[0].values() if "TextEncode" in n["class_type"]}
    # Only prompts whose meaning differs between the tools need darkroom's A1111 node.
    assert encoders == ({"CLIPTextEncodeA1111"} if case == "a1111 weights" else {"CLIPTextEncode"})
    classes = [n["class_type"] for n in result.workflows[0].values()]
    assert classes.count("SeamlessTiling") == (1 if params.tiling else 0)


def test_seamless_tiling_node_switches_the_padding(engine, tmp_path):
    """The tiled image's workflow turned off (enabled=False) gives the untiled image: the node is what differs."""
    params = GenerationParams(prompt="a circle", width=64, height=64, steps=3, cfg=5.0, seed=4, tiling=True)
    tiled = engine.generate(params)
    plain = np.asarray(engine.generate(GenerationParams(**{**params.__dict__, "tiling": False})).images[0])
    assert np.abs(np.asarray(tiled.images[0]).astype(int) - plain.astype(int)).max() > 0
    wf = tiled.workflows[0]
    (node,) = [n for n in wf.values() if n["class_type"] == "SeamlessTiling"]
    node["inputs"]["enabled"] = False
    np.testing.assert_array_equal(_run_embedded(engine, wf, tmp_path), plain)
    unet = engine.load("tiny.safetensors").unet
    assert all(m.padding_mode == "zeros" for m in unet.modules() if hasattr(m, "padding_mode"))  # restored


def test_img2img_workflow_reproduces_the_image(engine, tmp_path):
    init = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    params = GenerationParams(prompt="a circle", width=64, height=64, steps=4, seed=2, init_image=init, denoise=0.5)
    result = engine.generate(params)
    theirs = _run_embedded(engine, result.workflows[0], tmp_path, init=init)
    np.testing.assert_array_equal(np.asarray(result.images[0]), theirs)


@pytest.fixture(scope="module")
def sdxl_engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("xl")
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sdxl-base"), root / "checkpoints" / "xl.safetensors")
    shutil.copy(shared_tiny_checkpoint("sdxl-refiner"), root / "checkpoints" / "xl-refiner.safetensors")
    return Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"))


@pytest.mark.parametrize("refiner", [None, "xl-refiner"])
def test_sdxl_and_refiner_workflow_reproduces_the_image(sdxl_engine, tmp_path, refiner):
    params = GenerationParams(prompt="a red circle", negative_prompt="blurry", model="xl", width=64, height=64,
                              steps=4, seed=8, cfg=4.0, refiner=refiner, refiner_switch=0.5)
    result = sdxl_engine.generate(params)
    theirs = _run_embedded(sdxl_engine, result.workflows[0], tmp_path)
    np.testing.assert_array_equal(np.asarray(result.images[0]), theirs)
    if refiner:
        samplers = [n for n in result.workflows[0].values() if n["class_type"] == "KSamplerAdvanced"]
        assert [s["inputs"]["end_at_step"] for s in samplers] == [2, 10000]
        plain = sdxl_engine.generate(GenerationParams(**{**params.__dict__, "refiner": None}))
        assert np.abs(np.asarray(plain.images[0]).astype(int) - np.asarray(result.images[0]).astype(int)).max() > 0
