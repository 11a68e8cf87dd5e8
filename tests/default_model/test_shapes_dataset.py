"""The procedural shapes dataset: deterministic, varied, and its pictures match their captions."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.shapes.dataset import COLOURS, POSITIONS, SHAPES, alternative_captions, make_dataset, make_sample, render


def test_same_index_gives_identical_sample() -> None:
    a, b = make_sample(42), make_sample(42)
    assert np.array_equal(a.image, b.image)
    assert a.caption == b.caption and a.label == b.label


def test_images_are_64px_rgb_uint8_and_differ_between_indices() -> None:
    samples = make_dataset(20)
    assert all(s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 for s in samples)
    assert len({s.image.tobytes() for s in samples}) == 20


def test_captions_name_the_colour_and_a_word_for_the_kind_of_every_shape() -> None:
    kind_words = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",), "star": ("star",)}
    for s in make_dataset(300):
        for shape in s.label.shapes:
            assert shape.colour in s.caption
            assert any(w in s.caption for w in kind_words[shape.kind]), s.caption
        if "background" in s.label.mentions:
            assert f"{s.label.background} background" in s.caption or f"on {s.label.background}" in s.caption


def test_wording_varies_and_covers_every_attribute_value() -> None:
    samples = make_dataset(2000)
    assert len({s.caption for s in samples}) > 1900
    shapes = [sh for s in samples for sh in s.label.shapes]
    assert {sh.kind for sh in shapes} == set(SHAPES)
    assert {sh.colour for sh in shapes} == set(COLOURS)
    assert {sh.position for sh in shapes} == set(POSITIONS)
    assert {s.label.background for s in samples} == set(COLOURS)
    assert 0.2 < np.mean([len(s.label.shapes) == 2 for s in samples]) < 0.4
    # the wording skeleton varies: many different openings, and not even half start with the usual "a <colour>"
    assert len({" ".join(s.caption.split()[:2]) for s in samples}) > 25
    starts_plain = np.mean([s.caption.split()[1] in COLOURS for s in samples if s.caption.startswith("a ")])
    assert starts_plain < 0.5


def test_alternative_captions_are_deterministic_and_differ() -> None:
    s = make_sample(7)
    alts = alternative_captions(s, 7, 4)
    assert alts == alternative_captions(s, 7, 4)
    assert len(set(alts + [s.caption])) >= 4


def test_shape_never_shares_the_background_colour_and_two_shapes_differ() -> None:
    for s in make_dataset(500):
        colours = [sh.colour for sh in s.label.shapes]
        assert s.label.background not in colours
        assert len(set(colours)) == len(colours)


def test_render_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown shape kind: 'hexagon'"):
        render("blue", [("hexagon", "red", (32.0, 32.0), 20.0)])


def test_render_draws_the_right_colour_at_the_centre() -> None:
    img = render("blue", [("square", "red", (32.0, 32.0), 28.0)])
    assert tuple(img[32, 32]) == COLOURS["red"]
    assert tuple(img[1, 1]) == COLOURS["blue"]
