"""Preprocessors on synthetic pictures with known answers, A1111's resize modes, OpenPose JSON rendering, and the
errors for preprocessors whose weights are not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darkroom.control.annotators import AnnotatorFileError, AnnotatorMissingError
from darkroom.control.openpose import BODY_COLORS, PoseFormatError, render_pose
from darkroom.control.preprocess import (PreprocessorError, fit_to_size, get_preprocessor, pixel_perfect_resolution,
                                         prepare_hint, preprocess, preprocessor_names, resize_mode)


def square(size: int = 64, lo: int = 16, hi: int = 48) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[lo:hi, lo:hi] = 255
    return img


def drawing() -> np.ndarray:
    """A user's drawing: a black horizontal stroke (rows 30..32) and a vertical one (cols 10..11) on white."""
    img = np.full((64, 64, 3), 255, np.uint8)
    img[30:33, :] = 0
    img[:, 10:12] = 0
    return img


def test_canny_edges_of_a_square_are_its_outline():
    edges = preprocess("canny", square(), resolution=64)[:, :, 0] > 0.5  # the square spans pixels 16..47
    near = np.zeros_like(edges)
    near[14:50, 14:50] = True
    near[18:46, 18:46] = False  # a ring of ±2 px around the square's boundary
    assert edges.any() and not (edges & ~near).any()  # every edge pixel is on the outline
    mid = slice(18, 46)
    for side in (edges[mid, 14:18], edges[mid, 46:50]):  # left and right sides traced row by row …
        assert side.any(axis=1).all()
    for side in (edges[14:18, mid], edges[46:50, mid]):  # … top and bottom column by column
        assert side.any(axis=0).all()
    # thresholds matter: a faint square has no edges at high thresholds
    faint = square() // 8
    assert preprocess("canny", faint, resolution=64, threshold_a=200, threshold_b=250).max() == 0
    assert preprocess("canny", faint, resolution=64, threshold_a=5, threshold_b=10).max() == 1


def test_canny_works_at_the_processor_resolution():
    out = preprocess("canny", square(128, 32, 96), resolution=64)
    assert out.shape == (64, 64, 3)


def test_scribbles_and_lines_from_a_drawing():
    d = drawing()
    for name in ("scribble_drawing", "invert"):
        out = preprocess(name, d, resolution=64)[:, :, 0]
        assert (out[30:33, 20:60] == 1).all() and (out[:, 10:12] == 1).all()  # strokes become white …
        assert out[5, 30] == 0 and out[50, 40] == 0  # … on black
    lines = preprocess("lineart_standard", d, resolution=64)[:, :, 0]
    assert lines[31, 40] > 0.3 and lines[5, 40] == 0 and lines[50, 50] == 0
    thr = preprocess("threshold", d, resolution=64, threshold_a=127)[:, :, 0]  # bright areas → white
    assert thr[5, 40] == 1 and thr[31, 40] == 0
    xdog = preprocess("scribble_xdog", d, resolution=64)[:, :, 0]  # photo-style edges: strokes are found too
    assert (xdog[31, 20:60] == 1).all() and xdog[5, 40] == 0 and xdog[50, 50] == 0


def test_soft_edges_are_bright_at_edges_and_dark_in_flat_areas():
    out = preprocess("softedge_dog", square(), resolution=64)[:, :, 0]
    assert out[16, 32] > 0.3 and out[47, 32] > 0.3
    assert out[32, 32] < 0.02 and out[2, 2] < 0.02
    assert 0 < out[13, 32] < out[16, 32]  # soft: fading away from the edge


def test_tile_blur_colour_and_recolour():
    two = np.zeros((128, 128, 3), np.uint8)
    two[:, :64] = (255, 0, 0)
    two[:, 64:] = (0, 0, 255)
    assert preprocess("tile_resample", two, threshold_a=2.0).shape == (64, 64, 3)
    assert preprocess("tile_resample", two, threshold_a=1.0).shape == (128, 128, 3)  # below 1.1: unchanged
    blur = preprocess("blur_gaussian", two, resolution=128, threshold_a=4.0)[64, :, 0]
    assert blur[0] == 1 and blur[127] == 0 and 0.2 < blur[64] < 0.8 and np.all(np.diff(blur) <= 1e-6)
    grid = preprocess("color", two, resolution=128)
    assert grid.shape == (128, 128, 3)
    np.testing.assert_array_equal(grid[10, 10], [1, 0, 0])
    np.testing.assert_array_equal(grid[10, 120], [0, 0, 1])
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) == 2  # 64-pixel flat cells
    gray = preprocess("recolor_luminance", two)
    assert np.allclose(gray[..., 0], gray[..., 2]) and gray[0, 0, 0] != gray[0, 127, 0]


def test_shuffle_is_seeded_and_moves_content():
    img = np.zeros((96, 96, 3), np.uint8)
    img[:, :48] = 200
    a = preprocess("shuffle", img, resolution=96, threshold_a=1)
    b = preprocess("shuffle", img, resolution=96, threshold_a=1)
    c = preprocess("shuffle", img, resolution=96, threshold_a=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.5
    assert np.abs(a - img / 255.0).max() > 0.5  # the picture was warped …
    assert set(np.round(np.unique(a) * 255).astype(int)) <= set(range(0, 201))  # … from its own pixels


def test_inpaint_marks_masked_pixels_minus_one():
    img = np.full((32, 32, 3), 128, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    out = preprocess("inpaint_global_harmonious", img, mask=mask)
    assert (out[:, :16] == -1).all() and np.allclose(out[:, 16:], 128 / 255)
    with pytest.raises(PreprocessorError, match="needs a mask"):
        preprocess("inpaint_only", img)
    fitted = fit_to_size(out, 64, 64, "Just Resize")
    assert (fitted[:, :32] == -1).all() and np.allclose(fitted[:, 32:], 128 / 255, atol=1 / 255)


def test_resize_modes_follow_a1111():
    hint = np.zeros((50, 100, 3), np.float32)  # wide map: left half red, right half blue
    hint[:, :50, 0] = 1
    hint[:, 50:, 2] = 1
    just = fit_to_size(hint, 64, 64, "Just Resize")
    assert just.shape == (64, 64, 3) and just[32, 5, 0] == 1 and just[32, 60, 2] == 1
    crop = fit_to_size(hint, 64, 64, "Crop and Resize")  # 128×64 then the middle 64 columns
    assert crop.shape == (64, 64, 3) and crop[32, 10, 0] == 1 and crop[32, 54, 2] == 1
    fill = fit_to_size(hint, 64, 64, "Resize and Fill")  # 64×32 in the middle, borders filled
    assert fill.shape == (64, 64, 3) and fill[32, 5, 0] == 1 and fill[32, 60, 2] == 1
    assert (fill[:10] == fill[0, 0]).all()  # the padding is one colour (the median of the map's border)
    assert resize_mode(1) == "Crop and Resize" and resize_mode("Envelope (Outer Fit)") == "Resize and Fill"
    assert resize_mode(3) == "Just Resize"
    with pytest.raises(PreprocessorError, match="resize mode"):
        resize_mode("Stretch a bit")
    assert pixel_perfect_resolution((100, 200), (512, 512), "Crop and Resize") == 512
    assert pixel_perfect_resolution((100, 200), (512, 512), "Resize and Fill") == 256


def test_prepare_hint_on_image_tensors():
    images = torch.from_numpy(np.stack([square(), 255 - square()])).float() / 255.0  # (2, 64, 64, 3)
    out = prepare_hint(images, "canny", resolution=64, width=32, height=32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32
    assert out[0].max() == 1 and torch.equal(out[0], out[1])  # the same outline either way round
    mask = torch.zeros((1, 64, 64))
    mask[:, :, :32] = 1  # the left half
    inp = prepare_hint(images, "inpaint", masks=mask)
    assert (inp[:, :, :32] == -1).all() and (inp[:, :, 32:] >= 0).all()


def test_names_aliases_and_unknowns():
    names = preprocessor_names()
    assert names[:3] == ["none", "invert", "canny"]
    assert {"depth", "openpose_full", "shuffle", "color", "tile_resample"} <= set(names)
    aliases = preprocessor_names(alias_names=True)
    assert "invert (from white bg & black line)" in aliases and "depth_midas" in aliases
    assert get_preprocessor("t2ia_color_grid").name == "color" and get_preprocessor(None).name == "none"
    with pytest.raises(PreprocessorError, match="unknown preprocessor 'sharpen'.*canny"):
        get_preprocessor("sharpen")


def test_weights_needing_preprocessor_names_the_file_and_where(tmp_path):
    home = tmp_path / "models" / "annotators"
    with pytest.raises(AnnotatorMissingError) as ex:
        preprocess("depth_midas", square(), annotator_dirs=[], annotator_home=home)
    msg = str(ex.value)
    assert "dpt_hybrid-midas-501f0c75.pt" in msg and str(home / "dpt_hybrid-midas-501f0c75.pt") in msg
    assert "lllyasviel/Annotators" in msg
    with pytest.raises(AnnotatorMissingError, match="hand_pose_model.pth"):
        (home / "nested").mkdir(parents=True)
        (home / "nested" / "body_pose_model.pth").write_bytes(b"x")
        preprocess("openpose_hand", square(), annotator_dirs=[home], annotator_home=home)  # body found, hand not
    (home / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"x")
    with pytest.raises(AnnotatorFileError, match="cannot read annotator weights .*dpt_hybrid-midas-501f0c75.pt"):
        preprocess("depth", square(), annotator_dirs=[home], annotator_home=home)  # found, and not a weights file


# -- OpenPose JSON -------------------------------------------------------------------------------------------------


def _pose(points: dict[int, tuple[float, float]], w: int = 64, h: int = 64, normalised: bool = False) -> dict:
    flat: list[float] = []
    for i in range(18):
        if i in points:
            x, y = points[i]
            flat += [x / w, y / h, 1.0] if normalised else [x, y, 1.0]
        else:
            flat += [0.0, 0.0, 0.0]
    return {"people": [{"pose_keypoints_2d": flat}], "canvas_width": w, "canvas_height": h}


def test_openpose_json_renders_limbs_and_joints_in_their_colours():
    # neck (1) at (32, 20), right shoulder (2) at (12, 20), left shoulder (5) at (52, 20)
    pose = _pose({1: (32, 20), 2: (12, 20), 5: (52, 20)})
    img = render_pose(pose)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[20, 32], BODY_COLORS[1])  # joints in their own colours
    np.testing.assert_array_equal(img[20, 12], BODY_COLORS[2])
    np.testing.assert_array_equal(img[20, 52], BODY_COLORS[5])
    np.testing.assert_array_equal(img[20, 22], [153, 0, 0])  # limb neck→right shoulder: colour 0 × 0.6
    np.testing.assert_array_equal(img[20, 43], [153, 51, 0])  # limb neck→left shoulder: colour 1 × 0.6
    assert img[23, 22].any() and not img[26, 22].any()  # sticks are 4 px half-width
    assert not img[40:].any()  # missing keypoints (confidence 0) draw nothing
    # the same pose with normalised coordinates, and scaled to another canvas
    np.testing.assert_array_equal(render_pose(json.dumps(_pose({1: (32, 20), 2: (12, 20), 5: (52, 20)},
                                                               normalised=True))), img)
    big = render_pose(pose, width=128, height=128)
    np.testing.assert_array_equal(big[40, 64], BODY_COLORS[1])
    np.testing.assert_array_equal(big[40, 44], [153, 0, 0])


def test_openpose_hands_face_and_bad_json():
    hand = [v for i in range(21) for v in (10 + i, 50.0, 1.0)]
    pose = {"people": [{"pose_keypoints_2d": [], "hand_left_keypoints_2d": hand,
                        "face_keypoints_2d": [40.0, 10.0, 1.0]}], "canvas_width": 64, "canvas_height": 64}
    img = render_pose(pose)
    np.testing.assert_array_equal(img[50, 10], [0, 0, 255])  # hand joints are blue
    np.testing.assert_array_equal(img[10, 40], [255, 255, 255])  # face landmarks white
    assert not render_pose(pose, hands=False)[50, 10].any()
    with pytest.raises(PoseFormatError, match="canvas_width"):
        render_pose({"people": []})
    with pytest.raises(PoseFormatError, match="flat list"):
        render_pose({"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 8, "canvas_height": 8})
    with pytest.raises(PoseFormatError, match="not valid JSON"):
        render_pose("{people")
