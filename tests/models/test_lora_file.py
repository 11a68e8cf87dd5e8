"""LoRA file parsing: kohya/A1111 and diffusers/PEFT keys, alpha/mid/DoRA, and clear errors for bad files."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from darkroom.models.lora import LoraFormatError, LowRankPatch, load_lora_file, lora_from_state_dict

Q = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _save(tmp_path, sd, name="x.safetensors", metadata=None):
    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p), metadata=metadata)
    return p


def test_kohya_keys_grouped_per_target(tmp_path):
    sd = {
        f"lora_unet_{Q}.lora_down.weight": torch.randn(4, 320, dtype=torch.float16),
        f"lora_unet_{Q}.lora_up.weight": torch.randn(320, 4, dtype=torch.float16),
        f"lora_unet_{Q}.alpha": torch.tensor(2.0, dtype=torch.float16),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(8, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(768, 8),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(8.0),
    }
    lf = load_lora_file(_save(tmp_path, sd, "my_style.safetensors", {"ss_base_model_version": "sd_v1"}))
    assert lf.name == "my_style" and lf.format == "kohya" and lf.path is not None
    assert set(lf.patches) == {("unet", Q), ("te", "text_model_encoder_layers_0_self_attn_q_proj")}
    p = lf.patches[("unet", Q)]
    assert isinstance(p, LowRankPatch)
    assert p.rank == 4 and p.alpha == 2.0 and p.scale == 0.5 and p.mid is None and p.dora_scale is None
    assert p.up.dtype == torch.float16  # stored as in the file; computed in float32 at apply time
    assert lf.patches[("te", "text_model_encoder_layers_0_self_attn_q_proj")].scale == 1.0
    assert lf.base_model == "sd1" and lf.components == {"unet", "te"}
    assert "2 modules" in lf.summary()


def test_kohya_sdxl_prefixes_locon_mid_and_dora():
    base = "lora_unet_input_blocks_1_0_in_layers_2"
    sd = {
        f"{base}.lora_down.weight": torch.randn(4, 32, 1, 1),
        f"{base}.lora_mid.weight": torch.randn(4, 4, 3, 3),
        f"{base}.lora_up.weight": torch.randn(32, 4, 1, 1),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 32),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(37, 2),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.dora_scale": torch.rand(1, 32),
        "lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": torch.randn(2, 37),
        "lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_up.weight": torch.randn(32, 2),
    }
    lf = lora_from_state_dict(sd, "xl")
    assert lf.components == {"unet", "te1", "te2"} and lf.base_model == "sdxl"
    conv = lf.patches[("unet", "input_blocks_1_0_in_layers_2")]
    assert conv.mid is not None and conv.fits(torch.Size((32, 32, 3, 3))) and not conv.fits(torch.Size((32, 32, 1, 1)))
    assert lf.patches[("te1", "text_model_encoder_layers_0_mlp_fc1")].dora_scale.shape == (1, 32)
    assert lf.patches[("te2", "text_model_encoder_layers_0_mlp_fc2")].alpha is None


def test_diffusers_peft_and_old_processor_keys():
    sd = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 32),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, 4),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.alpha": torch.tensor(2.0),
        # old diffusers attention-processor spelling
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight": torch.randn(2, 64),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight": torch.randn(64, 2),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": torch.randn(2, 32),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight": torch.randn(37, 2),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora.down.weight": torch.randn(2, 32),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora.up.weight": torch.randn(32, 2),
    }
    lf = lora_from_state_dict(sd, "d")
    assert lf.format == "diffusers"
    assert set(lf.patches) == {
        ("unet", Q.replace("down_blocks_0_attentions_0", "down_blocks_0_attentions_0")),
        ("unet", "mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0"),
        ("te1", "text_model_encoder_layers_1_mlp_fc1"),
        ("te2", "text_model_encoder_layers_0_self_attn_k_proj"),
    }
    assert lf.patches[("unet", Q)].scale == 0.5
    assert lf.patches[("te2", "text_model_encoder_layers_0_self_attn_k_proj")].scale == 1.0


def test_diffusers_alpha_from_adapter_metadata(tmp_path):
    sd = {"unet.conv_in.lora_A.weight": torch.randn(4, 4, 3, 3), "unet.conv_in.lora_B.weight": torch.randn(32, 4, 1, 1)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    lf = load_lora_file(_save(tmp_path, sd, metadata=meta))
    assert lf.patches[("unet", "conv_in")].scale == 2.0


def test_pickle_formats_refused(tmp_path):
    for suffix in (".pt", ".ckpt"):
        p = tmp_path / f"old{suffix}"
        torch.save({"a": torch.zeros(1)}, p)
        with pytest.raises(LoraFormatError, match=r"\.safetensors"):
            load_lora_file(p)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_lora_file(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(LoraFormatError, match="bad.safetensors.*not a readable"):
        load_lora_file(bad)


def test_not_a_lora(tmp_path):
    p = _save(tmp_path, {"model.diffusion_model.conv_in.weight": torch.zeros(2, 2)}, "ckpt.safetensors")
    with pytest.raises(LoraFormatError, match="no LoRA keys"):
        load_lora_file(p)


def test_malformed_pairs_raise():
    with pytest.raises(LoraFormatError, match="no up weight"):
        lora_from_state_dict({f"lora_unet_{Q}.lora_down.weight": torch.randn(4, 8)})
    with pytest.raises(LoraFormatError, match="does not match down"):
        lora_from_state_dict({f"lora_unet_{Q}.lora_down.weight": torch.randn(4, 8),
                              f"lora_unet_{Q}.lora_up.weight": torch.randn(8, 3)})
    with pytest.raises(LoraFormatError, match="float"):
        lora_from_state_dict({f"lora_unet_{Q}.lora_down.weight": torch.ones(4, 8, dtype=torch.int64),
                              f"lora_unet_{Q}.lora_up.weight": torch.randn(8, 4)})


def test_lycoris_kinds_named_not_silently_dropped(caplog):
    # LoHa/LoKr/diff/norm are parsed (tests/models/test_lycoris*.py); OFT is still named, not applied.
    oft = {f"lora_unet_{Q}.oft_blocks": torch.randn(4, 2, 2), f"lora_unet_{Q}.oft_rescale": torch.randn(8, 1),
           f"lora_unet_{Q}.alpha": torch.tensor(2.0)}
    with pytest.raises(LoraFormatError, match="OFT is not supported"):
        lora_from_state_dict(oft, "only_oft")
    mixed = dict(oft)
    k = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    mixed.update({f"{k}.lora_down.weight": torch.randn(2, 32), f"{k}.lora_up.weight": torch.randn(32, 2)})
    with caplog.at_level(logging.WARNING):
        lf = lora_from_state_dict(mixed, "mixed")
    assert list(lf.patches) == [("te", "text_model_encoder_layers_0_self_attn_q_proj")]
    assert len(lf.skipped) == 3 and all("OFT" in v for v in lf.skipped.values())
    assert "3 tensor(s) ignored" in caplog.text


def test_fingerprint_identifies_file_version(tmp_path):
    sd = {f"lora_unet_{Q}.lora_down.weight": torch.randn(4, 8), f"lora_unet_{Q}.lora_up.weight": torch.randn(8, 4)}
    p = _save(tmp_path, sd)
    a, b = load_lora_file(p), load_lora_file(p)
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith(str(p.resolve()))
    assert lora_from_state_dict(sd).fingerprint != lora_from_state_dict(sd).fingerprint
