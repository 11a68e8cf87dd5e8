"""LoRA target names → our modules: kohya SD1 (diffusers) and SDXL (LDM) UNet names, CLIP text-encoder names."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from darkroom.models.lora_keys import diffusers_to_ldm_unet, text_encoder_lora_names, unet_lora_names
from darkroom.testing.lora_files import text_encoder_targets, tiny_text_encoder, tiny_unet, unet_targets

SDXL_CONFIG = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


@pytest.fixture(scope="module")
def sdxl_meta():
    """Full-size SDXL UNet on the meta device (names and shapes only, no memory)."""
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_CONFIG)


@pytest.fixture(scope="module")
def sd1_meta():
    with torch.device("meta"):
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def _ldm_round_trip(unet):
    """Rename the diffusers state dict with our LDM names, convert back with diffusers' own converter."""
    names = diffusers_to_ldm_unet(unet)
    sd = unet.state_dict()
    ldm = {}
    for k, v in sd.items():
        mod, _, param = k.rpartition(".")
        ldm[f"model.diffusion_model.{names[mod]}.{param}"] = v
    return sd, convert_ldm_unet_checkpoint(ldm, dict(unet.config))


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_ldm_names_agree_with_diffusers_converter_tiny(layout):
    sd, back = _ldm_round_trip(tiny_unet(layout))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)  # each tensor landed on the same module


def test_ldm_names_agree_with_diffusers_converter_full_size(sdxl_meta, sd1_meta):
    for unet in (sdxl_meta, sd1_meta):
        sd, back = _ldm_round_trip(unet)
        assert set(back) == set(sd)
        assert all(back[k].shape == sd[k].shape for k in sd)


def test_real_kohya_sdxl_names_resolve(sdxl_meta):
    names = unet_lora_names(sdxl_meta)
    expect = {
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks_8_1_transformer_blocks_9_ff_net_2": "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
        "input_blocks_7_1_proj_in": "down_blocks.2.attentions.0.proj_in",
        "middle_block_1_transformer_blocks_9_attn2_to_k": "mid_block.attentions.0.transformer_blocks.9.attn2.to_k",
        "output_blocks_0_1_transformer_blocks_9_attn1_to_out_0":
            "up_blocks.0.attentions.0.transformer_blocks.9.attn1.to_out.0",
        "output_blocks_5_1_transformer_blocks_1_ff_net_0_proj":
            "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.0.proj",
        # LoCon targets
        "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
        "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
        "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
        "middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
        "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
        "output_blocks_8_0_out_layers_3": "up_blocks.2.resnets.2.conv2",
        "label_emb_0_0": "add_embedding.linear_1",
        "time_embed_2": "time_embedding.linear_2",
        "out_2": "conv_out",
        # diffusers spelling is accepted too
        "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q":
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    }
    for kohya, path in expect.items():
        assert names.get(kohya) == path, kohya
    assert "output_blocks_8_1_proj_out" not in names  # SDXL's last up block has no attention


def test_real_kohya_sd1_names_resolve(sd1_meta):
    names = unet_lora_names(sd1_meta)
    expect = {
        "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "up_blocks_3_attentions_2_proj_out": "up_blocks.3.attentions.2.proj_out",
        "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj":
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "down_blocks_2_downsamplers_0_conv": "down_blocks.2.downsamplers.0.conv",
        "time_embedding_linear_1": "time_embedding.linear_1",
        # LDM spelling of SD1 (used by some LyCORIS/ComfyUI exports)
        "input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "output_blocks_11_1_proj_out": "up_blocks.3.attentions.2.proj_out",
        "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
        "output_blocks_8_2_conv": "up_blocks.2.upsamplers.0.conv",
        "input_blocks_9_0_op": "down_blocks.2.downsamplers.0.conv",
    }
    for kohya, path in expect.items():
        assert names.get(kohya) == path, kohya


def test_default_kohya_target_counts_match_real_files(sdxl_meta, sd1_meta):
    """Real kohya LoRAs: SD1.5 UNet 192 modules (+72 CLIP-L), SDXL UNet 722 modules (2166 keys with alpha)."""
    assert len(unet_targets(sd1_meta)) == 192
    assert len(unet_targets(sdxl_meta)) == 722
    with torch.device("meta"):
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12))
    assert len(text_encoder_targets(clip_l)) == 72


def test_text_encoder_names_with_and_without_text_model_prefix():
    flat = tiny_text_encoder()
    nested = tiny_text_encoder(projection=True)
    assert isinstance(flat, CLIPTextModel) and isinstance(nested, CLIPTextModelWithProjection)
    for te in (flat, nested):
        names = text_encoder_lora_names(te)
        a = names["text_model_encoder_layers_1_self_attn_q_proj"]
        b = names["encoder_layers_1_self_attn_q_proj"]
        assert a == b and te.get_submodule(a) is not None and a.endswith("encoder.layers.1.self_attn.q_proj")
        assert names["text_model_encoder_layers_0_mlp_fc2"].endswith("layers.0.mlp.fc2")
