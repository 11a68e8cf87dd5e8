"""The deterministic analyser must read the generator's own pictures (ground truth) almost perfectly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from darkroom.shapes.analyse import analyse, classify_kind, count_tips, nearest_colour, position_name
from darkroom.shapes.dataset import COLOURS, make_dataset, render


def _match(found, truth):
    return min(found, key=lambda f: (f.centroid[0] - truth.centre[0]) ** 2 + (f.centroid[1] - truth.centre[1]) ** 2)


def test_reads_ground_truth_images_correctly() -> None:
    samples = make_dataset(400, start=50_000)
    wrong = {"background": 0, "count": 0, "kind": 0, "colour": 0, "position": 0, "size": 0}
    n_shapes = 0
    for s in samples:
        a = analyse(s.image)
        wrong["background"] += a.background != s.label.background
        if len(a.shapes) != len(s.label.shapes):
            wrong["count"] += 1
            continue
        for truth in s.label.shapes:
            f = _match(a.shapes, truth)
            n_shapes += 1
            for attr in ("kind", "colour", "position", "size"):
                wrong[attr] += getattr(f, attr) != getattr(truth, attr)
    assert n_shapes > 450
    assert wrong["background"] == 0 and wrong["count"] == 0
    assert wrong["colour"] == 0 and wrong["position"] == 0
    assert wrong["kind"] <= 2 and wrong["size"] <= 2, wrong


@pytest.mark.parametrize("kind", ["circle", "square", "triangle", "star"])
@pytest.mark.parametrize("d", [14.0, 28.0])
def test_each_kind_at_each_size(kind: str, d: float) -> None:
    img = render("green", [(kind, "yellow", (30.0, 34.0), d)])
    a = analyse(img)
    assert a.background == "green"
    assert len(a.shapes) == 1
    s = a.shapes[0]
    assert (s.kind, s.colour, s.position, s.size) == (kind, "yellow", "centre", "small" if d < 20 else "large")
    assert abs(s.centroid[0] - 30.0) < 1.5


@pytest.mark.parametrize("softness", [0.035, 0.07, 0.09])
def test_reads_softened_shapes(softness: float) -> None:
    """Decoders draw soft edges: shapes blurred by σ up to 9% of their diameter keep their kind (a soft star, whose
    notches fill in, was read as a circle by area ratios alone); circles stay circles however soft."""
    rng = np.random.default_rng(7)
    colours = list(COLOURS)
    for i in range(48):
        kind = ("circle", "square", "triangle", "star")[i % 4]
        bg, fg = rng.choice(len(colours), 2, replace=False)
        d = float(rng.uniform(26, 31) if i % 8 < 4 else rng.uniform(17, 20))
        img = render(colours[bg], [(kind, colours[fg], (float(rng.uniform(18, 46)), float(rng.uniform(18, 46))), d)])
        soft = np.clip(cv2.GaussianBlur(img.astype(np.float32), (0, 0), softness * d), 0, 255).round().astype(np.uint8)
        s = analyse(soft).main
        assert s is not None and s.kind == kind, (i, kind, s)
    circle = render("blue", [("circle", "yellow", (32.0, 32.0), 28.0)]).astype(np.float32)
    for sigma in (3.0, 4.0):
        blob = np.clip(cv2.GaussianBlur(circle, (0, 0), sigma), 0, 255).round().astype(np.uint8)
        assert analyse(blob).main.kind == "circle"


@pytest.mark.parametrize(("kind", "tips"), [("circle", 0), ("triangle", 3), ("square", 4), ("star", 5)])
def test_counts_the_points_of_an_outline(kind: str, tips: int) -> None:
    for d in (18.0, 30.0):
        img = render("black", [(kind, "white", (31.0, 33.0), d)])
        assert count_tips(img[..., 0] > 127) == tips, d
    # an ellipse has two ends, not four corners; a blank mask has none
    ellipse = np.zeros((64, 64), np.uint8)
    cv2.ellipse(ellipse, (32, 32), (20, 9), 0, 0, 360, 1, -1)
    assert count_tips(ellipse.astype(bool)) == 2
    assert count_tips(np.zeros((64, 64), bool)) == 0


def test_blank_image_has_no_shapes_and_accepts_pil() -> None:
    a = analyse(Image.new("RGB", (64, 64), COLOURS["pink"]))
    assert a.background == "pink" and a.shapes == () and a.main is None


def test_noise_and_blur_do_not_break_it() -> None:
    rng = np.random.default_rng(0)
    img = render("black", [("circle", "orange", (50.0, 12.0), 16.0)]).astype(np.float32)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR).resize((64, 64), Image.Resampling.BILINEAR))
    s = analyse(img).main
    assert s is not None and (s.colour, s.position) == ("orange", "top right")


def test_helpers() -> None:
    assert nearest_colour(np.array([250, 20, 25])) == "red"
    assert nearest_colour(np.array([120, 130, 125])) == "grey"
    assert position_name(5, 60, 64, 64) == "bottom left"
    assert position_name(32, 32, 64, 64) == "centre"
    assert classify_kind(0.99, 0.99) == "square"
    assert classify_kind(0.4, 0.55) == "star"


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image"):
        analyse(np.zeros((64, 64), np.uint8))
