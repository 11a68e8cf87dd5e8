"""PiDiNet soft edges (table5_pidinet.pth): the real key layout, pixel-difference convolutions against their
definitions, the fused-map arithmetic on a network with known outputs, the BGR input, wrong files, and pidinet /
pidinet_safe / pidinet_sketch / pidinet_scribble end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from darkroom.control import annotator_hed as hed
from darkroom.control import annotator_pidinet as pidi
from darkroom.control import annotators
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.preprocess import preprocess

#: Keys and shapes of table5_pidinet.pth (lllyasviel/Annotators; "module."-prefixed under "state_dict"), from
#: PiDiNet(60, carv4, dil=24, sa=True) in annotator/pidinet/model.py (sd-webui-controlnet, controlnet_aux).
REAL_KEYS = {
    "init_block.weight": (60, 3, 3, 3),
    "block1_1.conv1.weight": (60, 1, 3, 3),
    "block1_1.conv2.weight": (60, 60, 1, 1),
    "block1_3.conv2.weight": (60, 60, 1, 1),
    "block2_1.shortcut.weight": (120, 60, 1, 1),
    "block2_1.shortcut.bias": (120,),
    "block2_1.conv1.weight": (60, 1, 3, 3),
    "block2_1.conv2.weight": (120, 60, 1, 1),
    "block2_4.conv1.weight": (120, 1, 3, 3),
    "block3_1.shortcut.weight": (240, 120, 1, 1),
    "block3_1.conv2.weight": (240, 120, 1, 1),
    "block3_4.conv2.weight": (240, 240, 1, 1),
    "block4_1.shortcut.weight": (240, 240, 1, 1),
    "block4_1.shortcut.bias": (240,),
    "block4_4.conv1.weight": (240, 1, 3, 3),
    "conv_reduces.0.conv.weight": (1, 24, 1, 1),
    "conv_reduces.3.conv.bias": (1,),
    "attentions.0.conv1.weight": (4, 24, 1, 1),
    "attentions.0.conv1.bias": (4,),
    "attentions.3.conv2.weight": (1, 4, 3, 3),
    "dilations.0.conv1.weight": (24, 60, 1, 1),
    "dilations.1.conv1.weight": (24, 120, 1, 1),
    "dilations.2.conv1.bias": (24,),
    "dilations.3.conv1.weight": (24, 240, 1, 1),
    "dilations.3.conv2_4.weight": (24, 24, 3, 3),
    "classifier.weight": (1, 4, 1, 1),
    "classifier.bias": (1,),
}
#: init conv; 15 blocks × 2 convs + 3 shortcuts × 2; 4 × (reduce 2 + attention 3 + dilation 6); classifier 2.
REAL_TENSORS = 83
REAL_PARAMETERS = 710_149  # the paper's "710K"


def test_network_has_the_real_checkpoint_layout():
    sd = {k: tuple(v.shape) for k, v in pidi.PiDiNet().state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert sum(p.numel() for p in pidi.PiDiNet().parameters()) == REAL_PARAMETERS
    assert not any("shortcut" in k for k in sd if k.split(".")[0] not in ("block2_1", "block3_1", "block4_1"))


def test_the_published_training_checkpoint_loads(tmp_path):
    net = pidi.PiDiNet()
    path = tmp_path / "table5_pidinet.pth"
    torch.save({"epoch": 14, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = pidi.load_pidinet_model(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[..., i + dy, j + dx] with zeros outside the image."""
    h, w = x.shape[2:]
    return F.pad(x, (2, 2, 2, 2))[:, :, 2 + dy:2 + dy + h, 2 + dx:2 + dx + w]


def difference_maps(kind: str, x: torch.Tensor) -> torch.Tensor:
    """(B, C, 9, H, W): the pixel difference each stored 3×3 weight multiplies, straight from the paper's definitions
    (zero for weights a kind does not use)."""
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    clockwise = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    maps = [torch.zeros_like(x) for _ in range(9)]
    for t, (dy, dx) in enumerate(offsets):
        if kind == "cv":
            maps[t] = shifted(x, dy, dx)
        elif kind == "cd":  # neighbour minus centre
            maps[t] = shifted(x, dy, dx) - x
        elif kind == "ad" and (dy, dx) != (0, 0):  # ring pixel minus its clockwise neighbour
            ny, nx = clockwise[(clockwise.index((dy, dx)) + 1) % 8]
            maps[t] = shifted(x, dy, dx) - shifted(x, ny, nx)
    if kind == "rd":  # the published model puts stored weights 1..8 on the eight directions in row-major order
        for t, (dy, dx) in enumerate(d for d in offsets if d != (0, 0)):
            maps[t + 1] = shifted(x, 2 * dy, 2 * dx) - shifted(x, dy, dx)
    return torch.stack(maps, dim=2)


@pytest.mark.parametrize("kind", ["cv", "cd", "ad", "rd"])
@pytest.mark.parametrize("cin, cout, groups", [(3, 5, 1), (4, 4, 4)])
def test_pixel_difference_convolution_is_its_definition(kind, cin, cout, groups):
    torch.manual_seed(0)
    conv = pidi.PixelDifferenceConv(kind, cin, cout, groups)
    x = torch.randn(2, cin, 11, 13)
    d = difference_maps(kind, x).view(2, groups, cin // groups, 9, 11, 13)
    w = conv.weight.detach().view(groups, cout // groups, cin // groups, 9)
    expected = torch.einsum("bgitHW,goit->bgoHW", d, w).reshape(2, cout, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_central_difference_equals_the_published_two_convolution_form():
    torch.manual_seed(1)
    w, x = torch.randn(6, 3, 3, 3), torch.randn(1, 3, 9, 10)
    published = F.conv2d(x, w, padding=1) - F.conv2d(x, w.sum(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(F.conv2d(x, pidi.vanilla_kernel("cd", w), padding=1), published, rtol=1e-5, atol=1e-5)


def test_vanilla_kernels_have_the_published_index_tables():
    w = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    assert pidi.vanilla_kernel("ad", w).flatten().tolist() == [a - b for a, b in zip(
        range(1, 10), [4, 1, 2, 7, 5, 3, 8, 9, 6])]  # w - w[[3, 0, 1, 6, 4, 2, 7, 8, 5]]
    rd = pidi.vanilla_kernel("rd", w).flatten()
    assert rd.shape == (25,) and rd[12] == 0 and rd[[0, 2, 4, 10, 14, 20, 22, 24]].tolist() == list(range(2, 10))
    assert rd[[6, 7, 8, 11, 13, 16, 17, 18]].tolist() == [-v for v in range(2, 10)]
    with pytest.raises(ValueError, match="unknown pixel-difference convolution 'xx'"):
        pidi.vanilla_kernel("xx", w)


def constant_net(reduce_biases: list[float], weights: list[float], bias: float) -> pidi.PiDiNet:
    """A network whose four stage logits are `reduce_biases` everywhere (all other weights zero), fused by
    `weights`/`bias`."""
    net = pidi.PiDiNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for reduce, b in zip(net.conv_reduces, reduce_biases):
            reduce.conv.bias.fill_(b)
        net.classifier.weight.copy_(torch.tensor(weights).view(1, 4, 1, 1))
        net.classifier.bias.fill_(bias)
    return net.eval()


def test_edges_are_the_sigmoid_of_the_fused_stage_logits():
    net = constant_net([1.0, -2.0, 0.5, 3.0], [0.25, 0.5, -1.0, 0.1], 0.2)
    edge = pidi.pidinet_edges(net, np.zeros((48, 80, 3), np.uint8))
    assert edge.shape == (48, 80) and edge.dtype == np.float32
    np.testing.assert_allclose(edge, 1 / (1 + np.exp(-(0.25 - 1.0 - 0.5 + 0.3 + 0.2))), rtol=1e-6)


def test_stage_logits_are_resized_half_pixel_bilinear_before_fusing():
    import cv2

    net = constant_net([0.0] * 4, [0.0, 0.0, 0.0, 1.0], 0.0)
    coarse = np.array([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]], np.float32)  # the 1/8 stage's logit, 16×24 input
    net.conv_reduces[3].register_forward_hook(lambda _m, _a, _out: torch.from_numpy(coarse)[None, None])
    edge = pidi.pidinet_edges(net, np.zeros((16, 24, 3), np.uint8))
    expected = cv2.resize(coarse, (24, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(edge, 1 / (1 + np.exp(-expected)), rtol=1e-5)


def test_the_four_stages_are_at_full_to_one_eighth_resolution():
    feats = pidi.PiDiNet().stage_features(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(60, 64, 96), (120, 32, 48), (240, 16, 24), (240, 8, 12)]


def test_the_network_sees_bgr_in_zero_to_one():
    net = constant_net([0.0] * 4, [0.0] * 4, 0.0)
    seen = []
    net.init_block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
    pidi.pidinet_edges(net, rgb)
    assert seen[0].shape == (1, 3, 8, 16)
    assert seen[0][0, :, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "table5_pidinet.pth"
    sd = pidi.PiDiNet().state_dict()
    sd["block1_1.conv1.weight"] = torch.zeros(60, 1, 5, 5)  # an already converted rd kernel is not the file's form
    del sd["classifier.bias"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(AnnotatorFileError, match="not a PiDiNet .*missing: classifier.bias.*wrong shape: block1_1"):
        pidi.load_pidinet_model(path)
    torch.save(hed.ControlNetHED().state_dict(), path)
    with pytest.raises(AnnotatorFileError, match="table5_pidinet.pth is not a PiDiNet .*unexpected: block1.convs"):
        pidi.load_pidinet_model(path)


@pytest.fixture(scope="module")
def pidinet_folder(tmp_path_factory):
    """A models/annotators folder with a random-weight table5_pidinet.pth in a sub-folder (those are searched too),
    saved in the published form; the classifier is scaled up because random weights give an almost flat map."""
    torch.manual_seed(3)
    net = pidi.PiDiNet()
    with torch.no_grad():
        net.classifier.weight.mul_(40.0)
    sub = tmp_path_factory.mktemp("models") / "annotators" / "pidinet"
    sub.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, sub / "table5_pidinet.pth")
    return sub.parent


def test_pidinet_preprocessors_end_to_end(pidinet_folder, monkeypatch):
    for name in ("pidinet", "pidinet_safe", "pidinet_sketch", "pidinet_scribble"):
        monkeypatch.setitem(annotators.RUNNERS, name, ".annotator_pidinet")
    NETWORKS.clear()
    rng = np.random.default_rng(0)
    img = np.zeros((100, 150, 3), np.uint8)
    img[20:80, 40:110] = rng.integers(100, 256, 3)
    kw = dict(resolution=64, annotator_dirs=[pidinet_folder], annotator_home=pidinet_folder, device="cpu")
    soft = preprocess("softedge_pidinet", img, **kw)  # the A1111 alias
    assert soft.shape == (64, 96, 3) and soft.dtype == np.float32 and 0 <= soft.min() <= soft.max() <= 1
    assert np.array_equal(soft[:, :, 0], soft[:, :, 2])
    s8 = np.round(soft[:, :, 0] * 255).astype(int)
    assert s8.std() > 10  # a real map, not a flat one
    q8 = np.round(preprocess("softedge_pidisafe", img, **kw)[:, :, 0] * 255).astype(int)
    assert set(np.unique(q8)) <= {0, 127, 255}
    assert (q8[s8 <= 84] == 0).all() and (q8[(s8 >= 86) & (s8 <= 169)] == 127).all() and (q8[s8 >= 171] == 255).all()
    k8 = np.round(preprocess("t2ia_sketch_pidi", img, **kw)[:, :, 0] * 255).astype(int)
    assert set(np.unique(k8)) == {0, 255}
    assert (k8[s8 >= 128] == 255).all() and (k8[s8 <= 126] == 0).all()
    strokes = preprocess("scribble_pidinet", img, **kw)
    assert np.array_equal(strokes[:, :, 0] * 255, hed.scribble(s8.astype(np.uint8)))
    assert len(NETWORKS) == 1  # one network for the four preprocessors


def test_run_annotator_gives_a_grey_map_at_the_processor_resolution(pidinet_folder, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "pidinet", ".annotator_pidinet")
    out = annotators.run_annotator("pidinet", [pidinet_folder], pidinet_folder,
                                   np.full((90, 60, 3), 128, np.uint8), 72, device="cpu")
    assert out.shape == (108, 72) and out.dtype == np.uint8
