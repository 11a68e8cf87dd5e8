"""ADE20K segmentation (upernet_global_small.pth): UniFormer-S + UPerNet in the real mmsegmentation checkpoint layout,
the ADE20K palette, the extension's pre-processing (rescale, reversed channels, ImageNet normalisation), the banded
resize + argmax against F.interpolate, wrong files, and `segmentation` end to end on a random network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from darkroom.control import annotator_segmentation as seg
from darkroom.control import annotators
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.preprocess import get_preprocessor, preprocess

#: Keys and shapes of upernet_global_small.pth (lllyasviel/Annotators), from annotator/uniformer: UniFormer(layers
#: [3, 4, 8, 3], embed_dim [64, 128, 320, 512], head_dim 64, windows=False, hybrid=False) as `backbone`, UPerHead
#: (pool scales 1, 2, 3, 6, 512 channels, BN) as `decode_head`, FCNHead (320 → 256, one conv) as `auxiliary_head`.
REAL_KEYS = {
    "backbone.patch_embed1.proj.weight": (64, 3, 4, 4),
    "backbone.patch_embed1.norm.weight": (64,),
    "backbone.patch_embed2.proj.weight": (128, 64, 2, 2),
    "backbone.patch_embed4.proj.weight": (512, 320, 2, 2),
    "backbone.blocks1.0.pos_embed.weight": (64, 1, 3, 3),
    "backbone.blocks1.0.norm1.running_var": (64,),
    "backbone.blocks1.0.norm1.num_batches_tracked": (),
    "backbone.blocks1.2.conv1.weight": (64, 64, 1, 1),
    "backbone.blocks1.2.attn.weight": (64, 1, 5, 5),
    "backbone.blocks2.3.conv2.bias": (128,),
    "backbone.blocks2.3.mlp.fc1.weight": (512, 128, 1, 1),
    "backbone.blocks3.0.norm1.weight": (320,),
    "backbone.blocks3.7.attn.qkv.weight": (960, 320),
    "backbone.blocks3.7.attn.qkv.bias": (960,),
    "backbone.blocks3.7.attn.proj.weight": (320, 320),
    "backbone.blocks4.2.mlp.fc1.weight": (2048, 512),
    "backbone.blocks4.2.mlp.fc2.weight": (512, 2048),
    "backbone.norm3.bias": (320,),
    "backbone.norm4.weight": (512,),
    "decode_head.psp_modules.0.1.conv.weight": (512, 512, 1, 1),
    "decode_head.psp_modules.3.1.bn.running_mean": (512,),
    "decode_head.bottleneck.conv.weight": (512, 2560, 3, 3),
    "decode_head.lateral_convs.0.conv.weight": (512, 64, 1, 1),
    "decode_head.lateral_convs.2.conv.weight": (512, 320, 1, 1),
    "decode_head.fpn_convs.1.conv.weight": (512, 512, 3, 3),
    "decode_head.fpn_bottleneck.conv.weight": (512, 2048, 3, 3),
    "decode_head.fpn_bottleneck.bn.weight": (512,),
    "decode_head.conv_seg.weight": (150, 512, 1, 1),
    "decode_head.conv_seg.bias": (150,),
    "auxiliary_head.convs.0.conv.weight": (256, 320, 3, 3),
    "auxiliary_head.convs.0.bn.num_batches_tracked": (),
    "auxiliary_head.conv_seg.weight": (150, 256, 1, 1),
}
#: 332 backbone tensors (16 patch-embed, 7 conv blocks × 22, 11 attention blocks × 14, 8 stage norms), 74 decoder
#: (12 ConvModules × 6, classifier 2), 8 auxiliary.
REAL_TENSORS = 414
#: Learned parameters (BatchNorm statistics not counted): UniFormer paper, table 8, UperNet + UniFormer-S: 52M.
PARAMETERS = 51_521_132
SKY = 2


def meta_network(auxiliary: bool = True) -> seg.UperNetUniFormer:
    with torch.device("meta"):
        return seg.UperNetUniFormer(auxiliary=auxiliary)


def test_network_has_the_real_checkpoint_layout():
    net = meta_network()
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS
    assert "backbone.blocks3.8.attn.qkv.weight" not in sd and "backbone.blocks4.3.norm1.weight" not in sd
    assert not any(k.startswith("backbone.head") for k in sd)  # no ImageNet classifier in the segmentor


def test_attention_heads_are_64_wide():
    net = meta_network()
    assert [b.attn.heads for b in (net.backbone.blocks3[0], net.backbone.blocks4[0])] == [5, 8]


def test_palette_is_ade20k():
    pal = seg.ADE20K_PALETTE
    assert len(pal) == seg.NUM_CLASSES == 150
    assert pal[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))  # wall, building, sky
    assert pal[12] == (150, 5, 61) and pal[-1] == (92, 0, 255)  # person, flag
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in pal)
    # mmsegmentation's palette gives road (6) and skyscraper (48) the same grey; the other 148 are distinct.
    assert len(set(pal)) == 149 and pal[6] == pal[48] == (140, 140, 140)


def test_colorize_paints_classes_with_their_colours():
    classes = np.array([[0, 1, 2], [12, 149, 2]], np.uint8)
    out = seg.colorize(classes)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    assert out[1].tolist() == [[150, 5, 61], [92, 0, 255], [6, 230, 230]]


@pytest.mark.parametrize(("size", "expected"), [
    ((512, 704), (512, 704)),  # a 512 map padded to 64: already the working size
    ((64, 128), (512, 1024)),  # small pictures are enlarged to a 512 short side
    ((512, 4096), (256, 2048)),  # very wide ones are capped by the 2048 long side
    ((333, 500), (512, 769)),  # 500 × 512/333 = 768.77 → 769 (rounded half up)
])
def test_mmseg_rescale_size(size, expected):
    assert seg.mmseg_size(*size) == expected


def test_network_input_reverses_channels_and_normalises():
    rgb = np.zeros((8, 6, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
    x = seg.network_input(rgb, scale=(8, 6))  # already that size: no resize
    assert x.shape == (1, 3, 8, 6) and x.dtype == torch.float32
    # The extension's RGB array is read as BGR: the blue value is normalised with the red mean/std, and so on.
    expected = [(50 - 123.675) / 58.395, (100 - 116.28) / 57.12, (200 - 103.53) / 57.375]
    assert torch.allclose(x[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert seg.network_input(rgb).shape == (1, 3, 683, 512)  # short side 512: 8 × 512/6 = 682.7 → 683


def test_upsample_argmax_matches_interpolate():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 9, 13, generator=g)
    for size in ((36, 52), (37, 29), (9, 13)):
        want = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        got = seg.upsample_argmax(logits, *size, band=5)  # several bands, the last one short
        assert got.shape == size and got.dtype == torch.long
        assert (got == want).float().mean() > 0.999  # equal up to float ties


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """The real layout with random weights (fan-in scaled), identity BatchNorm statistics, and a classifier that
    says "sky" everywhere."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, meta in meta_network().state_dict().items():
        shape = tuple(meta.shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            out[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            out[key] = torch.zeros(shape)
        elif len(shape) == 1:
            out[key] = 0.02 * torch.randn(shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g) / float(np.sqrt(np.prod(shape[1:])))
    out["decode_head.conv_seg.weight"].mul_(0.001)
    out["decode_head.conv_seg.bias"].zero_()[SKY] = 5.0
    return out


@pytest.fixture(scope="module")
def weights():
    return random_state_dict(0)


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory, weights):
    """A models/annotators folder with an mmsegmentation-style checkpoint (state_dict + meta) of random weights."""
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    meta = {"CLASSES": tuple(f"class{i}" for i in range(150)), "PALETTE": [list(c) for c in seg.ADE20K_PALETTE]}
    torch.save({"meta": meta, "state_dict": weights}, folder / "upernet_global_small.pth")
    return folder


def test_forward_gives_logits_at_the_input_size(seg_folder):
    net = seg.load_segmentation_model(seg_folder / "upernet_global_small.pth").eval()
    with torch.no_grad():
        logits = net(torch.randn(1, 3, 72, 100))  # not multiples of 32: stages floor 18×25 → 9×12 → 4×6 → 2×3
        feats = net.backbone(torch.randn(1, 3, 64, 96))
        aux = net.auxiliary_head(feats[2])
    assert logits.shape == (1, 150, 72, 100) and torch.isfinite(logits).all()
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 320, 4, 6), (1, 512, 2, 3)]
    assert aux.shape == (1, 150, 4, 6)
    assert (logits.argmax(1) == SKY).all()


def test_loading_rejects_another_network(tmp_path, weights):
    path = tmp_path / "upernet_global_small.pth"
    # A Cityscapes UPerNet (19 classes): zero-stride stand-ins keep the file tiny, only the shapes matter.
    cityscapes = {k: torch.zeros(()).expand(v.shape) for k, v in weights.items()}
    cityscapes["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)
    cityscapes["decode_head.conv_seg.bias"] = torch.zeros(19)
    torch.save({"state_dict": cityscapes}, path)
    with pytest.raises(AnnotatorFileError, match="not a UniFormer-S UPerNet ADE20K .*wrong shape: .*conv_seg"):
        seg.load_segmentation_model(path)
    torch.save({"norm": torch.zeros(1, 3, 1, 1)}, path)  # ControlNetHED.pth saved under this name
    with pytest.raises(AnnotatorFileError, match="missing: backbone.*unexpected: norm"):
        seg.load_segmentation_model(path)


def test_loading_accepts_a_file_without_the_auxiliary_head(tmp_path, weights):
    path = tmp_path / "upernet_global_small.pth"
    torch.save({k: torch.zeros(()).expand(v.shape) for k, v in weights.items() if not k.startswith("auxiliary")}, path)
    net = seg.load_segmentation_model(path)
    assert not hasattr(net, "auxiliary_head") and len(net.state_dict()) == REAL_TENSORS - 8


def test_segmentation_end_to_end(seg_folder, monkeypatch):
    monkeypatch.setitem(annotators.RUNNERS, "segmentation", ".annotator_segmentation")
    monkeypatch.setattr(seg, "MMSEG_SCALE", (256, 64))  # the network at a 64 short side instead of 512 (1 CPU)
    NETWORKS.clear()
    assert get_preprocessor("seg_ufade20k").name == "segmentation"
    img = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    out = preprocess("seg_ufade20k", img, resolution=64, annotator_dirs=[seg_folder], annotator_home=seg_folder,
                     device="cpu")
    assert out.shape == (90, 64, 3) and out.dtype == np.float32  # short side 64, padding cut off
    assert np.allclose(out, np.array(seg.ADE20K_PALETTE[SKY], np.float32) / 255.0)  # all "sky"
    raw = annotators.run_annotator("segmentation", [seg_folder], seg_folder, img, 64, device="cpu")
    assert raw.shape == (90, 64, 3) and raw.dtype == np.uint8
    assert len(NETWORKS) == 1  # loaded once, cached
