"""Depth Anything V1/V2: the original checkpoint layout ↔ transformers, sizes from shapes (the published parameter
counts), the input size rule, DINOv2's position-embedding resize, min-max normalisation, and both preprocessors end
to end on a random ViT-S saved in the original layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.control import annotator_depth as ad
from darkroom.control.annotators import ANNOTATORS, NETWORKS, AnnotatorFileError, require_annotator
from darkroom.control.preprocess import prepare_hint, preprocess

SIZES = {  # encoder: (width, blocks, neck channels, fusion features) as the original configs
    "vits": (384, 12, [48, 96, 192, 384], 64),
    "vitb": (768, 12, [96, 192, 384, 768], 128),
    "vitl": (1024, 24, [256, 512, 1024, 1024], 256),
}
#: Depth Anything V2's README: parameters of Small, Base, Large.
PUBLISHED_PARAMETERS = {"vits": 24.8e6, "vitb": 97.5e6, "vitl": 335.3e6}
#: Keys and shapes of depth_anything_v2_vitl.pth / depth_anything_vitl14.pth, from DepthAnythingV2 / DPT_DINOv2
#: (depth_anything*/dpt.py: DINOv2 ViT-L/14 at 518 px as `pretrained`, DPTHead as `depth_head`).
REAL_VITL_KEYS = {
    "pretrained.cls_token": (1, 1, 1024),
    "pretrained.pos_embed": (1, 1370, 1024),
    "pretrained.mask_token": (1, 1024),
    "pretrained.patch_embed.proj.weight": (1024, 3, 14, 14),
    "pretrained.blocks.23.attn.qkv.weight": (3072, 1024),
    "pretrained.blocks.0.ls1.gamma": (1024,),
    "pretrained.blocks.0.mlp.fc1.weight": (4096, 1024),
    "pretrained.norm.bias": (1024,),
    "depth_head.projects.0.weight": (256, 1024, 1, 1),
    "depth_head.projects.3.weight": (1024, 1024, 1, 1),
    "depth_head.resize_layers.0.weight": (256, 256, 4, 4),
    "depth_head.resize_layers.1.weight": (512, 512, 2, 2),
    "depth_head.resize_layers.3.weight": (1024, 1024, 3, 3),
    "depth_head.scratch.layer4_rn.weight": (256, 1024, 3, 3),
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "depth_head.scratch.refinenet1.out_conv.bias": (256,),
    "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3),
    "depth_head.scratch.output_conv2.0.weight": (32, 128, 3, 3),
    "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1),
}


def shape_of(encoder: str) -> dict:
    hidden, layers, neck, features = SIZES[encoder]
    return {"hidden": hidden, "patch": 14, "layers": layers, "heads": hidden // 64, "mlp_ratio": 4,
            "image_size": 518, "neck": neck, "features": features, "head_hidden": 32}


def to_original(hf: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers keys → the original checkpoint's (the inverse of convert_depth_anything_to_hf.py's renames)."""
    names = ad.attention_names(set(hf))
    out = {"pretrained.cls_token": hf["backbone.embeddings.cls_token"],
           "pretrained.mask_token": hf["backbone.embeddings.mask_token"],
           "pretrained.pos_embed": hf["backbone.embeddings.position_embeddings"]}
    for kind in ("weight", "bias"):
        out[f"pretrained.patch_embed.proj.{kind}"] = hf[f"backbone.embeddings.patch_embeddings.projection.{kind}"]
        out[f"pretrained.norm.{kind}"] = hf[f"backbone.layernorm.{kind}"]
        for i in range(layers):
            src, dst = f"backbone.encoder.layer.{i}", f"pretrained.blocks.{i}"
            out[f"{dst}.attn.qkv.{kind}"] = torch.cat([hf[f"{src}.{n}.{kind}"] for n in names[0]])
            out[f"{dst}.attn.proj.{kind}"] = hf[f"{src}.{names[1]}.{kind}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}.{part}.{kind}"] = hf[f"{src}.{part}.{kind}"]
        for i in range(4):
            out[f"depth_head.projects.{i}.{kind}"] = hf[f"neck.reassemble_stage.layers.{i}.projection.{kind}"]
            if i != 2:
                out[f"depth_head.resize_layers.{i}.{kind}"] = hf[f"neck.reassemble_stage.layers.{i}.resize.{kind}"]
            j, ref = 4 - (i + 1), f"depth_head.scratch.refinenet{i + 1}"
            out[f"{ref}.out_conv.{kind}"] = hf[f"neck.fusion_stage.layers.{j}.projection.{kind}"]
            for u in (1, 2):
                for c in (1, 2):
                    out[f"{ref}.resConfUnit{u}.conv{c}.{kind}"] = hf[
                        f"neck.fusion_stage.layers.{j}.residual_layer{u}.convolution{c}.{kind}"]
        for a, b in (("output_conv1", "conv1"), ("output_conv2.0", "conv2"), ("output_conv2.2", "conv3")):
            out[f"depth_head.scratch.{a}.{kind}"] = hf[f"head.{b}.{kind}"]
    for i in range(layers):
        for n in (1, 2):
            out[f"pretrained.blocks.{i}.ls{n}.gamma"] = hf[f"backbone.encoder.layer.{i}.layer_scale{n}.lambda1"]
    for i in range(4):
        out[f"depth_head.scratch.layer{i + 1}_rn.weight"] = hf[f"neck.convs.{i}.weight"]
    return out


def meta_model(encoder: str, version: int = 2):
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):
        return DepthAnythingForDepthEstimation(ad.depth_config(shape_of(encoder), version))


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl"])
def test_sizes_match_the_published_parameter_counts(encoder):
    model = meta_model(encoder)
    assert round(sum(p.numel() for p in model.parameters()) / 1e5) == round(PUBLISHED_PARAMETERS[encoder] / 1e5)


def test_vitl_original_layout_round_trips_through_the_conversion():
    model = meta_model("vitl")
    hf = model.state_dict()
    original = to_original(hf, 24)
    for key, shape in REAL_VITL_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    assert len(original) == len(hf) - 2 * 2 * 24  # one fused qkv (weight, bias) instead of three, per block
    assert ad.checkpoint_shape(original) == shape_of("vitl")
    back = ad.convert_state_dict(original, set(hf))
    assert set(back) == set(hf)
    assert all(tuple(back[k].shape) == tuple(hf[k].shape) for k in hf)


def test_v1_uses_the_last_four_blocks_and_v2_spread_out_ones():
    def indices(encoder, version):
        return list(ad.depth_config(shape_of(encoder), version).backbone_config.out_indices)

    assert indices("vitl", 1) == [21, 22, 23, 24] and indices("vits", 1) == [9, 10, 11, 12]
    assert indices("vitl", 2) == [5, 12, 18, 24] and indices("vitb", 2) == [3, 6, 9, 12]


def test_qkv_is_split_in_query_key_value_order():
    model = meta_model("vits")
    q, k, v = ad.attention_names(set(model.state_dict()))[0]
    fused = torch.arange(3 * 384 * 2, dtype=torch.float32).reshape(3 * 384, 2)
    out = ad.convert_state_dict({"pretrained.blocks.7.attn.qkv.weight": fused}, set(model.state_dict()))
    assert torch.equal(out[f"backbone.encoder.layer.7.{q}.weight"], fused[:384])
    assert torch.equal(out[f"backbone.encoder.layer.7.{k}.weight"], fused[384:768])
    assert torch.equal(out[f"backbone.encoder.layer.7.{v}.weight"], fused[768:])
    out = ad.convert_state_dict({"depth_head.scratch.refinenet4.out_conv.bias": torch.zeros(1),
                                 "depth_head.scratch.refinenet1.resConfUnit2.conv1.weight": torch.zeros(1)}, set())
    assert set(out) == {"neck.fusion_stage.layers.0.projection.bias",  # the deepest fuses first
                        "neck.fusion_stage.layers.3.residual_layer2.convolution1.weight"}


def test_not_a_depth_anything_file_is_refused(tmp_path):
    path = tmp_path / "depth_anything_v2_vitl.pth"
    torch.save({"pretrained.pos_embed": torch.zeros(1, 1370, 1024)}, path)
    with pytest.raises(AnnotatorFileError, match="not a Depth Anything checkpoint"):
        ad.load_depth_model(path, 2)


def test_input_size_rule():
    # Short side 518, long side the nearest multiple of 14 (never below 518): transformers' conversion check expects
    # (518, 686) for COCO's 480 × 640 cats picture.
    assert ad.network_size(480, 640) == (518, 686)
    assert ad.network_size(512, 512) == (518, 518)
    assert ad.network_size(768, 512) == (784, 518)
    assert ad.network_size(64, 80, size=42) == (42, 56)


def test_position_embeddings_follow_dinov2():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert ad.dinov2_position_embeddings(pos, 518, 518, 14) is pos  # the trained size: untouched
    out = ad.dinov2_position_embeddings(pos, 518, 686, 14)
    assert out.shape == (1, 1 + 37 * 49, 8) and torch.equal(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(37.1 / 37, 49.1 / 37), mode="bicubic")
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8))
    sized = torch.nn.functional.interpolate(grid, size=(37, 49), mode="bicubic")  # what transformers would do
    assert not torch.allclose(expected, sized)


def test_normalisation_makes_near_white():
    depth = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)  # relative inverse depth: 10 is nearest
    assert ad.normalise_depth(depth).tolist() == [[0, 63], [127, 255]]
    assert ad.normalise_depth(np.full((3, 3), 7.0, np.float32)).tolist() == [[0] * 3] * 3


def test_variants_are_found_largest_first(tmp_path):
    spec = ANNOTATORS["depth_anything_v2"]
    assert spec.files == ("depth_anything_v2_vitl.pth",)  # the missing-file message names the large model
    (tmp_path / "depth_anything_v2_vits.pth").write_bytes(b"x")
    assert require_annotator("depth_anything_v2", [tmp_path], tmp_path)[0].name == "depth_anything_v2_vits.pth"
    (tmp_path / "depth_anything_v2_vitb.safetensors").write_bytes(b"x")
    assert require_annotator("depth_anything_v2", [tmp_path], tmp_path)[0].name == "depth_anything_v2_vitb.safetensors"


@pytest.fixture(scope="module")
def depth_files(tmp_path_factory):
    """A random ViT-S Depth Anything in the original layout, as a V2 and a V1 file (fp16, 50 MB each)."""
    from transformers import DepthAnythingForDepthEstimation

    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    for version, name in ((2, "depth_anything_v2_vits.pth"), (1, "depth_anything_vits14.pth")):
        torch.manual_seed(version)
        model = DepthAnythingForDepthEstimation(ad.depth_config(shape_of("vits"), version))
        with torch.no_grad():
            model.head.conv3.bias.fill_(1.0)  # keep the final ReLU from flattening a random network's output
        torch.save({k: v.half() for k, v in to_original(model.state_dict(), 12).items()}, folder / name)
    return folder


@pytest.mark.parametrize("name", ["depth_anything_v2", "depth_anything"])
def test_depth_anything_end_to_end(depth_files, monkeypatch, name):
    NETWORKS.clear()
    monkeypatch.setattr(ad, "INPUT_SIZE", 56)  # the network's 518 works the same, only slower on a CPU
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = preprocess(name, img, resolution=48, annotator_dirs=[depth_files], annotator_home=depth_files,
                     device="cpu")
    assert out.shape == (48, 72, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0  # min-max normalised
    assert np.array_equal(out[:, :, 0], out[:, :, 1])
    model = NETWORKS.get(next(depth_files.glob(f"{name}_vits*.pth")), torch.device("cpu"),
                         lambda p: pytest.fail("reloaded"))
    assert list(model.config.backbone_config.out_indices) == ([3, 6, 9, 12] if name.endswith("v2") else
                                                              [9, 10, 11, 12])
    hint = prepare_hint(torch.from_numpy(img.astype(np.float32) / 255.0)[None], name, resolution=48, width=64,
                        height=48, annotator_dirs=[depth_files], annotator_home=depth_files, device="cpu")
    assert tuple(hint.shape) == (1, 48, 64, 3)
