"""Detection from keys and shapes: full-size meta listings, tiny files in every layout, v-prediction hints, rejects."""

from __future__ import annotations

import functools
import json
import re
import struct

import pytest
import torch

from darkroom.models.detect import V_HEURISTIC_KEYS, detect_file, detect_kind, identify, read_header, read_metadata
from darkroom.models.errors import ModelFileError
from darkroom.models.family import Family, ModelKind, UnsupportedModelError
from darkroom.testing.tiny import (
    ALL_KINDS,
    KIND_NAMES,
    full_size_components,
    full_size_state_dict,
    shared_tiny_checkpoint,
)

V2 = V_HEURISTIC_KEYS[0]


@functools.lru_cache(maxsize=None)
def full(kind: str) -> dict[str, torch.Tensor]:
    return full_size_state_dict(kind)


def expected(kind: str) -> ModelKind:
    return KIND_NAMES[kind]


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "sd2-v"])
def test_full_size_listing_detected(kind):
    shapes = {k: tuple(v.shape) for k, v in full(kind).items()}
    assert detect_kind(shapes) == expected(kind)
    assert detect_kind(full(kind)) == expected(kind)  # meta tensors work the same


def test_full_size_sd2_v_needs_heuristic_tensor():
    sd = dict(full("sd2-v"))
    assert detect_kind(sd) == ModelKind(Family.SD2, "eps")  # meta tensor: values unknown
    g = torch.Generator().manual_seed(0)
    sd[V2] = torch.randn(320, generator=g) * 0.2  # v models have a wide spread here
    assert detect_kind(sd) == ModelKind(Family.SD2, "v")
    sd[V2] = torch.randn(320, generator=g) * 0.01
    assert detect_kind(sd) == ModelKind(Family.SD2, "eps")
    # through a getter, as the loader does for files
    shapes = {k: tuple(v.shape) for k, v in full("sd2-v").items()}
    assert detect_kind(shapes, get_tensor=lambda k: torch.linspace(-1, 1, 320)).prediction == "v"
    # SD2 inpainting is never v by the heuristic (ComfyUI checks in_channels == 4)
    inp = {k: tuple(v.shape) for k, v in full("sd2-inpaint").items()}
    assert detect_kind(inp, get_tensor=lambda k: torch.linspace(-1, 1, 320)) == ModelKind(Family.SD2, inpaint=True)


def test_full_size_listing_matches_real_files():
    """Keys and shapes the real single files are known to hold."""
    sd1, sd2, xl, ref = full("sd15"), full("sd2-base"), full("sdxl-base"), full("sdxl-refiner")
    shape = lambda sd, k: tuple(sd[k].shape)  # noqa: E731
    assert shape(sd1, "model.diffusion_model.input_blocks.1.1.proj_in.weight") == (320, 320, 1, 1)
    assert shape(sd1, "model.diffusion_model.output_blocks.2.1.conv.weight") == (1280, 1280, 3, 3)
    assert shape(sd1, "first_stage_model.encoder.mid.attn_1.q.weight") == (512, 512, 1, 1)
    assert shape(sd1, "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight") == (768, 3072)
    assert shape(sd2, "model.diffusion_model.input_blocks.1.1.proj_in.weight") == (320, 320)
    assert shape(sd2, "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight") == (3072, 1024)
    assert shape(sd2, "cond_stage_model.model.text_projection") == (1024, 1024)
    assert "cond_stage_model.model.transformer.resblocks.24.ln_1.weight" not in sd2
    assert shape(xl, "model.diffusion_model.label_emb.0.0.weight") == (1280, 2816)
    assert shape(xl, "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight") == (1280, 2048)
    assert shape(xl, "model.diffusion_model.output_blocks.2.2.conv.weight") == (1280, 1280, 3, 3)
    assert shape(xl, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight") == (49408, 768)
    assert shape(xl, "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight") == (3840, 1280)
    assert shape(xl, "conditioner.embedders.1.model.text_projection") == (1280, 1280)
    assert shape(ref, "model.diffusion_model.label_emb.0.0.weight") == (1536, 2560)
    assert shape(ref, "conditioner.embedders.0.model.positional_embedding") == (77, 1280)
    assert not any(k.startswith("conditioner.embedders.1.") for k in ref)


def test_full_size_parameter_counts():
    """Tensor and parameter counts of the published models (diffusers layout)."""
    counts = lambda c: {n: (len(sd), sum(t.numel() for t in sd.values())) for n, sd in c.items()}  # noqa: E731
    sd1 = counts(full_size_components("sd15"))
    assert sd1 == {"unet": (686, 859_520_964), "vae": (248, 83_653_863), "text_encoder": (196, 123_060_480)}
    assert counts(full_size_components("sd2-base"))["unet"][1] == 865_910_724
    assert counts(full_size_components("sd2-base"))["text_encoder"][1] == 340_387_840
    xl = counts(full_size_components("sdxl-base"))
    assert xl["unet"][1] == 2_567_463_684 and xl["text_encoder_2"][1] == 694_659_840


@pytest.mark.parametrize("layout", ["ldm", "diffusers-file", "diffusers"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tiny_files_detected(kind, layout):
    assert detect_file(shared_tiny_checkpoint(kind, layout)) == expected(kind)


def test_name_is_ignored(tmp_path):
    path = tmp_path / "sd15-flux-lora-vae.safetensors"
    path.write_bytes(shared_tiny_checkpoint("sdxl-base").read_bytes())
    assert detect_file(path) == ModelKind(Family.SDXL)


def test_lazy_state_dict_detected_without_reading(monkeypatch):
    from darkroom.models.files import LazyStateDict

    lazy = LazyStateDict(shared_tiny_checkpoint("sdxl-base"))

    def no_reads(self, key):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(LazyStateDict, "__getitem__", no_reads)
    assert read_header(lazy)["model.diffusion_model.label_emb.0.0.weight"] == (128, 112)
    assert detect_kind(lazy) == ModelKind(Family.SDXL)


def test_read_header_reads_no_weights(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(shared_tiny_checkpoint("sd15").read_bytes())
    shapes = read_header(path)
    # scramble every byte after the header: the header is all that read_header needs
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n:] = bytes(len(raw) - 8 - n)
    path.write_bytes(bytes(raw))
    assert read_header(path) == shapes
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert read_header({"a": torch.zeros(2, 3), "b": torch.empty(5, device="meta")}) == {"a": (2, 3), "b": (5,)}
    assert read_metadata(path) == {}


def _sd2_shapes():
    return {k: tuple(v.shape) for k, v in full("sd2-base").items()}


def test_prediction_hints(tmp_path):
    shapes = _sd2_shapes()
    assert detect_kind(shapes, {"modelspec.prediction_type": "v"}).prediction == "v"
    assert detect_kind(shapes, {"modelspec.prediction_type": "epsilon"}).prediction == "eps"
    assert detect_kind(shapes, {"darkroom.config": json.dumps({"scheduler": {"prediction_type": "v_prediction"}})}
                       ).prediction == "v"
    xl = {k: tuple(v.shape) for k, v in full("sdxl-base").items()}
    assert detect_kind({**xl, "v_pred": ()}) == ModelKind(Family.SDXL, "v")
    assert detect_kind(xl).prediction == "eps"
    # A1111 sidecar yaml decides (it is the user's explicit choice)
    yaml = tmp_path / "m.yaml"
    yaml.write_text('model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n'
                    '    parameterization: "v"\n    linear_start: 0.00085\n')
    assert detect_kind(shapes, sidecar=yaml).prediction == "v"
    yaml.write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert detect_kind(shapes, {"modelspec.prediction_type": "v"}, sidecar=yaml).prediction == "eps"


def test_sidecar_yaml_next_to_file(tmp_path):
    path = tmp_path / "tiny2.safetensors"
    path.write_bytes(shared_tiny_checkpoint("sd2-base").read_bytes())
    assert detect_file(path).prediction == "eps"
    (tmp_path / "tiny2.yaml").write_text("model:\n  params:\n    parameterization: 'v'\n")
    assert detect_file(path) == ModelKind(Family.SD2, "v")


def test_tiny_v_file_carries_modelspec():
    path = shared_tiny_checkpoint("sd2-v")
    assert read_metadata(path)["modelspec.prediction_type"] == "v"
    assert detect_file(path) == ModelKind(Family.SD2, "v")


def _lora():
    return {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}


UNSUPPORTED = {
    "Flux": {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64),
             "single_blocks.0.linear1.weight": (21504, 3072)},
    "Flux ": {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (9216, 3072)},
    "Stable Diffusion 3": {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
                           "model.diffusion_model.pos_embed": (1, 36864, 1536)},
    "a ControlNet": {"control_model.input_blocks.0.0.weight": (320, 4, 3, 3),
                     "control_model.input_hint_block.0.weight": (16, 3, 3, 3)},
    "a ControlNet ": {"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3), "conv_in.weight": (320, 4, 3, 3),
                      "time_embedding.linear_1.weight": (1280, 320), "down_blocks.0.resnets.0.conv1.weight": (320,)},
    "a VAE": {"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)},
    "a VAE ": {"encoder.down_blocks.0.resnets.0.conv1.weight": (128, 128, 3, 3)},
    "a LoRA": _lora(),
    "a LoRA ": {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)},
    "a LyCORIS (LoHa/LoKr) network": {"lora_unet_x.hada_w1_a": (4, 4)},
    "an upscaler (ESRGAN-style)": {"model.0.weight": (64, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (32,)},
    "an upscaler (ESRGAN-style) ": {"conv_first.weight": (64, 3, 3, 3), "body.0.rdb1.conv1.weight": (32,)},
    "a text encoder": {"text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)},
    "a T5 text encoder": {"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096), "shared.weight": (1,)},
    "a textual inversion embedding": {"emb_params": (2, 768)},
    "an IP-Adapter": {"image_proj.proj.weight": (3072, 1024), "ip_adapter.1.to_k_ip.weight": (320, 768)},
    "an empty file": {},
    "an unknown model": {"foo.weight": (3, 3)},
}


@pytest.mark.parametrize("label", list(UNSUPPORTED))
def test_unsupported_kinds_named(label):
    with pytest.raises(UnsupportedModelError, match="^" + re.escape(f"unsupported model: looks like {label.strip()}")):
        detect_kind(UNSUPPORTED[label])
    assert identify(UNSUPPORTED[label]) == label.strip()


def test_unsupported_unet_variants():
    sd1 = {k: tuple(v.shape) for k, v in full("sd15").items()}
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    with pytest.raises(UnsupportedModelError, match="looks like an InstructPix2Pix"):
        detect_kind({**sd1, conv_in: (320, 8, 3, 3)})
    with pytest.raises(UnsupportedModelError, match="looks like the Stable Diffusion x4 upscaler"):
        detect_kind({**sd1, conv_in: (256, 7, 3, 3), "model.diffusion_model.label_emb.weight": (1000, 1024)})
    with pytest.raises(UnsupportedModelError, match="looks like Stable unCLIP"):
        detect_kind({**sd1, "noise_augmentor.betas": (1000,)})
    assert identify(sd1) == "SD1.x"


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found.*nope.safetensors"):
        detect_file(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}")
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        read_header(bad)
    good = shared_tiny_checkpoint("sd15")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="cut.safetensors is truncated"):
        read_header(cut)
