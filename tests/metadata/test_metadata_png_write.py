"""Writing PNG/JPEG with metadata: chunk round trips, never overwriting, concurrent writers, output naming."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darkroom.metadata.naming import next_free_path, save_image_path, substitute_prefix_vars
from darkroom.metadata.png import (OutputExistsError, UnsafeOutputPathError, read_image_metadata,
                                   write_comfy_images, write_image, write_png)

PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0]}},
          "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}}
WORKFLOW = {"last_node_id": 4, "nodes": [{"id": 3, "type": "KSampler"}], "links": [], "version": 0.4}


def _img(w: int = 16, h: int = 12, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_png_round_trip_all_chunks(tmp_path):
    info = "a cat, 猫\nNegative prompt: dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 16x12"
    img = _img()
    out = write_png(img, tmp_path / "x.png", parameters=info, prompt=PROMPT, workflow=WORKFLOW,
                    extra={"Software": "darkroom", "custom": {"a": [1, 2]}})
    assert out == tmp_path / "x.png"
    with Image.open(out) as back:
        assert back.text["parameters"] == info  # non-Latin-1 text goes into iTXt
        assert json.loads(back.text["prompt"]) == PROMPT
        assert json.loads(back.text["workflow"]) == WORKFLOW
        assert back.text["Software"] == "darkroom" and json.loads(back.text["custom"]) == {"a": [1, 2]}
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(img))
    meta = read_image_metadata(out)
    assert meta.parameters == info and meta.prompt == PROMPT and meta.workflow == WORKFLOW
    assert meta.infotext["Prompt"] == "a cat, 猫" and meta.infotext["Steps"] == "20"
    assert meta.comfy["checkpoint"] == "a.safetensors" and meta.comfy["seed"] == 1


@pytest.mark.parametrize("key,kw", [("parameters", {"parameters": "p\nSteps: 1, Sampler: Euler, Seed: 2"}),
                                    ("prompt", {"prompt": PROMPT}), ("workflow", {"workflow": WORKFLOW})])
def test_each_chunk_alone(tmp_path, key, kw):
    out = write_png(_img(), tmp_path / "one.png", **kw)
    with Image.open(out) as back:
        assert set(back.text) == {key}
    meta = read_image_metadata(out)
    assert not meta.empty


def test_latin1_parameters_use_text_chunk(tmp_path):
    out = write_png(_img(), tmp_path / "t.png", parameters="plain ascii\nSteps: 1, Sampler: Euler, Seed: 2")
    data = out.read_bytes()
    assert b"tEXtparameters\0plain ascii" in data and b"iTXt" not in data


def test_never_overwrites_existing_file(tmp_path):
    target = tmp_path / "mine.png"
    target.write_bytes(b"user's precious file")
    with pytest.raises(OutputExistsError, match="mine.png"):
        write_png(_img(), target, parameters="x")
    assert target.read_bytes() == b"user's precious file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.png"]  # no temp file left behind
    nxt = write_png(_img(), target, parameters="x", on_exists="next")
    assert nxt.name == "mine-1.png" and target.read_bytes() == b"user's precious file"
    assert write_png(_img(), target, on_exists="next").name == "mine-2.png"


def test_missing_folder_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_png(_img(), tmp_path / "nope" / "a.png")
    with pytest.raises(ValueError, match="on_exists"):
        write_png(_img(), tmp_path / "a.png", on_exists="overwrite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Latin-1"):
        write_png(_img(), tmp_path / "a.png", extra={"ключ": "v"})
    assert not (tmp_path / "a.png").exists()
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_normal_permissions(tmp_path):
    out = write_png(_img(), tmp_path / "perm.png")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a1111_numbering_never_reuses_a_number(tmp_path):
    assert next_free_path(tmp_path, seed=5) == tmp_path / "00001-5.png"
    (tmp_path / "00007-123.png").write_bytes(b"x")
    (tmp_path / "00003-9.txt").write_bytes(b"x")
    (tmp_path / "notes-00099.png").write_bytes(b"x")  # not a leading number
    assert next_free_path(tmp_path, seed=42) == tmp_path / "00008-42.png"
    assert next_free_path(tmp_path, "{number:04d}", ext=".jpg") == tmp_path / "0008.jpg"
    with pytest.raises(ValueError, match="seed"):
        next_free_path(tmp_path)
    with pytest.raises(ValueError, match="number"):
        next_free_path(tmp_path, "img-{number}")
    # a batch whose paths were all computed up front still gets distinct numbers with on_exists="next"
    paths = [next_free_path(tmp_path, seed=s) for s in (10, 11, 12)]
    assert len({p.name[:5] for p in paths}) == 1
    written = [write_png(_img(), p, on_exists="next") for p in paths]
    assert [w.name for w in written] == ["00008-10.png", "00009-11.png", "00010-12.png"]


def _race(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_a1111_writers_get_distinct_numbers(tmp_path):
    img = _img()
    paths = _race(8, lambda i: write_png(img, next_free_path(tmp_path, seed=1000 + i), on_exists="next"))
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    # Distinct numbers, nothing lost or overwritten. Racing writers may skip a number (a loser re-checks after
    # linking and moves on), as A1111's own counter can; they never share one.
    assert len(set(numbers)) == 8 and numbers[0] >= 1 and numbers[-1] <= 16, numbers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_concurrent_comfy_writers_get_distinct_names(tmp_path):
    img = _img()

    def save(i: int) -> Path:
        folder, base, counter, _ = save_image_path(tmp_path, "race/img")
        return write_png(img, folder / f"{base}_{counter:05}_.png", on_exists="next")

    paths = _race(8, save)
    assert sorted(p.name for p in paths) == [f"img_{i:05}_.png" for i in range(1, 9)]


def test_concurrent_same_name_one_wins(tmp_path):
    img = _img()
    target = tmp_path / "same.png"

    def save(i: int):
        try:
            return write_png(img, target, parameters=f"writer {i}")
        except OutputExistsError:
            return None

    results = _race(6, save)
    assert sum(r is not None for r in results) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["same.png"]


def test_comfy_save_image_path_counter_and_subfolders(tmp_path):
    folder, base, counter, sub = save_image_path(tmp_path, "ComfyUI", 512, 512)
    assert (folder, base, counter, sub) == (tmp_path, "ComfyUI", 1, "")
    for name in ("ComfyUI_00001_.png", "ComfyUI_00004_.png", "x.png",
                 "ComfyUI_extra_00050_.png", "ComfyUIx_00077_.png", "ComfyUI_00002_.png.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert save_image_path(tmp_path, "ComfyUI")[2] == 5
    folder, base, counter, sub = save_image_path(tmp_path, "shots/%width%x%height%/cat", 640, 480)
    assert folder == tmp_path / "shots" / "640x480" and folder.is_dir()
    assert (base, counter, sub) == ("cat", 1, "shots/640x480")
    names = write_comfy_images([_img(), _img(seed=1)], tmp_path, "batch_%batch_num%", prompt=PROMPT,
                               extra_pnginfo={"workflow": WORKFLOW})
    assert [r["filename"] for r in names] == ["batch_0_00001_.png", "batch_1_00002_.png"]
    meta = read_image_metadata(tmp_path / "batch_1_00002_.png")
    assert meta.prompt == PROMPT and meta.workflow == WORKFLOW and meta.source == "comfyui"


def test_comfy_prefix_variables():
    now = time.struct_time((2024, 3, 7, 9, 5, 2, 3, 67, -1))
    assert substitute_prefix_vars("%year%-%month%-%day%_%hour%%minute%%second%_%width%", 8, 16, now=now) == \
        "2024-03-07_090502_8"
    assert substitute_prefix_vars("%date:yyyy-MM-dd%/%date:hh-mm-ss%_%date:yy.M.d%", now=now) == \
        "2024-03-07/09-05-02_24.3.7"
    assert substitute_prefix_vars("%Node.widget%_x", now=now) == "%Node.widget%_x"


@pytest.mark.parametrize("prefix", ["../evil", "a/../../evil", "/etc/evil", "C:\\evil", "..\\..\\evil"])
def test_prefix_escaping_output_is_rejected(tmp_path, prefix):
    out = tmp_path / "output"
    out.mkdir()
    with pytest.raises(UnsafeOutputPathError):
        save_image_path(out, prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]


def test_symlinked_subfolder_escape_is_rejected(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeOutputPathError):
        save_image_path(out, "link/img")
    folder, _, _, sub = save_image_path(out, "a/./b/../c/img")
    assert folder == out / "a" / "c" and sub == "a/c"


def test_jpeg_and_webp_carry_infotext_in_exif(tmp_path):
    info = "a fox, 狐\nNegative prompt: x\nSteps: 9, Sampler: Euler, CFG scale: 3, Seed: 4, Size: 16x12"
    for ext in (".jpg", ".webp"):
        out = write_image(_img(), tmp_path / f"fox{ext}", parameters=info)
        meta = read_image_metadata(out)
        assert meta.parameters == info and meta.source == "a1111"
        assert meta.infotext["Prompt"] == "a fox, 狐"
    with pytest.raises(ValueError, match="unsupported"):
        write_image(_img(), tmp_path / "x.gif")


def test_filesystem_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "hard links not supported", str(dst))

    monkeypatch.setattr(os, "link", no_link)
    first = write_png(_img(), tmp_path / "f.png", parameters="one")
    assert read_image_metadata(first).parameters == "one"
    with pytest.raises(OutputExistsError):
        write_png(_img(), first, parameters="two")
    assert read_image_metadata(first).parameters == "one"
    paths = [write_png(_img(), next_free_path(tmp_path, seed=s), on_exists="next") for s in (1, 2)]
    assert [p.name for p in paths] == ["00001-1.png", "00002-2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-1.png", "00002-2.png", "f.png"]


def test_unwritable_image_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot write a CMYK image as PNG"):
        write_png(Image.new("CMYK", (4, 4)), tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []
