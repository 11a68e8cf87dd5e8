"""Anime line art (netG.pth, erika.pth): the Anime2Sketch U-Net and the MangaLineExtraction residual U-Net in the
real key layouts, their pre/post-processing, and lineart_anime / lineart_anime_denoise end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_lineart_anime as la
from darkroom.control import annotators
from darkroom.control.annotators import NETWORKS, AnnotatorFileError, run_annotator
from darkroom.control.preprocess import preprocess

#: Keys and shapes of netG.pth (lllyasviel/Annotators, from Anime2Sketch), as annotator/lineart_anime builds it:
#: UnetGenerator(3, 1, 8, 64) with InstanceNorm2d(affine=False) — convolutions with biases only.
NETG_KEYS = {
    "model.model.0.weight": (64, 3, 4, 4),
    "model.model.3.weight": (128, 1, 4, 4),  # transposed convolutions store (in, out, k, k)
    "model.model.3.bias": (1,),
    "model.model.1.model.1.weight": (128, 64, 4, 4),
    "model.model.1.model.5.weight": (256, 64, 4, 4),
    "model.model.1.model.3.model.1.weight": (256, 128, 4, 4),
    "model.model.1.model.3.model.3.model.5.weight": (1024, 256, 4, 4),
    "model.model.1.model.3.model.3.model.3.model.3.model.3.model.5.bias": (512,),
    "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight": (512, 512, 4, 4),  # innermost
    "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.3.weight": (512, 512, 4, 4),
}
NETG_TENSORS = 32  # 16 convolutions
NETG_PARAMETERS = 54_405_505  # 217.6 MB in float32, the size of netG.pth

#: Keys and shapes of erika.pth (MangaLineExtraction_PyTorch's res_skip); batch norms at .model.0, convs at .model.2.
ERIKA_KEYS = {
    "block0.model.0.conv1.model.0.running_var": (1,),
    "block0.model.0.conv1.model.2.weight": (24, 1, 3, 3),
    "block0.model.0.shortcut.model.0.weight": (24, 1, 1, 1),
    "block1.model.0.shortcut.model.0.weight": (48, 24, 1, 1),
    "block1.model.2.conv1.model.2.weight": (48, 48, 3, 3),  # the stride-2 block closing the stage
    "block1.model.2.shortcut.model.0.weight": (48, 48, 1, 1),
    "block4.model.11.residual.model.2.weight": (384, 384, 3, 3),
    "block5.model.0.conv1.model.2.weight": (192, 384, 3, 3),
    "block5.model.0.shortcut.model.0.bias": (192,),
    "block8.model.1.residual.model.0.weight": (24,),
    "block9.model.0.shortcut.model.0.weight": (16, 24, 1, 1),
    "conv15.model.0.num_batches_tracked": (),
    "conv15.model.2.weight": (1, 16, 1, 1),
}
ERIKA_TENSORS = 707  # 97 batch norms × 5 + 111 convolutions × 2
ERIKA_COUNTERS = 97  # num_batches_tracked, one per batch norm
ERIKA_PARAMETERS = 43_100_147  # 172.4 MB in float32, the size of erika.pth


def _meta(build) -> torch.nn.Module:
    """A network built on the meta device: its layout without the cost of initialising it."""
    with torch.device("meta"):
        return build()


def _zero_state(build) -> dict[str, torch.Tensor]:
    """A network's state dict filled with zeros."""
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in _meta(build).state_dict().items()}


@pytest.mark.parametrize(("build", "keys", "tensors", "parameters"), [
    (la.AnimeLineartUnet, NETG_KEYS, NETG_TENSORS, NETG_PARAMETERS),
    (la.MangaLineNet, ERIKA_KEYS, ERIKA_TENSORS, ERIKA_PARAMETERS),
], ids=["netG", "erika"])
def test_networks_have_the_real_checkpoint_layout(build, keys, tensors, parameters):
    net = _meta(build)
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in keys.items():
        assert sd[key] == shape, key
    assert len(sd) == tensors
    assert sum(p.numel() for p in net.parameters()) == parameters


def test_layout_details():
    unet = set(_meta(la.AnimeLineartUnet).state_dict())
    assert not any("running" in k for k in unet)  # parameter-free instance norm: convolutions only
    manga = set(_meta(la.MangaLineNet).state_dict())
    assert sum(k.endswith(".num_batches_tracked") for k in manga) == ERIKA_COUNTERS
    # Shortcuts project only where a block changes width or strides; decoder merges (res1..res4) are plain sums.
    assert "block1.model.1.shortcut.model.0.weight" not in manga
    assert "block5.model.1.shortcut.model.0.weight" not in manga
    assert not any(k.startswith("res") for k in manga)


def test_unet_skip_carries_the_leaky_relu_of_the_input():
    level = la._UnetLevel(2, 4).eval()  # innermost: [LeakyReLU, conv, ReLU, convT, norm]
    x = torch.full((1, 2, 4, 4), -1.0)
    with torch.no_grad():
        out = level(x)
    assert out.shape == (1, 4, 4, 4)
    assert torch.allclose(out[:, :2], torch.full((1, 2, 4, 4), -0.2))  # pix2pix's in-place LeakyReLU


def test_anime_drawing_keeps_the_size_and_maps_tanh_to_0_255():
    net = la.AnimeLineartUnet(levels=5, width=4).eval()  # same structure, a small copy
    with torch.no_grad():
        net.model.model[3].weight.zero_()
        net.model.model[3].bias.fill_(float(np.arctanh(0.5)))  # tanh → 0.5 everywhere
    drawing = la.anime_drawing(net, np.zeros((40, 70, 3), np.uint8))
    assert drawing.shape == (40, 70) and drawing.dtype == np.uint8
    assert np.all(drawing == 191)  # 0.5 × 127.5 + 127.5, truncated


def test_manga_lines_are_255_minus_the_drawing():
    net = la.MangaLineNet().eval()
    with torch.no_grad():
        net.conv15.model[2].weight.zero_()
        net.conv15.model[2].bias.fill_(200.0)
    lines = la.manga_lines(net, np.full((32, 48, 3), 255, np.uint8))
    assert lines.shape == (32, 48) and lines.dtype == np.uint8
    assert np.all(lines == 55)
    with torch.no_grad():
        net.conv15.model[2].bias.fill_(300.0)  # beyond the paper: clipped, not wrapped around
    assert np.all(la.manga_lines(net, np.zeros((16, 16, 3), np.uint8)) == 0)


def test_loading_rejects_other_networks(tmp_path):
    path = tmp_path / "netG.pth"
    torch.save(_zero_state(lambda: la.AnimeLineartUnet(levels=7)), path)  # a U-Net one level short
    with pytest.raises(AnnotatorFileError, match="not a Anime2Sketch line art U-Net.*missing: model.model.1"):
        la.load_anime_model(path)
    erika = tmp_path / "erika.pth"
    torch.save(_zero_state(la.AnimeLineartUnet), erika)
    with pytest.raises(AnnotatorFileError, match="not a MangaLineExtraction network.*missing: block0"):
        la.load_manga_line_model(erika)


def test_manga_loader_takes_files_with_or_without_batch_norm_counters(tmp_path):
    sd = _zero_state(la.MangaLineNet)
    sd["conv15.model.2.weight"] = torch.arange(16.0).reshape(1, 16, 1, 1)
    with_counters, without = tmp_path / "a" / "erika.pth", tmp_path / "b" / "erika.pth"
    for path, state in ((with_counters, sd), (without, {k: v for k, v in sd.items()
                                                        if not k.endswith(".num_batches_tracked")})):
        path.parent.mkdir()
        torch.save(state, path)
    for path in (with_counters, without):
        net = la.load_manga_line_model(path)
        assert torch.equal(net.conv15.model[2].weight, sd["conv15.model.2.weight"])
    half = {k: v for i, (k, v) in enumerate(sd.items()) if not (k.endswith(".num_batches_tracked") and i % 2)}
    torch.save(half, without)
    with pytest.raises(AnnotatorFileError, match="missing: .*num_batches_tracked"):
        la.load_manga_line_model(without)


@pytest.fixture(scope="module")
def anime_files(tmp_path_factory):
    """A models/annotators folder with random-weight netG.pth (near-white paper) and erika.pth (near-black)."""
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    torch.manual_seed(4)
    unet = la.AnimeLineartUnet()
    with torch.no_grad():
        unet.model.model[3].weight.mul_(0.01)
        unet.model.model[3].bias.fill_(3.0)  # tanh ≈ 1: white paper → black map once inverted
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, folder / "netG.pth")  # DataParallel names
    (folder / "manga").mkdir()
    manga = la.MangaLineNet()
    with torch.no_grad():
        manga.conv15.model[2].weight.zero_()
        manga.conv15.model[2].bias.fill_(-50.0)  # drawing below 0 → 255 − it clips to white lines everywhere
    torch.save(manga.state_dict(), folder / "manga" / "erika.pth")
    return folder


def test_lineart_anime_preprocessors_end_to_end(anime_files, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "lineart_anime", ".annotator_lineart_anime")
    monkeypatch.setitem(annotators.RUNNERS, "lineart_anime_denoise", ".annotator_lineart_anime")
    NETWORKS.clear()
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    kw = dict(resolution=256, annotator_dirs=[anime_files], annotator_home=anime_files, device="cpu")
    anime = preprocess("lineart_anime", img, **kw)
    denoise = preprocess("lineart_anime_denoise", img, **kw)
    assert anime.shape == denoise.shape == (256, 256, 3) and anime.dtype == denoise.dtype == np.float32
    assert anime.max() < 0.05 and denoise.min() == 1.0  # each file runs its own network
    assert len(NETWORKS) == 2
    raw = run_annotator("lineart_anime", [anime_files], anime_files, img, 256, device="cpu")
    assert raw.shape == (256, 256) and raw.dtype == np.uint8
    assert len(NETWORKS) == 2  # cached
