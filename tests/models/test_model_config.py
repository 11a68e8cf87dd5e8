"""Shipped family configs and their inference from shapes: full-size listings reproduce the shipped files exactly."""

from __future__ import annotations

import json

import pytest
import torch

from darkroom.models.config import (
    TEMPLATE_KINDS,
    TEMPLATE_NAMES,
    config_dir,
    config_overrides,
    infer_configs,
    metadata_overrides,
    shipped_configs,
    template_name,
)
from darkroom.models.convert import component_state_dicts, ldm_to_diffusers
from darkroom.models.detect import V_HEURISTIC_KEYS, detect_kind
from darkroom.models.errors import ModelFileError
from darkroom.models.family import Family, ModelKind
from darkroom.testing.tiny import ALL_KINDS, full_size_state_dict, shared_tiny_components, tiny_configs


def shapes_of(comps: dict) -> dict[str, dict[str, tuple]]:
    return {c: {k: tuple(v.shape) for k, v in sd.items()} for c, sd in comps.items()}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_full_size_listing_infers_the_shipped_configs(name):
    """Header → detection → conversion → inference gives back every shipped config field, for every family."""
    ldm = dict(full_size_state_dict(name))
    if name == "sd2-v":  # its only distinguishing trait is the values ComfyUI's heuristic looks at
        ldm[V_HEURISTIC_KEYS[0]] = torch.linspace(-0.5, 0.5, 320)
    kind = detect_kind(ldm)
    assert kind == TEMPLATE_KINDS[name] and template_name(kind) == name
    inferred = infer_configs(shapes_of(ldm_to_diffusers(ldm)), kind)
    shipped = shipped_configs(name)
    assert set(inferred) == set(shipped) - {"model_index"}
    for comp in inferred:
        assert inferred[comp] == shipped[comp], comp


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tiny_shapes_infer_the_tiny_configs(kind):
    comps = component_state_dicts(shared_tiny_components(kind))
    inferred = infer_configs(shapes_of(comps), TEMPLATE_KINDS[kind])
    want = tiny_configs(kind)
    for comp in comps:
        assert inferred[comp] == want[comp], comp


def test_shipped_values_of_the_real_repos():
    sd15, sd2v, xl, ref = (shipped_configs(n) for n in ("sd15", "sd2-v", "sdxl-base", "sdxl-refiner"))
    assert sd15["unet"]["attention_head_dim"] == 8 and sd15["unet"]["cross_attention_dim"] == 768
    assert sd15["text_encoder"]["hidden_act"] == "quick_gelu" and sd15["vae"]["scaling_factor"] == 0.18215
    assert sd15["scheduler"]["beta_start"] == 0.00085 and sd15["scheduler"]["beta_schedule"] == "scaled_linear"
    assert sd2v["unet"]["sample_size"] == 96 and sd2v["unet"]["upcast_attention"] is True
    assert sd2v["scheduler"]["prediction_type"] == "v_prediction" and sd2v["text_encoder"]["num_hidden_layers"] == 23
    assert shipped_configs("sd2-base")["scheduler"]["prediction_type"] == "epsilon"
    assert xl["unet"]["transformer_layers_per_block"] == [1, 2, 10] and xl["vae"]["scaling_factor"] == 0.13025
    assert xl["text_encoder_2"]["projection_dim"] == 1280 and xl["unet"]["projection_class_embeddings_input_dim"] == 2816
    assert ref["unet"]["projection_class_embeddings_input_dim"] == 2560 and "text_encoder" not in ref
    assert shipped_configs("sdxl-inpaint")["unet"]["in_channels"] == 9
    assert shipped_configs("sd15-inpaint")["unet"]["in_channels"] == 9
    # v-prediction SD1/SDXL reuse the eps templates with a v scheduler
    assert shipped_configs(ModelKind(Family.SDXL, "v"))["scheduler"]["prediction_type"] == "v_prediction"


def test_config_dir_is_a_diffusers_config_folder():
    from diffusers import UNet2DConditionModel

    d = config_dir(ModelKind(Family.SDXL))
    assert (d / "model_index.json").is_file() and not list(d.rglob("*.safetensors"))
    cfg = UNet2DConditionModel.load_config(str(d), subfolder="unet")
    assert cfg["cross_attention_dim"] == 2048
    with pytest.raises(ValueError, match="unknown config template"):
        config_dir("sd3")


def test_metadata_overrides():
    meta = {"darkroom.config": json.dumps({"vae": {"scaling_factor": 0.5}, "unet": {"sample_size": 32}})}
    comps = component_state_dicts(shared_tiny_components("sd15"))
    cfg = infer_configs(shapes_of(comps), ModelKind(Family.SD1), meta)
    assert cfg["vae"]["scaling_factor"] == 0.5 and cfg["unet"]["sample_size"] == 32
    assert metadata_overrides({}) == {}
    with pytest.raises(ModelFileError, match="not valid JSON"):
        metadata_overrides({"darkroom.config": "{nope"})
    with pytest.raises(ModelFileError, match="JSON object"):
        metadata_overrides({"darkroom.config": "[1]"})


def test_config_overrides_only_lists_differences():
    inferred = {"vae": {"scaling_factor": 0.18215, "block_out_channels": [32, 64], "_class_name": "AutoencoderKL"}}
    actual = {"vae": {"scaling_factor": 0.18215, "block_out_channels": (32, 64), "_class_name": "X", "extra": 1}}
    assert config_overrides(actual, inferred) == {}
    actual["vae"]["scaling_factor"] = 0.25
    assert config_overrides(actual, inferred) == {"vae": {"scaling_factor": 0.25}}
