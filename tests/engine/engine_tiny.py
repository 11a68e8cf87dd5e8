"""Tiny diffusers/transformers components for engine tests, wrapped as a darkroom Checkpoint."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from darkroom.conditioning.tokenizer import clip_tokenizer
from darkroom.models.bundle import Checkpoint
from darkroom.models.family import Family, ModelKind


def _text_config(hidden: int, **kw) -> CLIPTextConfig:
    return CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=hidden, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, **kw)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.18215).eval()


def tiny_sd1(seed: int = 0, prediction: str = "eps") -> Checkpoint:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8).eval()
    te = CLIPTextModel(_text_config(32)).eval()
    return Checkpoint(name="tiny-sd1", kind=ModelKind(Family.SD1, prediction), unet=unet, vae=tiny_vae(seed),
                      text_encoders=[te], tokenizers=[clip_tokenizer()])


def tiny_sdxl(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    te1 = CLIPTextModel(_text_config(32)).eval()
    te2 = CLIPTextModelWithProjection(_text_config(64)).eval()
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=96,
                                attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1), norm_num_groups=8,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 64, use_linear_projection=True).eval()
    vae = tiny_vae(seed)
    vae.register_to_config(scaling_factor=0.13025)
    return Checkpoint(name="tiny-sdxl", kind=ModelKind(Family.SDXL), unet=unet, vae=vae, text_encoders=[te1, te2],
                      tokenizers=[clip_tokenizer(), clip_tokenizer("!")])
