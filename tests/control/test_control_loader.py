"""ControlNets and T2I-Adapters in every layout people download load with the right detection, config and weights;
full-size key listings (meta tensors) detect and configure like the real models; bad files fail by name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from cn_tiny import tiny_controlnet, tiny_t2i_adapter, write_controlnet, write_t2i_adapter  # noqa: E402

from darkroom.control.convert import controlnet_diffusers_to_ldm, controlnet_ldm_to_diffusers  # noqa: E402
from darkroom.control.loader import (describe_control_file, detect_control, infer_controlnet_config,  # noqa: E402
                                     load_control_model)
from darkroom.control.model import ControlModelError, ControlNet, T2IAdapter  # noqa: E402
from darkroom.models.config import shipped_configs  # noqa: E402
from darkroom.models.family import Family, ModelKind, UnsupportedModelError  # noqa: E402
from darkroom.testing.tiny import shared_tiny_components  # noqa: E402


def same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=atol, rtol=0, msg=k)


def residuals(model: ControlNet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.module.config
    x = torch.randn((1, 4, 4, 4), generator=g)
    ctx = torch.randn((1, 5, cfg.cross_attention_dim), generator=g)
    hint = torch.rand((1, 3, 32, 32), generator=g)
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn((1, pooled), generator=g), "time_ids": torch.tensor([[32.0] * 6])}
    return model.residuals(x, torch.tensor([500.0]), ctx, hint, added)


@pytest.fixture(scope="module")
def sd1():
    unet = shared_tiny_components("sd15")["unet"]
    return unet, tiny_controlnet(unet, seed=1)


@pytest.mark.parametrize("layout", ["ldm", "ldm-bare", "diffusers-file", "diffusers"])
def test_sd1_controlnet_layouts_load_the_same_network(tmp_path, sd1, layout):
    unet, cn = sd1
    path = write_controlnet(tmp_path / ("cn" if layout == "diffusers" else "cn.safetensors"), cn, layout)
    info = describe_control_file(path)
    assert (info.kind, info.family, info.diff) == ("controlnet", Family.SD1, False)
    assert info.layout == ("ldm" if layout.startswith("ldm") else "diffusers")
    assert info.prefix == ("control_model." if layout == "ldm" else "")
    model = load_control_model(path)
    assert isinstance(model, ControlNet) and model.label == "SD1.x ControlNet" and model.hint_scale == 8
    assert list(model.module.config.conditioning_embedding_out_channels) == [4, 8, 8, 16]
    same_weights(cn, model.module)
    ref, got = residuals(ControlNet(cn, "ref")), residuals(model)
    for r, o in zip([*ref[0], ref[1]], [*got[0], got[1]]):
        torch.testing.assert_close(o, r)


def test_diffusers_folder_listed_file_by_file_uses_its_config(tmp_path, sd1):
    unet, cn = sd1
    folder = write_controlnet(tmp_path / "control_v11p_sd15_canny", cn, "diffusers")
    model = load_control_model(folder / "diffusion_pytorch_model.safetensors")  # as the registry lists it
    same_weights(cn, model.module)


def test_diff_controlnet_needs_and_adds_its_base_model(tmp_path, sd1):
    unet, cn = sd1
    path = write_controlnet(tmp_path / "diff_control_sd15_canny.safetensors", cn, "diff", base_unet=unet)
    assert describe_control_file(path).label == "SD1.x diff ControlNet"
    with pytest.raises(ControlModelError, match="diff ControlNet.*DiffControlNetLoader"):
        load_control_model(path)
    same_weights(cn, load_control_model(path, base_unet=unet).module, atol=1e-6)
    # the stored tensors really are differences: with another base the weights differ
    other = shared_tiny_components("sd15", seed=1)["unet"]
    wrong = load_control_model(path, base_unet=other).module.state_dict()
    assert (wrong["conv_in.weight"] - cn.state_dict()["conv_in.weight"]).abs().max() > 1e-3


def test_sdxl_controlnet_folder_and_single_file(tmp_path):
    unet = shared_tiny_components("sdxl-base")["unet"]
    cn = tiny_controlnet(unet, seed=2)
    folder = write_controlnet(tmp_path / "xl", cn, "diffusers")
    assert describe_control_file(folder).family is Family.SDXL
    same_weights(cn, load_control_model(folder).module)
    # an LDM file with label_emb: the tiny model's time-embedding width goes in darkroom.config metadata
    meta = {"darkroom.config": json.dumps({"controlnet": {"addition_time_embed_dim": 8}})}
    single = write_controlnet(tmp_path / "xl.safetensors", cn, "ldm", metadata=meta)
    model = load_control_model(single)
    assert model.family is Family.SDXL
    same_weights(cn, model.module)
    bare = write_controlnet(tmp_path / "xl-nometa.safetensors", cn, "ldm")
    with pytest.raises(Exception, match="time-embedding width"):
        load_control_model(bare)


@pytest.mark.parametrize("kind", ["sd15", "sdxl-base"])
def test_full_size_controlnet_listing_detects_and_configures_like_the_real_model(kind):
    """The real SD1.5 / SDXL ControlNet layouts (shapes on the meta device): family and config from shapes."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    family = Family.SD1 if kind == "sd15" else Family.SDXL
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(shipped_configs(ModelKind(family))["unet"])
        real = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    sd = real.state_dict()
    ldm = {"control_model." + k: v for k, v in controlnet_diffusers_to_ldm(sd).items()}
    assert "control_model.input_hint_block.14.weight" in ldm and "control_model.zero_convs.8.0.weight" in ldm
    info = detect_control({k: tuple(v.shape) for k, v in ldm.items()})
    assert (info.kind, info.layout, info.family) == ("controlnet", "ldm", family)
    back = controlnet_ldm_to_diffusers(ldm)
    assert set(back) == set(sd)
    cfg = infer_controlnet_config({k: tuple(v.shape) for k, v in back.items()}, family)
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types",
                "conditioning_embedding_out_channels", "use_linear_projection", "attention_head_dim",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        want = real.config[key]
        assert (list(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]) == \
            (list(want) if isinstance(want, (list, tuple)) else want), key
    assert list(cfg["transformer_layers_per_block"] if isinstance(cfg["transformer_layers_per_block"], list)
                else [cfg["transformer_layers_per_block"]] * 4)[: len(cfg["block_out_channels"])] == \
        list(real.config["transformer_layers_per_block"] if isinstance(real.config["transformer_layers_per_block"],
                                                                       (list, tuple))
             else [real.config["transformer_layers_per_block"]] * 4)[: len(cfg["block_out_channels"])]


@pytest.mark.parametrize("variant", [dict(), dict(in_channels=1), dict(light=True, channels=(32, 64, 64)),
                                     dict(xl=True)])
@pytest.mark.parametrize("layout", ["original", "diffusers-file", "diffusers"])
def test_t2i_adapters_load_in_each_layout(tmp_path, layout, variant):
    adapter = tiny_t2i_adapter(seed=3, **variant)
    path = write_t2i_adapter(tmp_path / ("ad" if layout == "diffusers" else "ad.safetensors"), adapter, layout)
    info = describe_control_file(path)
    assert info.kind == "t2i_adapter" and info.family is (Family.SDXL if variant.get("xl") else Family.SD1)
    model = load_control_model(path)
    assert isinstance(model, T2IAdapter) and model.hint_channels == variant.get("in_channels", 3)
    assert model.adapter_type == adapter.config.adapter_type and model.hint_scale == 8
    same_weights(adapter, model.module)
    hint = torch.rand((1, model.hint_channels, 64, 64), generator=torch.Generator().manual_seed(0))
    for a, b in zip(adapter(hint), model.features(hint)):
        torch.testing.assert_close(b, a)


def test_shuffle_models_pool_globally(tmp_path, sd1):
    path = write_controlnet(tmp_path / "control_v11e_sd15_shuffle.safetensors", sd1[1], "ldm")
    assert load_control_model(path).global_average_pooling
    assert not load_control_model(write_controlnet(tmp_path / "canny.safetensors", sd1[1], "ldm")
                                  ).global_average_pooling


def test_files_that_are_not_control_models_are_named(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(UnsupportedModelError, match="not a ControlNet or T2I-Adapter; it looks like a LoRA"):
        load_control_model(lora)
    control_lora = tmp_path / "control-lora.safetensors"
    save_file({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)},
              str(control_lora))
    with pytest.raises(UnsupportedModelError, match="Control-LoRA"):
        describe_control_file(control_lora)
    with pytest.raises(Exception, match="not found"):
        load_control_model(tmp_path / "missing.safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tmp_path / "lora.safetensors").read_bytes()[:20])
    with pytest.raises(Exception, match="truncated|not a valid safetensors"):
        load_control_model(truncated)
