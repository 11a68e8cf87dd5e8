"""NormalBAE (scannet.pt): the real key layout of NNET (EfficientNet-B5 encoder + uncertainty decoder), TF "same"
padding, the prediction normalisation and refinement, the colour convention, and normal_bae end to end on random
weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_normalbae as nb
from darkroom.control import annotators
from darkroom.control.annotators import NETWORKS, AnnotatorFileError, run_annotator
from darkroom.control.preprocess import preprocess

#: Keys and shapes of scannet.pt (lllyasviel/Annotators; `{"model": state_dict}`), from annotator/normalbae's NNET:
#: gen-efficientnet's tf_efficientnet_b5_ap (classifier replaced by Identity) and the BN decoder.
E = "encoder.original_model."
REAL_KEYS = {
    E + "conv_stem.weight": (48, 3, 3, 3),
    E + "bn1.running_mean": (48,),
    E + "bn1.num_batches_tracked": (),
    E + "blocks.0.0.conv_dw.weight": (48, 1, 3, 3),  # depthwise-separable stage: 48 → 24
    E + "blocks.0.0.se.conv_reduce.weight": (12, 48, 1, 1),
    E + "blocks.0.0.conv_pw.weight": (24, 48, 1, 1),
    E + "blocks.0.2.bn2.running_var": (24,),
    E + "blocks.1.0.conv_pw.weight": (144, 24, 1, 1),  # inverted residuals: 6× expansion
    E + "blocks.1.0.se.conv_reduce.weight": (6, 144, 1, 1),  # squeeze to a quarter of the block input
    E + "blocks.1.4.conv_pwl.weight": (40, 240, 1, 1),
    E + "blocks.2.0.conv_dw.weight": (240, 1, 5, 5),
    E + "blocks.3.6.bn3.bias": (128,),
    E + "blocks.4.6.conv_pwl.weight": (176, 1056, 1, 1),
    E + "blocks.5.8.se.conv_expand.weight": (1824, 76, 1, 1),
    E + "blocks.6.2.conv_pwl.weight": (512, 3072, 1, 1),
    E + "conv_head.weight": (2048, 512, 1, 1),
    E + "bn2.weight": (2048,),
    "decoder.conv2.weight": (2048, 2048, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2048 + 176, 3, 3),
    "decoder.up1._net.4.running_mean": (1024,),
    "decoder.up2._net.0.weight": (512, 1024 + 64, 3, 3),
    "decoder.up3._net.0.weight": (256, 512 + 40, 3, 3),
    "decoder.up4._net.3.weight": (128, 128, 3, 3),
    "decoder.out_conv_res8.weight": (4, 512, 3, 3),
    "decoder.out_conv_res4.0.weight": (128, 512 + 4, 1),
    "decoder.out_conv_res2.0.weight": (128, 256 + 4, 1),
    "decoder.out_conv_res1.6.weight": (4, 128, 1),
}
#: 852 encoder tensors (stem 6, 3 separable blocks × 16, 36 inverted residuals × 22, head 6; a BN is 5 tensors)
#: and 84 decoder tensors (conv2 2, four up blocks × 14, out_conv_res8 2, three MLPs × 8).
REAL_TENSORS = 936
BLOCKS_PER_STAGE = [3, 5, 5, 7, 7, 9, 3]
EFFICIENTNET_B5_PARAMS = 30_389_784  # with its 2048 → 1000 ImageNet classifier, which the checkpoint does not have
DECODER_PARAMS = (2048 * 2048 + 2048
                  + sum(cin * cout * 9 + cout + cout * cout * 9 + cout + 4 * cout
                        for cin, cout in ((2224, 1024), (1088, 512), (552, 256), (280, 128)))
                  + 512 * 4 * 9 + 4
                  + sum(cin * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 4 + 4 for cin in (516, 260, 132)))


def test_network_has_the_real_checkpoint_layout():
    with torch.device("meta"):
        net = nb.NormalBaeNet()
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert [len(stage) for stage in net.encoder.original_model.blocks] == BLOCKS_PER_STAGE
    assert not any("classifier" in k for k in sd)
    encoder = sum(p.numel() for p in net.encoder.parameters())
    assert encoder + 2048 * 1000 + 1000 == EFFICIENTNET_B5_PARAMS
    assert sum(p.numel() for p in net.decoder.parameters()) == DECODER_PARAMS == 44_081_552


def test_b5_is_b0_widened_and_deepened():
    assert nb.round_channels(32 * nb.WIDTH) == 48 and nb.round_channels(1280 * nb.WIDTH) == 2048
    assert [c for _, _, c, _ in nb.b5_stages()] == [24, 40, 64, 128, 176, 304, 512]
    assert [n for _, _, _, n in nb.b5_stages()] == BLOCKS_PER_STAGE


def test_tf_same_padding_known_answers():
    assert nb.same_padding(64, 3, 2) == (0, 1)  # the extra pixel goes after (PyTorch's padding=1 would be (1, 1))
    assert nb.same_padding(65, 3, 2) == (1, 1)
    assert nb.same_padding(64, 5, 2) == (1, 2)
    assert nb.same_padding(32, 5, 1) == (2, 2)
    assert nb.same_padding(7, 1, 1) == (0, 0)
    conv = nb.SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(torch.ones(1, 1, 4, 4))[0, 0]
    assert out.tolist() == [[9.0, 6.0], [6.0, 4.0]]  # windows rows/cols 0-2 and 2-4, the last one half padding
    assert tuple(conv(torch.ones(1, 1, 65, 33)).shape[-2:]) == (33, 17)  # ceil(size / stride)


def test_prediction_is_a_unit_normal_and_a_concentration():
    raw = torch.tensor([3.0, 0.0, -4.0, -0.5]).view(1, 4, 1, 1)
    out = nb.normalize_prediction(raw).flatten().tolist()
    np.testing.assert_allclose(out, [0.6, 0.0, -0.8, np.exp(-0.5) - 1 + 1.01], rtol=1e-6)


def test_refinement_doubles_the_resolution_and_runs_at_every_pixel():
    mlp = nb._pixel_mlp(8 + 4)
    with torch.no_grad():
        for layer in mlp[::2]:
            layer.weight.zero_()
            layer.bias.zero_()
        mlp[0].weight[:4, 8:, 0] = torch.eye(4)  # pass the previous prediction (channels 8..11) straight through
        for layer in mlp[2::2]:
            layer.weight[:4, :4, 0] = torch.eye(4)
        prediction = torch.tensor([0.6, 0.0, 0.8, 2.0]).view(1, 4, 1, 1).expand(1, 4, 3, 5)
        out = nb.refine(mlp, torch.randn(1, 8, 3, 5), prediction)
    assert tuple(out.shape) == (1, 4, 6, 10)
    expected = torch.tensor([0.6, 0.0, 0.8, 3.01]).view(1, 4, 1, 1)  # κ: elu(2) + 1 + 0.01
    torch.testing.assert_close(out, expected.expand_as(out), rtol=1e-5, atol=1e-6)


def test_colour_convention():
    normals = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]])
    rgb = nb.normals_to_rgb(normals)
    assert rgb.dtype == np.uint8
    # (n + 1) / 2 · 255 truncated: R = x, G = y, B = z; facing the camera is lavender (127, 127, 255)
    assert rgb.tolist() == [[[127, 127, 255], [255, 127, 127], [127, 0, 127], [0, 127, 127]]]
    assert nb.normals_to_rgb(np.array([1.5, -2.0, 0.0])).tolist() == [255, 0, 127]  # clipped


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "scannet.pt"
    torch.save({"model": {E + "conv_stem.weight": torch.zeros(40, 3, 3, 3)}}, path)  # an EfficientNet-B4 stem
    with pytest.raises(AnnotatorFileError, match="not a NormalBAE network.*missing: decoder.conv2.bias.*"
                                                 "wrong shape: encoder.original_model.conv_stem.weight"):
        nb.load_normalbae_model(path)


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return nb.NormalBaeNet().eval()


def test_random_network_predicts_unit_normals_at_the_input_size(random_net):
    with torch.no_grad():
        out = random_net(torch.randn(1, 3, 64, 96))
    assert tuple(out.shape) == (1, 4, 64, 96)
    torch.testing.assert_close(out[:, :3].norm(dim=1), torch.ones(1, 64, 96))
    assert out[:, 3].min() >= nb.MIN_KAPPA
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    normals = nb.predict_normals(random_net, rgb)
    assert normals.shape == (64, 96, 3) and normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normals, axis=2), 1.0, rtol=1e-5)


#: The final MLP layer's bias in the end-to-end file: every pixel's normal is (3, 0, 4) / 5.
CONSTANT_NORMAL = (3.0, 0.0, 4.0)


@pytest.fixture(scope="module")
def normalbae_folder(random_net, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "annotators"
    (folder / "normalbae").mkdir(parents=True)
    sd = {k: v.clone() for k, v in random_net.state_dict().items()}
    sd["decoder.out_conv_res1.6.weight"].zero_()
    sd["decoder.out_conv_res1.6.bias"].copy_(torch.tensor([*CONSTANT_NORMAL, 0.0]))
    torch.save({"model": sd}, folder / "normalbae" / "scannet.pt")  # the training checkpoint's wrapping
    return folder


def test_normal_bae_end_to_end(normalbae_folder, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "normal_bae", ".annotator_normalbae")
    NETWORKS.clear()
    img = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    try:
        out = preprocess("normal_bae", img, resolution=64, annotator_dirs=[normalbae_folder],
                         annotator_home=normalbae_folder, device="cpu")
        assert out.shape == (90, 64, 3) and out.dtype == np.float32
        expected = np.array([204.0, 127.0, 229.0])  # (0.6, 0, 0.8) → (n + 1) / 2 · 255
        assert np.abs(out * 255.0 - expected).max() <= 1.0
        raw = run_annotator("normal_bae", [normalbae_folder], normalbae_folder, img, 64, device="cpu")
        assert raw.shape == (90, 64, 3) and raw.dtype == np.uint8
        assert len(NETWORKS) == 1  # loaded once
    finally:
        NETWORKS.clear()
