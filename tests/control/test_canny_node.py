"""The Canny node: ComfyUI's edges (kornia's canny on the 0..1 image), white on black in three channels."""

from __future__ import annotations

import pytest
import torch

from darkroom.nodes.controlnet import Canny


def _square(size: int = 32, lo: int = 8, hi: int = 24) -> torch.Tensor:
    img = torch.zeros(1, size, size, 3)
    img[:, lo:hi, lo:hi] = 1.0
    return img


def test_edges_of_a_square_are_its_outline():
    (edges,) = Canny().execute(None, _square(), 0.4, 0.8)
    assert edges.shape == (1, 32, 32, 3) and edges.dtype == torch.float32
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    on = edges[0, :, :, 0] > 0.5
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    assert not on[11:21, 11:21].any()  # inside the square: no edges
    assert not on[:5].any() and not on[28:].any()  # far outside: none
    rows, cols = torch.nonzero(on, as_tuple=True)
    # thin lines along the four sides, each one pixel from the step (non-maximum suppression keeps one side)
    assert rows.min() >= 6 and rows.max() <= 25 and cols.min() >= 6 and cols.max() <= 25
    for side in (on[6:10, 10:22], on[22:26, 10:22], on[10:22, 6:10], on[10:22, 22:26]):
        assert side.any(dim=0 if side.shape[0] == 4 else 1).all()  # each side is covered along its length


def test_thresholds_above_the_step_find_nothing_and_bad_order_is_refused():
    (edges,) = Canny().execute(None, _square() * 0.1, 0.4, 0.8)  # a faint square: gradient below the thresholds
    assert edges.max() == 0
    with pytest.raises(ValueError, match="low_threshold"):
        Canny().execute(None, _square(), 0.9, 0.2)
