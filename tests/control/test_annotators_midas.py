"""MiDaS v3 DPT-Hybrid (`depth`, `normal_map`): the original checkpoint layout ↔ transformers, the published size,
the any-size forward against transformers' own, the extension's normal-map arithmetic on depth ramps, and both
preprocessors end to end on a random DPT-Hybrid saved in the original layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkroom.control import annotator_midas as am
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.preprocess import prepare_hint, preprocess

#: Keys and shapes of dpt_hybrid-midas-501f0c75.pt, from MiDaS (midas/dpt_depth.py + midas/vit.py:
#: timm vit_base_resnet50_384 as `pretrained.model`, readout/reassemble as `pretrained.act_postprocessN`,
#: the RefineNet decoder and head as `scratch`).
REAL_KEYS = {
    "pretrained.model.cls_token": (1, 1, 768),
    "pretrained.model.pos_embed": (1, 577, 768),
    "pretrained.model.patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
    "pretrained.model.patch_embed.backbone.stem.norm.weight": (64,),
    "pretrained.model.patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight": (256, 64, 1, 1),
    "pretrained.model.patch_embed.backbone.stages.1.blocks.3.conv2.weight": (128, 128, 3, 3),
    "pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight": (1024, 256, 1, 1),
    "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
    "pretrained.model.blocks.11.attn.qkv.weight": (2304, 768),
    "pretrained.model.blocks.0.mlp.fc1.weight": (3072, 768),
    "pretrained.model.norm.bias": (768,),
    "pretrained.model.head.weight": (1000, 768),
    "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
    "pretrained.act_postprocess3.3.weight": (768, 768, 1, 1),
    "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3),
    "scratch.layer1_rn.weight": (256, 256, 3, 3),
    "scratch.layer2_rn.weight": (256, 512, 3, 3),
    "scratch.layer4_rn.weight": (256, 768, 3, 3),
    "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "scratch.refinenet1.out_conv.bias": (256,),
    "scratch.output_conv.0.weight": (128, 256, 3, 3),
    "scratch.output_conv.2.weight": (32, 128, 3, 3),
    "scratch.output_conv.4.weight": (1, 32, 1, 1),
}
#: The DPT paper (Ranftl et al. 2021, table 1): DPT-Hybrid has 123M parameters (ImageNet classifier included).
PUBLISHED_PARAMETERS = 123e6


def to_original(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keys → the original MiDaS checkpoint's (the inverse of convert_dpt_hybrid_to_pytorch.py's
    renames), with a random ImageNet classifier as the released file has."""
    out: dict[str, torch.Tensor] = {}
    vit = {v: k for k, v in am._VIT_PARTS.items()}
    stem = {v: k for k, v in am._STEM.items()}
    qkv: dict[tuple[str, str], list[torch.Tensor]] = {}
    for key, value in hf.items():
        parts = key.split(".")
        if key in stem:
            out[stem[key]] = value
        elif key.startswith("dpt.embeddings.backbone.bit.encoder.stages."):
            rest = ".".join(parts[9:])
            out[f"pretrained.model.patch_embed.backbone.stages.{parts[6]}.blocks.{parts[8]}.{rest}"] = value
        elif key.startswith("dpt.encoder.layer."):
            i, part, kind = parts[3], ".".join(parts[4:-1]), parts[-1]
            if part in am._QKV:
                qkv.setdefault((i, kind), [None, None, None])[am._QKV.index(part)] = value
            else:
                out[f"pretrained.model.blocks.{i}.{vit[part]}.{kind}"] = value
        elif key.startswith("neck.convs."):
            out[f"scratch.layer{int(parts[2]) + 1}_rn.weight"] = value
        elif key.startswith("neck.fusion_stage.layers."):
            ref, part = f"scratch.refinenet{4 - int(parts[3])}", parts[4]
            name = "out_conv" if part == "projection" else f"resConfUnit{part[-1]}.conv{parts[5][-1]}"
            out[f"{ref}.{name}.{parts[-1]}"] = value
        elif key.startswith("head.head."):
            out[f"scratch.output_conv.{parts[2]}.{parts[3]}"] = value
        else:
            raise AssertionError(f"unmapped transformers key {key}")
    for (i, kind), chunks in qkv.items():
        out[f"pretrained.model.blocks.{i}.attn.qkv.{kind}"] = torch.cat(chunks)
    out["pretrained.model.head.weight"] = torch.randn(1000, 768) * 0.02
    out["pretrained.model.head.bias"] = torch.zeros(1000)
    return out


def meta_model():
    from transformers import DPTForDepthEstimation

    with torch.device("meta"):
        return DPTForDepthEstimation(am.midas_config())


def test_original_layout_round_trips_and_matches_the_published_size():
    hf = meta_model().state_dict()
    original = to_original(hf)
    for key, shape in REAL_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    assert len(original) == len(hf) - 2 * 2 * 12 + 2  # fused qkv per block; plus the classifier
    assert round(sum(v.numel() for v in original.values()) / 1e6) == round(PUBLISHED_PARAMETERS / 1e6)
    back = am.convert_state_dict(original)
    assert set(back) == set(hf)
    assert all(tuple(back[k].shape) == tuple(hf[k].shape) for k in hf)


def test_qkv_is_split_in_query_key_value_order_and_the_deepest_refinenet_fuses_first():
    fused = torch.arange(3 * 768 * 2, dtype=torch.float32).reshape(3 * 768, 2)
    out = am.convert_state_dict({"pretrained.model.blocks.7.attn.qkv.weight": fused})
    assert torch.equal(out["dpt.encoder.layer.7.attention.attention.query.weight"], fused[:768])
    assert torch.equal(out["dpt.encoder.layer.7.attention.attention.key.weight"], fused[768:1536])
    assert torch.equal(out["dpt.encoder.layer.7.attention.attention.value.weight"], fused[1536:])
    out = am.convert_state_dict({"scratch.refinenet4.out_conv.bias": torch.zeros(1),
                                 "scratch.refinenet1.resConfUnit2.conv1.weight": torch.zeros(1),
                                 "pretrained.model.head.weight": torch.zeros(1)})
    assert set(out) == {"neck.fusion_stage.layers.0.projection.bias",
                        "neck.fusion_stage.layers.3.residual_layer2.convolution1.weight"}


def test_not_a_midas_file_is_refused(tmp_path):
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save({"scratch.layer1_rn.weight": torch.zeros(256, 256, 3, 3)}, path)
    with pytest.raises(AnnotatorFileError, match="not a MiDaS DPT-Hybrid checkpoint"):
        am.load_midas_model(path)
    torch.save({"pretrained.model.pos_embed": torch.zeros(1, 577, 768)}, path)
    with pytest.raises(AnnotatorFileError, match="missing: .*dpt.embeddings"):
        am.load_midas_model(path)


# -- the extension's arithmetic -----------------------------------------------------------------------------------


def expected_pixel(gx: float, gy: float) -> list[int]:
    """(x, y, 2π) normalised, · 127.5 + 127.5, truncated."""
    n = math.sqrt(gx * gx + gy * gy + 4 * math.pi ** 2)
    return [int(gx / n * 127.5 + 127.5), int(gy / n * 127.5 + 127.5), int(2 * math.pi / n * 127.5 + 127.5)]


def test_normal_map_of_a_horizontal_ramp():
    depth = np.tile(np.arange(8, dtype=np.float32), (6, 1))  # (6, 8): nearer to the right, slope 1
    out = am.depth_to_normal(depth, background=0.4)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    flat = expected_pixel(0, 0)
    assert flat == [127, 127, 255]
    # Sobel 3×3 of a slope-1 ramp is 2·(1 + 2 + 1) = 8; reflected borders give 0 in the first and last column;
    # columns whose normalised depth x / 7 is below 0.4 (x ≤ 2) are background.
    for x in range(8):
        want = expected_pixel(8, 0) if 3 <= x <= 6 else flat
        assert out[:, x].tolist() == [want] * 6, x
    assert expected_pixel(8, 0) == [227, 127, 206]
    everything = am.depth_to_normal(depth, background=0.0)
    assert everything[:, 1].tolist() == [expected_pixel(8, 0)] * 6  # threshold 0: only the borders stay flat


def test_normal_map_of_a_vertical_ramp_scales_with_the_slope():
    depth = np.tile((np.arange(10, dtype=np.float32) * 3)[:, None], (1, 5))  # (10, 5): slope 3 downwards
    out = am.depth_to_normal(depth, background=0.5)
    for y in range(10):
        want = expected_pixel(0, 24) if 5 <= y <= 8 else [127, 127, 255]  # y / 9 ≥ 0.5 from row 5; row 9: border
        assert out[y].tolist() == [want] * 5, y
    assert am.depth_to_normal(np.full((4, 4), 3.0, np.float32)).tolist() == [[[127, 127, 255]] * 4] * 4


def test_depth_is_min_max_normalised_near_white():
    depth = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)  # inverse depth: 10 is nearest
    assert am.depth_to_uint8(depth).tolist() == [[0, 63], [127, 255]]
    assert am.depth_to_uint8(np.full((3, 3), 7.0, np.float32)).tolist() == [[0] * 3] * 3


# -- the network ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def midas_file(tmp_path_factory):
    """A random full-size DPT-Hybrid in the original layout (fp16, 245 MB) and the model it came from."""
    from transformers import DPTForDepthEstimation

    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    torch.manual_seed(0)
    model = DPTForDepthEstimation(am.midas_config()).eval()
    with torch.no_grad():
        model.head.head[4].bias.fill_(1.0)  # keep the final ReLU from flattening a random network's output
        for p in model.parameters():
            p.copy_(p.half().float())  # what the fp16 file holds
    torch.save({k: v.half() for k, v in to_original(model.state_dict()).items()},
               folder / "dpt_hybrid-midas-501f0c75.pt")
    yield folder, model
    NETWORKS.clear()


def test_any_size_forward_matches_transformers_and_takes_non_square_inputs(midas_file):
    folder, reference = midas_file
    NETWORKS.clear()
    model = am.load_midas_model(folder / "dpt_hybrid-midas-501f0c75.pt")
    big = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():  # the trained size, through transformers' own (unpatched) forward
        want = reference(pixel_values=big).predicted_depth
    torch.testing.assert_close(am.forward_depth(model, big), want, rtol=1e-4, atol=1e-5)
    x = big[..., :64, :64]
    wide = am.forward_depth(model, torch.cat([x, x.flip(-1)], dim=-1))  # (1, 64, 128): a 4 × 8 token grid
    assert wide.shape == (1, 64, 128) and wide.std() > 0
    with pytest.raises(ValueError, match="multiple of 32"):
        am.forward_depth(model, x[..., :48])


def test_depth_and_normal_map_end_to_end(midas_file):
    folder, _ = midas_file
    NETWORKS.clear()
    img = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    kwargs = {"annotator_dirs": [folder], "annotator_home": folder, "device": "cpu"}
    depth = preprocess("depth", img, resolution=64, **kwargs)
    assert depth.shape == (64, 107, 3) and depth.dtype == np.float32  # short side 64, aspect kept
    assert np.array_equal(depth[:, :, 0], depth[:, :, 2])
    model = NETWORKS.get(folder / "dpt_hybrid-midas-501f0c75.pt", torch.device("cpu"),
                         lambda p: pytest.fail("reloaded"))
    # the same pipeline by hand: resized, padded to 64 × 128, x / 127.5 - 1, min-max, unpadded
    from darkroom.control.annotators import pad_to_multiple
    from darkroom.control.preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(img, 64), 64)
    assert padded.shape == (64, 128, 3)
    raw = am.predict_depth(model, padded)
    assert np.array_equal((depth[:, :, 0] * 255).round().astype(np.uint8), unpad(am.depth_to_uint8(raw)))
    normal = preprocess("normal_map", img, resolution=64, **kwargs)
    assert normal.shape == (64, 107, 3)
    assert np.array_equal((normal * 255).round().astype(np.uint8), unpad(am.depth_to_normal(raw, 0.4)))
    assert (normal[:, :, 2] < 1.0).any() and (normal[:, :, 2] == 1.0).any()  # slopes and background
    low = preprocess("normal_map", img, resolution=64, threshold_a=0.0, **kwargs)
    assert (low[:, :, 2] < 1.0).sum() > (normal[:, :, 2] < 1.0).sum()  # a lower threshold keeps more slopes
    hint = prepare_hint(torch.from_numpy(img.astype(np.float32) / 255.0)[None], "depth", resolution=64, width=96,
                        height=64, **kwargs)
    assert tuple(hint.shape) == (1, 64, 96, 3)
