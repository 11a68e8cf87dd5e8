"""M-LSD straight lines (mlsd_large_512_fp32.pth): the real key layout and size, the TFLite-style stride-2 padding
and the decoder's skip-first concatenation, the input mapping, segment decoding on a synthetic centre/displacement
map, drawing, wrong-file rejection, and mlsd end to end through preprocess / run_annotator on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_mlsd as mlsd
from darkroom.control import annotators
from darkroom.control.annotators import NETWORKS, AnnotatorFileError, run_annotator
from darkroom.control.preprocess import preprocess

#: Keys and shapes of mlsd_large_512_fp32.pth (lllyasviel/Annotators), from MobileV2_MLSD_Large in
#: annotator/mlsd/models/mbv2_mlsd_large.py (A1111 extension, ControlNet 1.1, lhwcv/mlsd_pytorch): MobileNetV2
#: `features` 0..13 (stem on 4 channels; stages t, c, n, s = 1,16,1,1 / 6,24,2,2 / 6,32,3,2 / 6,64,4,2 / 6,96,3,1)
#: and the decoder blocks 15..23 (BlockTypeA/B/C).
REAL_KEYS = {
    "backbone.features.0.0.weight": (32, 4, 3, 3),
    "backbone.features.0.1.running_var": (32,),
    "backbone.features.0.1.num_batches_tracked": (),
    "backbone.features.1.conv.0.0.weight": (32, 1, 3, 3),
    "backbone.features.1.conv.1.weight": (16, 32, 1, 1),
    "backbone.features.1.conv.2.bias": (16,),
    "backbone.features.2.conv.0.0.weight": (96, 16, 1, 1),
    "backbone.features.2.conv.1.0.weight": (96, 1, 3, 3),
    "backbone.features.2.conv.2.weight": (24, 96, 1, 1),
    "backbone.features.2.conv.3.running_mean": (24,),
    "backbone.features.6.conv.1.0.weight": (192, 1, 3, 3),
    "backbone.features.10.conv.2.weight": (64, 384, 1, 1),
    "backbone.features.13.conv.0.0.weight": (576, 96, 1, 1),
    "backbone.features.13.conv.3.weight": (96,),
    "block15.conv1.0.weight": (64, 96, 1, 1),
    "block15.conv2.0.weight": (64, 64, 1, 1),
    "block16.conv1.0.weight": (128, 128, 3, 3),
    "block16.conv2.0.bias": (64,),
    "block17.conv2.0.weight": (64, 32, 1, 1),
    "block19.conv2.0.weight": (64, 24, 1, 1),
    "block21.conv2.0.weight": (64, 16, 1, 1),
    "block22.conv2.1.num_batches_tracked": (),
    "block23.conv1.0.weight": (64, 64, 3, 3),
    "block23.conv2.1.weight": (64,),
    "block23.conv3.weight": (16, 64, 1, 1),
    "block23.conv3.bias": (16,),
}
REAL_TENSORS = 362  # 57 BatchNorms × 5 + 58 convolution weights + 19 biases (the decoder's convolutions)
#: Gu et al. (M-LSD, AAAI 2022), table 1: M-LSD (large) has 1.5M parameters.
REAL_PARAMETERS = 1_533_680


def test_network_has_the_real_checkpoint_layout():
    net = mlsd.MLSDLarge()
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 57
    assert sum(p.numel() for p in net.parameters()) == REAL_PARAMETERS
    assert "backbone.features.14.conv.0.0.weight" not in sd  # MobileNetV2 cut after its 96-channel stage


def test_output_is_nine_maps_at_half_size():
    with torch.no_grad():
        out = mlsd.MLSDLarge().eval()(torch.zeros(1, 4, 64, 96))
    assert tuple(out.shape) == (1, 9, 32, 48)


def test_stride_two_pads_only_bottom_and_right():
    stem = mlsd._ConvBNReLU6(4, 32, stride=2).eval()
    with torch.no_grad():
        stem[0].weight.zero_()
        stem[0].weight[0, 0, 0, 0] = 1.0  # output 0 = the top-left tap of input channel 0
    x = torch.rand(1, 4, 8, 10) * 5
    with torch.no_grad():
        y = stem(x)
    assert tuple(y.shape) == (1, 32, 4, 5)
    # No top/left padding: output (i, j) reads input (2i, 2j) (a symmetric pad would read (2i − 1, 2j − 1)).
    torch.testing.assert_close(y[0, 0], x[0, 0, ::2, ::2] / (1 + 1e-5) ** 0.5)


def test_merge_puts_the_skip_features_first():
    merge = mlsd._Merge(16, 64).eval()
    with torch.no_grad():
        for p in merge.parameters():
            p.zero_()
        for bn in (merge.conv1[1], merge.conv2[1]):
            bn.weight.fill_(1.0)
        merge.conv1[0].bias.fill_(1.0)  # the deeper features → 1
        merge.conv2[0].bias.fill_(2.0)  # the skip features → 2
        out = merge(torch.zeros(1, 16, 8, 12), torch.zeros(1, 64, 4, 6))
    assert tuple(out.shape) == (1, 128, 8, 12)
    torch.testing.assert_close(out[0, :64], torch.full((64, 8, 12), 2.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[0, 64:], torch.full((64, 8, 12), 1.0), rtol=1e-4, atol=1e-4)


def test_input_is_rgb_and_ones_mapped_to_minus_one_one():
    rgb = np.array([[[0, 255, 51]]], np.uint8)
    x = mlsd.network_input(rgb)
    assert tuple(x.shape) == (1, 4, 1, 1) and x.dtype == torch.float32
    np.testing.assert_allclose(x.flatten().numpy(), [-1.0, 1.0, 51 / 127.5 - 1, 1 / 127.5 - 1], rtol=1e-6)


def synthetic_map(h: int = 32, w: int = 48) -> torch.Tensor:
    """A (1, 9, h, w) output: one strong centre (10, 20) with a known segment, a weaker neighbour (suppressed by
    the 3×3 local-maximum test), a weak centre (25, 40) with a 0.05-px segment; everything else far below."""
    tp = torch.zeros(1, 9, h, w)
    tp[0, 0] = -8.0
    tp[0, 0, 10, 20] = 4.0  # sigmoid 0.982
    tp[0, 1:5, 10, 20] = torch.tensor([5.25 - 20, 3.5 - 10, 33.75 - 20, 16.5 - 10])  # (5.25, 3.5) → (33.75, 16.5)
    tp[0, 0, 10, 21] = 3.5  # next to the strong centre: not a local maximum
    tp[0, 1:5, 10, 21] = torch.tensor([-9.0, -9.0, 9.0, 9.0])
    tp[0, 0, 25, 40] = -1.0  # sigmoid 0.269
    tp[0, 1:5, 25, 40] = torch.tensor([0.0, 0.0, 0.03, 0.04])  # 0.05 map pixels long
    return tp


def test_decode_recovers_the_encoded_segment():
    segments = mlsd.decode_segments(synthetic_map(), 0.1, 0.1)
    assert segments.shape == (1, 4)
    np.testing.assert_allclose(segments[0], [10.5, 7.0, 67.5, 33.0], rtol=1e-6)  # input pixels: 2× the map


def test_decode_thresholds_are_strict_score_and_length_limits():
    tp = synthetic_map()
    both = mlsd.decode_segments(tp, 0.1, 0.01)  # the short segment is long enough now
    np.testing.assert_allclose(both[:, 0], [10.5, 80.0], rtol=1e-6)  # best first; the short one at 2 × (40, 25)
    np.testing.assert_allclose(both[1], [80.0, 50.0, 80.06, 50.08], rtol=1e-6)
    assert len(mlsd.decode_segments(tp, 0.3, 0.01)) == 1  # 0.269 is below the value threshold
    assert len(mlsd.decode_segments(tp, 0.99, 0.1)) == 0  # 0.982 too
    length = float(np.hypot(33.75 - 5.25, 16.5 - 3.5))
    assert len(mlsd.decode_segments(tp, 0.1, length - 1e-3)) == 1
    assert len(mlsd.decode_segments(tp, 0.1, length + 1e-3)) == 0
    assert len(mlsd.decode_segments(tp, 0.1, 0.01, top_k=1)) == 1  # only the best candidate is looked at
    half = torch.zeros(1, 9, 8, 8)
    half[0, 0] = -8.0
    half[0, 0, 4, 4] = 0.0  # sigmoid 0.5 exactly
    half[0, 3, 4, 4] = 2.0
    assert len(mlsd.decode_segments(half, 0.5, 0.1)) == 0 and len(mlsd.decode_segments(half, 0.4999, 0.1)) == 1
    assert len(mlsd.decode_segments(half, 0.1, 2.0)) == 0  # a length of 2 is not above 2


def test_decode_without_local_maximum_test_keeps_the_neighbour():
    segments = mlsd.decode_segments(synthetic_map(), 0.1, 0.1, kernel=1)
    assert len(segments) == 2
    np.testing.assert_allclose(segments[1], [24.0, 2.0, 60.0, 38.0], rtol=1e-6)  # 2 × ((21, 10) ± 9)


def test_drawing_truncates_ends_and_draws_one_pixel_white_lines():
    canvas = mlsd.draw_segments(np.array([[2.9, 3.7, 20.2, 3.1], [-0.5, 10.0, 5.0, 15.99]]), 16, 32)
    assert canvas.shape == (16, 32) and canvas.dtype == np.uint8
    assert set(np.unique(canvas)) == {0, 255}
    assert np.nonzero(canvas[3])[0].tolist() == list(range(2, 21))  # (2, 3) → (20, 3)
    assert [(y, x) for y, x in zip(*np.nonzero(canvas[4:]))] == [(y - 4, y - 10) for y in range(10, 16)]
    assert canvas.sum() == 255 * (19 + 6)
    assert not mlsd.draw_segments(np.zeros((0, 4)), 8, 8).any()


def test_decoded_map_draws_the_segment():
    canvas = mlsd.draw_segments(mlsd.decode_segments(synthetic_map(), 0.1, 0.1), 64, 96)
    ys, xs = np.nonzero(canvas)
    assert xs.min() == 10 and xs.max() == 67 and ys.min() == 7 and ys.max() == 33  # from (10, 7) to (67, 33)
    assert len(xs) == 58  # one pixel per column of a shallow line


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "mlsd_large_512_fp32.pth"
    sd = mlsd.MLSDLarge().state_dict()
    for key in [k for k in sd if k.startswith("backbone.features.13.")]:  # a shorter backbone
        del sd[key]
    sd["block23.conv3.weight"] = torch.zeros(9, 64, 1, 1)
    torch.save(sd, path)
    with pytest.raises(AnnotatorFileError, match="M-LSD.*missing: backbone.features.13.*wrong shape: block23"):
        mlsd.load_mlsd_model(path)


@pytest.fixture(scope="module")
def mlsd_folder(tmp_path_factory):
    """A models/annotators folder with random-weight M-LSD files: "on" scores every centre sigmoid(2) = 0.88 and
    draws it as a horizontal segment 6 map pixels long; "off" scores every centre sigmoid(−3) = 0.047."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, logit in (("on", 2.0), ("off", -3.0)):
        torch.manual_seed(4)
        net = mlsd.MLSDLarge()
        with torch.no_grad():
            net.block23.conv3.weight.zero_()
            net.block23.conv3.bias.copy_(torch.tensor([0.0] * 7 + [logit, -3.0, 0.0, 3.0, 0.0] + [0.0] * 4))
        folder = root / name / "annotators"
        (folder / "mlsd").mkdir(parents=True)
        torch.save(net.state_dict(), folder / "mlsd" / "mlsd_large_512_fp32.pth")  # sub-folders are searched too
        folders[name] = folder
    return folders


def test_mlsd_end_to_end_through_preprocess(mlsd_folder, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "mlsd", ".annotator_mlsd")
    NETWORKS.clear()
    img = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    folder = mlsd_folder["on"]
    kw = dict(resolution=64, annotator_dirs=[folder], annotator_home=folder, device="cpu")
    lines = preprocess("mlsd", img, threshold_a=0.1, threshold_b=0.1, **kw)
    assert lines.shape == (64, 96, 3) and lines.dtype == np.float32
    assert set(np.unique(lines)) == {0.0, 1.0}
    white = lines[:, :, 0] > 0
    assert (np.nonzero(white)[0] % 2 == 0).all()  # horizontal segments through centres 2 × (x, y) in the input
    beside = np.zeros_like(white)
    beside[:, 1:] |= white[:, :-1]
    beside[:, :-1] |= white[:, 1:]
    assert beside[white].all()  # 13 px long: every white pixel has a white left or right neighbour
    assert not preprocess("mlsd", img, threshold_a=0.9, threshold_b=0.1, **kw).any()  # scores are 0.88
    assert not preprocess("mlsd", img, threshold_a=0.1, threshold_b=6.5, **kw).any()  # segments are 6 long
    assert preprocess("mlsd", img, threshold_a=0.1, threshold_b=5.5, **kw).any()
    assert len(NETWORKS) == 1


def test_run_annotator_uses_the_a1111_defaults_for_unset_thresholds(mlsd_folder, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "mlsd", ".annotator_mlsd")
    img = np.full((48, 64, 3), 128, np.uint8)
    on, off = mlsd_folder["on"], mlsd_folder["off"]
    drawn = run_annotator("mlsd", [on], on, img, resolution=64, device="cpu")  # thresholds −1: 0.1 and 0.1
    assert drawn.shape == (64, 85) and drawn.dtype == np.uint8 and drawn.any()
    assert not run_annotator("mlsd", [off], off, img, resolution=64, device="cpu").any()  # 0.047 < 0.1
    assert run_annotator("mlsd", [off], off, img, resolution=64, threshold_a=0.01, device="cpu").any()
