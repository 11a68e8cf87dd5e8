"""Image and mask nodes, LoadImage / SaveImage / PreviewImage with real files (no models needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.graph import NodeContext
from darkroom.metadata.naming import UnsafeOutputPathError
from darkroom.nodes import bind
from darkroom.nodes.image import (
    EmptyImage,
    ImageBatch,
    ImageCompositeMasked,
    ImageInvert,
    ImagePadForOutpaint,
    ImageScale,
    ImageScaleBy,
    LoadImage,
    LoadImageMask,
    PreviewImage,
    SaveImage,
)
from darkroom.nodes.mask import FeatherMask, GrowMask, ImageToMask, InvertMask, MaskToImage, SolidMask
from darkroom.nodes.services import MissingServiceError


def ctx(tmp_path: Path | None = None, name: str = "Test") -> NodeContext:
    services = {}
    if tmp_path is not None:
        services = {"input_dir": tmp_path / "input", "output_dir": tmp_path / "output", "temp_dir": tmp_path / "temp"}
        for p in services.values():
            p.mkdir(exist_ok=True)
    return NodeContext(node_id="1", prompt_id="p", class_type=name, services=services)


def comfy_outpaint_mask(h, w, left, top, right, bottom, feathering):
    """ComfyUI's per-pixel loop, as a reference."""
    t = np.zeros((h, w), dtype=np.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                dt = i if top != 0 else h
                db = h - i if bottom != 0 else h
                dl = j if left != 0 else w
                dr = w - j if right != 0 else w
                d = min(dt, db, dl, dr)
                if d >= feathering:
                    continue
                v = (feathering - d) / feathering
                t[i, j] = v * v
    return t


@pytest.mark.parametrize("sides,feathering", [((8, 0, 16, 8), 5), ((0, 8, 0, 0), 3), ((8, 8, 8, 8), 12),
                                               ((0, 0, 8, 0), 0)])
def test_pad_for_outpaint_matches_comfyui_loop(sides, feathering):
    left, top, right, bottom = sides
    image = torch.rand(2, 20, 24, 3)
    padded, mask = ImagePadForOutpaint().execute(ctx(), image, left, top, right, bottom, feathering)
    assert padded.shape == (2, 20 + top + bottom, 24 + left + right, 3)
    torch.testing.assert_close(padded[:, top : top + 20, left : left + 24], image)
    expected = np.ones((20 + top + bottom, 24 + left + right), dtype=np.float32)
    expected[top : top + 20, left : left + 24] = comfy_outpaint_mask(20, 24, left, top, right, bottom, feathering)
    np.testing.assert_allclose(mask[0].numpy(), expected, rtol=0, atol=1e-6)


def test_image_scale_keeps_aspect_and_crops():
    img = torch.rand(1, 40, 60, 3)
    (out,) = ImageScale().execute(ctx(), img, "bilinear", 0, 20, "disabled")
    assert out.shape == (1, 20, 30, 3)
    (same,) = ImageScale().execute(ctx(), img, "bilinear", 0, 0, "disabled")
    assert same is img
    (sq,) = ImageScale().execute(ctx(), img, "nearest-exact", 40, 40, "center")
    torch.testing.assert_close(sq, img[:, :, 10:50])
    (by,) = ImageScaleBy().execute(ctx(), img, "lanczos", 0.5)
    assert by.shape == (1, 20, 30, 3) and 0 <= float(by.min()) and float(by.max()) <= 1


def test_empty_image_invert_and_batch():
    (img,) = EmptyImage().execute(ctx(), 6, 4, 2, 0x3366CC)
    assert img.shape == (2, 4, 6, 3)
    torch.testing.assert_close(img[1, 3, 5], torch.tensor([0x33, 0x66, 0xCC]) / 255.0)
    (inv,) = ImageInvert().execute(ctx(), img)
    torch.testing.assert_close(inv, 1.0 - img)
    (batch,) = ImageBatch().execute(ctx(), img, torch.zeros(1, 8, 8, 3))
    assert batch.shape == (3, 4, 6, 3) and batch[2].abs().sum() == 0


def test_image_composite_masked_clips_and_blends():
    dst = torch.zeros(1, 10, 10, 3)
    src = torch.ones(1, 4, 4, 3)
    (plain,) = ImageCompositeMasked().execute(ctx(), dst, src, 8, 8, False)
    assert plain[0, 8:, 8:].min() == 1 and plain.sum() == 4 * 3 and dst.sum() == 0
    (half,) = ImageCompositeMasked().execute(ctx(), dst, src, 0, 0, False, torch.full((4, 4), 0.5))
    assert torch.allclose(half[0, :4, :4], torch.full((4, 4, 3), 0.5))
    (resized,) = ImageCompositeMasked().execute(ctx(), dst, src, 0, 0, True)
    assert resized.shape == dst.shape and float(resized.min()) > 0.999


def test_mask_nodes():
    (solid,) = SolidMask().execute(ctx(), 0.25, 5, 3)
    assert solid.shape == (1, 3, 5) and float(solid.max()) == 0.25
    (inv,) = InvertMask().execute(ctx(), solid)
    assert float(inv.min()) == 0.75
    dot = torch.zeros(1, 7, 7)
    dot[0, 3, 3] = 1
    (cross,) = GrowMask().execute(ctx(), dot, 1, True)
    assert cross[0].sum() == 5 and cross[0, 2, 2] == 0
    (square,) = GrowMask().execute(ctx(), dot, 2, False)
    assert square[0].sum() == 25
    (shrunk,) = GrowMask().execute(ctx(), square, -1, False)
    assert shrunk[0].sum() == 9
    ones = torch.ones(1, 4, 6)
    (feathered,) = FeatherMask().execute(ctx(), ones, 2, 0, 3, 2)
    assert feathered[0, 1].tolist() == pytest.approx([0.5, 1.0, 1.0, 1.0, 2 / 3, 1 / 3])
    assert feathered[0, 3].tolist() == pytest.approx([0.25, 0.5, 0.5, 0.5, 1 / 3, 1 / 6])
    (img,) = MaskToImage().execute(ctx(), solid)
    assert img.shape == (1, 3, 5, 3)
    (back,) = ImageToMask().execute(ctx(), img, "green")
    torch.testing.assert_close(back, solid)
    with pytest.raises(ValueError, match="no alpha channel"):
        ImageToMask().execute(ctx(), img, "alpha")


def _bound(cls, tmp_path: Path):
    return bind(cls, input_dir=tmp_path / "input")


def test_load_image_masks_alpha_and_fingerprints_content(tmp_path: Path):
    c = ctx(tmp_path)
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[1:3, 1:3, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "input" / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "input" / "rgb.png")
    node = _bound(LoadImage, tmp_path)
    image, mask = node().execute(c, "a.png")
    assert image.shape == (1, 6, 5, 3) and math.isclose(float(image[0, 0, 0, 0]), 200 / 255, rel_tol=1e-6)
    assert mask.shape == (1, 6, 5) and mask[0, 1:3, 1:3].min() == 1 and mask.sum() == 4
    _, no_alpha = node().execute(c, "rgb.png")
    assert no_alpha.shape == (1, 64, 64) and no_alpha.sum() == 0
    _, annotated = node().execute(c, "a.png [input]")
    torch.testing.assert_close(annotated, mask)
    (red,) = _bound(LoadImageMask, tmp_path)().execute(c, "a.png", "red")
    assert red.shape == (1, 6, 5) and math.isclose(float(red.max()), 200 / 255, rel_tol=1e-6)
    (alpha,) = _bound(LoadImageMask, tmp_path)().execute(c, "rgb.png", "alpha")
    assert alpha.sum() == 0  # an opaque image's alpha mask is empty

    before = node.fingerprint(image="a.png")
    assert before == node.fingerprint(image="a.png")
    rgba[0, 0, 0] = 1
    Image.fromarray(rgba, "RGBA").save(tmp_path / "input" / "a.png")
    assert node.fingerprint(image="a.png") != before
    assert node.check_inputs(image="a.png") is True
    assert "Invalid image file" in node.check_inputs(image="missing.png")
    assert math.isnan(LoadImage.fingerprint(image="a.png"))  # unbound: no folder, never cached
    with pytest.raises(ValueError, match="outside the input folder"):
        node().execute(c, "../escape.png")


def test_load_image_animation_becomes_a_batch(tmp_path: Path):
    c = ctx(tmp_path)
    frames = [Image.new("RGB", (4, 3), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "input" / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image, mask = _bound(LoadImage, tmp_path)().execute(c, "anim.gif")
    assert image.shape == (3, 3, 4, 3) and mask.shape == (3, 64, 64)
    assert image[0, 0, 0, 0] < image[2, 0, 0, 0]


def test_save_image_names_never_overwrite_and_embed_metadata(tmp_path: Path):
    c = ctx(tmp_path)
    (tmp_path / "output" / "shots").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "output" / "shots" / "pic_00001_.png")
    images = torch.rand(2, 8, 6, 3)
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "shots/pic"}}}
    extra = {"workflow": {"nodes": [], "version": 0.4}, "author": "me"}
    out = SaveImage().execute(c, images, "shots/pic", prompt=prompt, extra_pnginfo=extra)
    assert out.ui == {"images": [{"filename": "pic_00002_.png", "subfolder": "shots", "type": "output"},
                                 {"filename": "pic_00003_.png", "subfolder": "shots", "type": "output"}]}
    with Image.open(tmp_path / "output" / "shots" / "pic_00002_.png") as im:
        assert im.size == (6, 8)
        assert json.loads(im.text["prompt"]) == prompt
        assert json.loads(im.text["workflow"]) == extra["workflow"]
        assert json.loads(im.text["author"]) == "me"
        got = np.asarray(im, dtype=np.uint8)
    np.testing.assert_array_equal(got, np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8))  # truncation
    with pytest.raises(UnsafeOutputPathError):
        SaveImage().execute(c, images, "../escape")

    preview = PreviewImage().execute(c, images[:1])
    (item,) = preview.ui["images"]
    assert item["type"] == "temp" and item["filename"].startswith("ComfyUI_temp_")
    assert (tmp_path / "temp" / item["filename"]).is_file()


def test_nodes_without_services_say_what_is_missing():
    with pytest.raises(MissingServiceError, match="output_dir"):
        SaveImage().execute(ctx(), torch.rand(1, 2, 2, 3), "x")


def test_annotated_and_unlisted_image_names_validate_through_the_node(tmp_path: Path):
    """The frontend sends 'x.png [input]' and 'clipspace/…' names that are not in LoadImage's list; as in ComfyUI the
    node's own check decides (the file must exist inside the input folder), not list membership."""
    from darkroom.graph import validate_prompt
    from darkroom.nodes import default_registry

    (tmp_path / "clipspace").mkdir()
    Image.new("RGBA", (8, 8)).save(tmp_path / "clipspace" / "mask-1.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    registry = default_registry(input_dir=tmp_path)

    def check(name: str):
        return validate_prompt(registry, {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                                          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})

    for ok in ("x.png", "x.png [input]", "clipspace/mask-1.png [input]"):
        assert check(ok).ok, ok
    for bad in ("missing.png [input]", "../x.png"):
        result = check(bad)
        assert not result.ok
        assert result.node_errors["1"]["errors"][0]["type"] == "custom_validation_failed"
