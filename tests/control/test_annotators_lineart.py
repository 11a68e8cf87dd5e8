"""Line art (sk_model.pth, sk_model2.pth): the informative-drawings generator in the real key layout, the inversion
to white lines on black, and lineart / lineart_coarse end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_lineart as la
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.preprocess import prepare_hint, preprocess

#: Keys and shapes of sk_model.pth / sk_model2.pth (lllyasviel/Annotators), from annotator/lineart's
#: Generator(3, 1, 3): instance norm has no parameters, so only convolutions are stored.
REAL_KEYS = {
    "model0.1.weight": (64, 3, 7, 7),
    "model1.0.weight": (128, 64, 3, 3),
    "model1.3.weight": (256, 128, 3, 3),
    "model2.0.conv_block.1.weight": (256, 256, 3, 3),
    "model2.2.conv_block.5.bias": (256,),
    "model3.0.weight": (256, 128, 3, 3),  # transposed convolutions store (in, out, k, k)
    "model3.3.weight": (128, 64, 3, 3),
    "model4.1.weight": (1, 64, 7, 7),
}
REAL_TENSORS = 24  # 12 convolutions


def test_generator_has_the_real_checkpoint_layout():
    sd = {k: tuple(v.shape) for k, v in la.LineartGenerator().state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert "model2.3.conv_block.1.weight" not in sd  # three residual blocks, not the paper's nine


def test_output_has_the_input_size_and_the_map_is_inverted():
    net = la.LineartGenerator().eval()
    with torch.no_grad():
        net.model4[1].weight.zero_()
        net.model4[1].bias.fill_(float(np.log(0.25 / 0.75)))  # sigmoid → 0.25: a dark grey drawing
    drawing = la.line_drawing(net, np.zeros((36, 52, 3), np.uint8))
    assert drawing.shape == (36, 52) and drawing.dtype == np.uint8
    assert np.all(drawing == 63)  # 0.25 × 255, truncated


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "sk_model.pth"
    torch.save(la.LineartGenerator(residual_blocks=9).state_dict(), path)  # the paper's 9-block generator
    with pytest.raises(AnnotatorFileError, match="unexpected: model2.3.conv_block"):
        la.load_lineart_model(path)


@pytest.fixture(scope="module")
def lineart_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    for seed, name, bias in ((2, "sk_model.pth", 4.0), (3, "sk_model2.pth", -4.0)):
        torch.manual_seed(seed)
        net = la.LineartGenerator()
        with torch.no_grad():
            net.model4[1].weight.mul_(0.01)
            net.model4[1].bias.fill_(bias)  # realistic: near-white paper; coarse: near-black
        torch.save(net.state_dict(), folder / name)
    return folder


def test_lineart_preprocessors_end_to_end(lineart_files):
    NETWORKS.clear()
    img = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    kw = dict(resolution=64, annotator_dirs=[lineart_files], annotator_home=lineart_files, device="cpu")
    fine = preprocess("lineart_realistic", img, **kw)  # the A1111 alias of "lineart"
    coarse = preprocess("lineart_coarse", img, **kw)
    assert fine.shape == coarse.shape == (90, 64, 3) and fine.dtype == np.float32
    # Each file runs its own network: white paper becomes a black map, black paper a white one.
    assert fine.max() < 0.1 and coarse.min() > 0.9
    assert len(NETWORKS) == 2
    hint = prepare_hint(torch.from_numpy(img.astype(np.float32) / 255.0)[None], "lineart", resolution=64,
                        annotator_dirs=[lineart_files], annotator_home=lineart_files, device="cpu")
    assert tuple(hint.shape) == (1, 90, 64, 3)
