"""HED soft edges (ControlNetHED.pth): the real key layout, the edge arithmetic on a network with known outputs,
safe quantisation and scribble thinning exactly, and hed / hed_safe / scribble_hed end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_hed as hed
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.preprocess import prepare_hint, preprocess

#: Keys and shapes of ControlNetHED.pth (lllyasviel/Annotators), from ControlNetHED_Apache2 / DoubleConvBlock in
#: annotator/hed/__init__.py (ControlNet 1.1): a learned input offset and five VGG-16 blocks with 1×1 projections.
REAL_KEYS = {
    "norm": (1, 3, 1, 1),
    "block1.convs.0.weight": (64, 3, 3, 3),
    "block1.convs.1.weight": (64, 64, 3, 3),
    "block1.projection.weight": (1, 64, 1, 1),
    "block2.convs.1.bias": (128,),
    "block3.convs.2.weight": (256, 256, 3, 3),
    "block4.convs.0.weight": (512, 256, 3, 3),
    "block5.convs.2.weight": (512, 512, 3, 3),
    "block5.projection.bias": (1,),
}
REAL_TENSORS = 37  # norm + 13 convolutions + 5 projections, weight and bias each


def test_network_has_the_real_checkpoint_layout():
    sd = {k: tuple(v.shape) for k, v in hed.ControlNetHED().state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS


def constant_net(biases: list[float], norm: float = 0.0) -> hed.ControlNetHED:
    """A network whose five edge logits are the constants `biases` everywhere (all weights zero)."""
    net = hed.ControlNetHED()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.norm.fill_(norm)
        for block, b in zip((net.block1, net.block2, net.block3, net.block4, net.block5), biases):
            block.projection.bias.fill_(b)
    return net.eval()


def test_edges_are_the_sigmoid_of_the_mean_logit():
    edge = hed.hed_edges(constant_net([1.0, -2.0, 0.5, 3.0, -0.5]), np.zeros((48, 80, 3), np.uint8))
    assert edge.shape == (48, 80) and edge.dtype == np.float64
    np.testing.assert_allclose(edge, 1 / (1 + np.exp(-0.4)), rtol=1e-7)


def test_the_five_logits_are_at_full_to_one_sixteenth_resolution():
    logits = constant_net([0.0] * 5)(torch.zeros(1, 3, 64, 96))
    assert [tuple(t.shape[2:]) for t in logits] == [(64, 96), (32, 48), (16, 24), (8, 12), (4, 6)]


def test_safe_step_quantises_to_three_levels():
    x = np.array([0.0, 0.2, 0.33, 0.34, 0.5, 0.66, 0.67, 0.99, 1.0])
    assert hed.safe_step(x).tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.5]
    np.testing.assert_allclose(hed.safe_step(np.array([0.24, 0.26, 0.76]), step=3), [0.0, 1 / 3, 1.0], rtol=1e-6)


def test_thinning_keeps_ridges_and_drops_slopes():
    band = np.zeros((64, 96), np.uint8)
    band[:, 35:45] = 255  # a 10 px white band: after the σ = 3 blur it is above 127 on exactly its own columns
    thin = hed.thin_edges(band, 127, 3.0)
    assert set(np.unique(thin)) == {0, 255}
    assert np.nonzero(thin.any(axis=0))[0].tolist() == list(range(35, 45))
    yy, xx = np.mgrid[0:64, 0:64]
    ramp = (130 + 1.5 * xx + 0.75 * yy).astype(np.float32)  # bright, but a maximum in no direction
    assert not hed.thin_edges(ramp, 127, 3.0)[5:40, 5:40].any()  # (away from the borders the blur folds)


def test_scribble_makes_bold_binary_strokes_around_the_ridge():
    band = np.zeros((64, 96), np.uint8)
    band[:, 35:45] = 255
    stroke = hed.scribble(band)
    cols = np.nonzero(stroke[32] == 255)[0]
    assert set(np.unique(stroke)) == {0, 255}
    assert cols.min() < 35 and cols.max() > 44 and cols.max() - cols.min() + 1 == len(cols)  # wider, one piece
    assert abs((cols.min() + cols.max()) / 2 - 39.5) <= 0.5  # centred on the band
    assert not hed.scribble(np.full((32, 32), 100, np.uint8)).any()  # nothing above the threshold: nothing drawn


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "ControlNetHED.pth"
    sd = hed.ControlNetHED().state_dict()
    sd["block1.convs.0.weight"] = torch.zeros(64, 3, 5, 5)
    del sd["norm"]
    torch.save(sd, path)
    with pytest.raises(AnnotatorFileError, match="missing: norm.*wrong shape: block1.convs.0.weight"):
        hed.load_hed_model(path)


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("models") / "annotators"
    (folder / "hed").mkdir(parents=True)
    net = hed.ControlNetHED()
    with torch.no_grad():
        net.norm.copy_(torch.tensor([122.0, 116.0, 104.0]).view(1, 3, 1, 1))
    torch.save(net.state_dict(), folder / "hed" / "ControlNetHED.pth")  # sub-folders are searched too
    return folder


def test_hed_preprocessors_end_to_end(hed_file):
    NETWORKS.clear()
    rng = np.random.default_rng(0)
    img = np.zeros((100, 150, 3), np.uint8)
    img[20:80, 40:110] = rng.integers(100, 256, 3)
    kw = dict(resolution=80, annotator_dirs=[hed_file], annotator_home=hed_file, device="cpu")
    soft = preprocess("hed", img, **kw)
    assert soft.shape == (80, 120, 3) and soft.dtype == np.float32 and 0 <= soft.min() <= soft.max() <= 1
    assert np.array_equal(soft[:, :, 0], soft[:, :, 2])  # a grey map
    safe = preprocess("softedge_hedsafe", img, **kw)  # the A1111 alias
    s8, q8 = np.round(soft[:, :, 0] * 255).astype(int), np.round(safe[:, :, 0] * 255).astype(int)
    assert set(np.unique(q8)) <= {0, 127, 255}
    assert (q8[s8 <= 84] == 0).all() and (q8[(s8 >= 86) & (s8 <= 169)] == 127).all() and (q8[s8 >= 171] == 255).all()
    strokes = preprocess("scribble_hed", img, **kw)
    assert set(np.unique(strokes)) <= {0.0, 1.0}
    assert len(NETWORKS) == 1  # one network for the three preprocessors
    hint = prepare_hint(torch.from_numpy(img.astype(np.float32) / 255.0)[None], "hed", resolution=64, width=96,
                        height=64, annotator_dirs=[hed_file], annotator_home=hed_file, device="cpu")
    assert tuple(hint.shape) == (1, 64, 96, 3)
