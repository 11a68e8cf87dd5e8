"""Tiny random CLIP text encoders with the real 49,408-token vocabulary and the real (offline) tokenizer."""

import pytest
import torch

from darkroom.conditioning.tokenizer import clip_tokenizer


def tiny_clip(hidden: int, *, layers: int = 3, projection: bool = False, seed: int = 0, eos_token_id: int = 49407):
    """A small CLIPTextModel(WithProjection): real vocab and 77 positions, `hidden` wide, random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_hidden_layers=layers,
        vocab_size=49408, max_position_embeddings=77, projection_dim=hidden // 2, hidden_act="quick_gelu",
        eos_token_id=eos_token_id,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.5)  # so different prompts differ clearly
        for name, p in model.named_parameters():  # trained-like LayerNorms: a default LN output has mean 0 exactly
            if "layer_norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.3, 0.2)
    return model


@pytest.fixture(scope="session")
def tok_l():
    return clip_tokenizer("<|endoftext|>")


@pytest.fixture(scope="session")
def tok_g():
    return clip_tokenizer("!")


@pytest.fixture(scope="session")
def te_l():
    return tiny_clip(32, seed=1)


@pytest.fixture(scope="session")
def te_g():
    return tiny_clip(48, projection=True, seed=2)


@pytest.fixture(scope="session")
def te_h():
    return tiny_clip(40, seed=3)


@pytest.fixture(scope="session")
def make_clip():
    """The `tiny_clip` builder, for tests that need an encoder with other settings."""
    return tiny_clip
