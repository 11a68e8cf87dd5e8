"""`darkroom generate / models / info` end to end on tiny checkpoints in the real A1111 single-file layout."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darkroom.cli import main
from darkroom.testing.tiny import shared_tiny_checkpoint

SIZE = ["--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    return root


def _gen(models: Path, out: Path, *extra: str) -> int:
    return main(["generate", "a red circle", "--models-dir", str(models), "--output-dir", str(out), "--steps", "2",
                 "--quiet", *SIZE, *extra])


def _png(path: Path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), dict(im.text)


def test_generate_writes_png_with_infotext_and_workflow(models, tmp_path, capsys):
    assert _gen(models, tmp_path, "--seed", "5", "-n", "blurry", "--cfg", "4.5", "--sampler", "DPM++ 2M Karras") == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00001-5.png"]
    assert capsys.readouterr().out.strip() == str(files[0])
    pixels, text = _png(files[0])
    assert pixels.shape == (64, 64, 3)
    info = text["parameters"]
    assert info.splitlines()[0] == "a red circle"
    assert info.splitlines()[1] == "Negative prompt: blurry"
    digest = hashlib.sha256((models / "checkpoints" / "tiny.safetensors").read_bytes()).hexdigest()[:10]
    for part in ("Steps: 2", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 4.5", "Seed: 5",
                 "Size: 64x64", f"Model hash: {digest}", "Model: tiny"):
        assert part in info, (part, info)
    workflow = json.loads(text["prompt"])
    ks = next(n for n in workflow.values() if n["class_type"] == "KSampler")
    assert ks["inputs"]["seed"] == 5 and ks["inputs"]["sampler_name"] == "dpmpp_2m"
    assert ks["inputs"]["scheduler"] == "karras"
    ck = next(n for n in workflow.values() if n["class_type"] == "CheckpointLoaderSimple")
    assert ck["inputs"]["ckpt_name"] == "tiny.safetensors"


def test_same_seed_same_pixels_and_batch_images_reproduce_alone(models, tmp_path):
    a, b, batch = tmp_path / "a", tmp_path / "b", tmp_path / "batch"
    assert _gen(models, a, "--seed", "11") == 0
    assert _gen(models, b, "--seed", "11") == 0
    assert _gen(models, batch, "--seed", "10", "--batch", "2") == 0
    pa, _ = _png(next(a.glob("*.png")))
    pb, _ = _png(next(b.glob("*.png")))
    np.testing.assert_array_equal(pa, pb)
    files = sorted(batch.glob("*.png"))
    assert [f.name for f in files] == ["00001-10.png", "00002-11.png"]
    second, text = _png(files[1])
    np.testing.assert_array_equal(second, pa)  # image 2 of the batch == the seed-11 image made alone
    assert "Seed: 11" in text["parameters"]
    first, _ = _png(files[0])
    assert np.abs(first.astype(int) - second.astype(int)).max() > 0


def test_never_overwrites(models, tmp_path, capsys):
    target = tmp_path / "mine.png"
    target.write_bytes(b"precious")
    assert _gen(models, tmp_path, "-o", str(target)) == 2
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"
    assert _gen(models, tmp_path, "--seed", "1") == 0
    assert _gen(models, tmp_path, "--seed", "1") == 0
    assert sorted(p.name for p in tmp_path.glob("0*.png")) == ["00001-1.png", "00002-1.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "65"], "width must be a positive multiple of 8"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--model", "nope"], "tiny.safetensors"),  # the error lists what is available
        (["--sampler", "warp_drive"], "warp_drive"),
        (["--init-image", "/no/such.png"], "/no/such.png"),
        (["--seed", "-5"], "seed"),
    ],
)
def test_bad_input_exit_2_with_message(models, tmp_path, capsys, args, message):
    assert _gen(models, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("darkroom: error:") and message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_corrupt_and_pickle_checkpoints_are_named(tmp_path, capsys):
    ck = tmp_path / "m" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (ck / "old.ckpt").write_bytes(b"not really a pickle")
    assert _gen(tmp_path / "m", tmp_path, "--model", "broken") == 2
    assert "broken.safetensors" in capsys.readouterr().err
    assert _gen(tmp_path / "m", tmp_path, "--model", "old") == 2
    err = capsys.readouterr().err
    assert "old.ckpt" in err and "safetensors" in err


def test_img2img_and_hires(models, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    out = tmp_path / "i2i"
    assert _gen(models, out, "--seed", "3", "--init-image", str(init), "--denoise", "0.5") == 0
    _, text = _png(next(out.glob("*.png")))
    assert "Denoising strength: 0.5" in text["parameters"]
    hires = tmp_path / "hires"
    assert _gen(models, hires, "--seed", "3", "--hires-scale", "2", "--hires-steps", "1") == 0
    pixels, text = _png(next(hires.glob("*.png")))
    assert pixels.shape == (128, 128, 3)
    assert "Hires upscale: 2" in text["parameters"]


def test_models_and_info_commands(models, tmp_path, capsys):
    assert main(["models", "--models-dir", str(models)]) == 0
    line = capsys.readouterr().out.strip()
    digest = hashlib.sha256((models / "checkpoints" / "tiny.safetensors").read_bytes()).hexdigest()[:10]
    assert line.startswith("tiny.safetensors\tSD1.x\t" + digest)
    assert _gen(models, tmp_path, "--seed", "9") == 0
    capsys.readouterr()
    assert main(["info", str(next(tmp_path.glob("*.png")))]) == 0
    out = capsys.readouterr().out
    assert "a red circle" in out and "Seed: 9" in out or "9" in out
    (tmp_path / "junk.png").write_bytes(b"nope")
    assert main(["info", str(tmp_path / "junk.png")]) == 2


def test_console_script_entry_point(models, tmp_path):
    exe = Path(sys.executable).with_name("darkroom")
    r = subprocess.run([str(exe), "generate", "x", "--models-dir", str(models), "--output-dir", str(tmp_path),
                        "--steps", "1", "--width", "8", "--height", "12", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "height must be a positive multiple of 8" in r.stderr


def test_lora_tag_changes_image_and_is_recorded(models, tmp_path):
    from darkroom.testing.lora_files import write_kohya_lora
    from darkroom.testing.tiny import shared_tiny_components

    comps = shared_tiny_components("sd15")
    (models / "loras").mkdir(exist_ok=True)
    lora = write_kohya_lora(models / "loras" / "style.safetensors", comps["unet"], [comps["text_encoder"]])
    plain, tagged, again = tmp_path / "plain", tmp_path / "tagged", tmp_path / "again"
    assert _gen(models, plain, "--seed", "4") == 0
    assert main(["generate", "a red circle <lora:style:0.8>", "--models-dir", str(models), "--output-dir",
                 str(tagged), "--steps", "2", "--quiet", "--seed", "4", *SIZE]) == 0
    assert _gen(models, again, "--seed", "4") == 0  # the LoRA is taken out again
    p0, _ = _png(next(plain.glob("*.png")))
    p1, text = _png(next(tagged.glob("*.png")))
    p2, _ = _png(next(again.glob("*.png")))
    assert np.abs(p0.astype(int) - p1.astype(int)).max() > 0
    np.testing.assert_array_equal(p0, p2)
    from darkroom.models.hashing import lora_hash

    assert f'Lora hashes: "style: {lora_hash(lora)}"' in text["parameters"]
    assert text["parameters"].splitlines()[0] == "a red circle <lora:style:0.8>"
