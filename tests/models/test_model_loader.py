"""Loading checkpoints: every family and layout gives the same models as the weights it was written from."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from darkroom.models.bundle import Checkpoint
from darkroom.models.convert import component_state_dicts
from darkroom.models.errors import ModelFileError, UnsafeModelFileError
from darkroom.models.family import Family, UnsupportedModelError
from darkroom.models.loader import load_checkpoint, load_vae
from darkroom.testing.tiny import (
    ALL_KINDS,
    KIND_NAMES,
    shared_tiny_checkpoint,
    shared_tiny_components,
    tiny_configs,
    write_config_dir,
    write_tiny_vae,
)


def text_slots(kind: str) -> list[str]:
    return [s for s in ("text_encoder", "text_encoder_2") if s in shared_tiny_components(kind)]


def originals(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.nn.Module]]:
    c = shared_tiny_components(kind)
    return c["unet"], c["vae"], [c[s] for s in text_slots(kind)]


@torch.no_grad()
def outputs(unet, vae, text_encoders, tokenizers) -> list[torch.Tensor]:
    """Text-encoder states, one UNet step on 8×8 latents and a VAE round trip at 32×32 px."""
    g = torch.Generator().manual_seed(0)
    outs, pooled = [], None
    for te, tok in zip(text_encoders, tokenizers):
        ids = tok(["a red cube"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        o = te(ids, output_hidden_states=True)
        outs.append(o.hidden_states[-2])
        if hasattr(o, "text_embeds"):
            pooled = o.text_embeds
            outs.append(pooled)
    context = torch.cat([o for o in outs if o.dim() == 3], dim=-1)  # (1, 77, cross_attention_dim)
    cfg = unet.config
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        n = (cfg.projection_class_embeddings_input_dim - pooled.shape[-1]) // cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.arange(n, dtype=torch.float32)[None] * 64}
    outs.append(unet(x, 500, encoder_hidden_states=context, **kw).sample)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    latent = vae.encode(image).latent_dist.mean  # (1, 4, 4, 4)
    outs += [latent, vae.decode(latent).sample]
    return outs


def assert_state_equal(a: torch.nn.Module, b: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        want = sb[k].to(dtype) if dtype is not None and sb[k].is_floating_point() else sb[k]
        assert sa[k].dtype == want.dtype and torch.equal(sa[k], want), k


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_single_file_outputs_equal_originals(kind):
    ckpt = load_checkpoint(shared_tiny_checkpoint(kind))
    assert isinstance(ckpt, Checkpoint) and ckpt.kind == KIND_NAMES[kind]
    unet, vae, tes = originals(kind)
    ours = outputs(ckpt.unet, ckpt.vae, ckpt.text_encoders, ckpt.tokenizers)
    ref = outputs(unet, vae, tes, ckpt.tokenizers)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    for slot, te in zip(text_slots(kind), ckpt.text_encoders):
        cls = "CLIPTextModelWithProjection" if slot == "text_encoder_2" else "CLIPTextModel"
        assert type(te).__name__ == cls
    # the configs it was built from are the tiny configs, inferred from shapes alone
    want = tiny_configs(kind)
    for comp in ("unet", "vae", *text_slots(kind)):
        assert {k: ckpt.configs[comp][k] for k in want[comp]} == want[comp], comp


@pytest.mark.parametrize("layout", ["diffusers", "diffusers-file"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_diffusers_layouts_load_same_weights(kind, layout):
    ckpt = load_checkpoint(shared_tiny_checkpoint(kind, layout))
    assert ckpt.kind == KIND_NAMES[kind]
    unet, vae, tes = originals(kind)
    assert_state_equal(ckpt.unet, unet)
    assert_state_equal(ckpt.vae, vae)
    assert len(ckpt.text_encoders) == len(tes)
    for a, b in zip(ckpt.text_encoders, tes):
        assert_state_equal(a, b)


HALF_CASES = ([(k, torch.float16, "ldm") for k in ALL_KINDS] + [(k, torch.bfloat16, "diffusers") for k in ALL_KINDS]
              + [("sd15", torch.bfloat16, "ldm"), ("sdxl-base", torch.float16, "diffusers")])


@pytest.mark.parametrize("kind,dtype,layout", HALF_CASES)
def test_half_precision_files(kind, dtype, layout):
    path = shared_tiny_checkpoint(kind, layout, dtype)
    unet, vae, tes = originals(kind)
    ckpt = load_checkpoint(path, dtype=dtype)
    assert ckpt.kind == KIND_NAMES[kind]
    assert ckpt.dtype == dtype and ckpt.unet.dtype == dtype and ckpt.vae.dtype == dtype
    assert_state_equal(ckpt.unet, unet, dtype)
    assert_state_equal(ckpt.vae, vae, dtype)
    for a, b in zip(ckpt.text_encoders, tes, strict=True):
        assert_state_equal(a, b, dtype)
    if layout == "ldm":
        with safe_open(str(path), "pt") as f:
            assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == dtype
        # a half file loaded as fp32 holds exactly the rounded values
        full = load_checkpoint(path, dtype="fp32")
        assert full.unet.dtype == torch.float32
        w = "conv_in.weight"
        assert torch.equal(full.unet.state_dict()[w], unet.state_dict()[w].to(dtype).float())


@pytest.mark.parametrize("kind", ["sd15", "sdxl-base", "sdxl-refiner"])
def test_same_as_diffusers_from_single_file(tmp_path, kind):
    """diffusers itself (offline, with a local config folder) reads our files into the same weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from darkroom.conditioning.tokenizer import clip_tokenizer

    path = shared_tiny_checkpoint(kind)
    config = write_config_dir(tmp_path / "config", tiny_configs(kind))
    if kind == "sd15":
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), tokenizer=clip_tokenizer(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        theirs = [pipe.text_encoder]
    elif kind == "sdxl-base":
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(config), tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"))
        theirs = [pipe.text_encoder, pipe.text_encoder_2]
    else:
        pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(
            str(path), config=str(config), tokenizer=None, text_encoder=None, tokenizer_2=clip_tokenizer("!"))
        theirs = [pipe.text_encoder_2]
    ckpt = load_checkpoint(path)
    assert_state_equal(ckpt.unet, pipe.unet)
    assert_state_equal(ckpt.vae, pipe.vae)
    for a, b in zip(ckpt.text_encoders, theirs, strict=True):
        assert_state_equal(a, b)
    ours = outputs(ckpt.unet, ckpt.vae, ckpt.text_encoders, ckpt.tokenizers)
    ref = outputs(pipe.unet, pipe.vae, theirs, ckpt.tokenizers)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_checkpoint_fields_and_tokenizers():
    pads = {"sd15": [49407], "sd2-base": [0], "sdxl-base": [49407, 0], "sdxl-refiner": [0]}
    for kind, want in pads.items():
        ckpt = load_checkpoint(shared_tiny_checkpoint(kind), name="my model")
        assert ckpt.name == "my model" and ckpt.path == shared_tiny_checkpoint(kind)
        assert [t.pad_token_id for t in ckpt.tokenizers] == want
        assert ckpt.vae_downscale == 8 and ckpt.latent_channels == 4
        assert ckpt.schedule.beta_start == 0.00085 and ckpt.schedule.beta_end == 0.012
        assert ckpt.latent_scale == (0.13025 if "sdxl" in kind else 0.18215)
        assert ckpt.device == torch.device("cpu") and ckpt.vae_name is None
    ckpt = load_checkpoint(shared_tiny_checkpoint("sd2-v"))
    assert ckpt.kind.prediction == "v" and ckpt.configs["scheduler"]["prediction_type"] == "v_prediction"
    assert load_checkpoint(shared_tiny_checkpoint("sd15")).name == "sd15-ldm-float32-0"


def test_models_are_built_without_random_init(monkeypatch):
    """Layers are created on the meta device: no full-size random initialisation is ever computed."""
    devices = []
    for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding):
        original = cls.reset_parameters

        def spy(self, _original=original):
            devices.append(self.weight.device.type)
            return _original(self)

        monkeypatch.setattr(cls, "reset_parameters", spy)
    load_checkpoint(shared_tiny_checkpoint("sdxl-base"))
    assert devices and set(devices) == {"meta"}


# ---------------------------------------------------------------------------------------------------------------
# VAE


def test_vae_override_by_family(tmp_path):
    vae_file = write_tiny_vae(tmp_path / "vae-ft-mse.safetensors", seed=7)
    from darkroom.models.convert import vae_ldm_to_diffusers

    with safe_open(str(vae_file), "pt") as f:
        want = vae_ldm_to_diffusers({k: f.get_tensor(k) for k in f.keys()}, "")
    for kind, scale in (("sd15", 0.18215), ("sdxl-base", 0.13025)):
        ckpt = load_checkpoint(shared_tiny_checkpoint(kind), vae_path=vae_file)
        assert ckpt.vae_name == "vae-ft-mse.safetensors"
        assert ckpt.vae.config.scaling_factor == scale == ckpt.latent_scale
        got = ckpt.vae.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert ckpt.configs["vae"]["scaling_factor"] == scale
        # the checkpoint's own VAE differs from the override
        own = shared_tiny_components(kind)["vae"].state_dict()
        assert not torch.equal(own["decoder.conv_out.weight"], got["decoder.conv_out.weight"])


@pytest.mark.parametrize("layout,prefix", [("ldm", "first_stage_model."), ("diffusers", ""), ("diffusers", "vae.")])
def test_vae_file_layouts(tmp_path, layout, prefix):
    ldm = write_tiny_vae(tmp_path / "a.safetensors", seed=3)
    other = write_tiny_vae(tmp_path / "b.safetensors", seed=3, layout=layout, prefix=prefix)
    a, b = load_vae(ldm), load_vae(other, family=Family.SDXL, dtype="bf16")
    assert b.config.scaling_factor == 0.13025 and a.config.scaling_factor == 0.18215
    assert_state_equal(b, a, torch.bfloat16)


def test_vae_scaling_factor_from_metadata(tmp_path):
    path = write_tiny_vae(tmp_path / "odd.safetensors", scaling_factor=0.5)
    assert load_vae(path, family=Family.SDXL).config.scaling_factor == 0.5


def test_vae_rejects_other_files(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)},
              str(lora))
    with pytest.raises(UnsupportedModelError, match="lora.safetensors is not a VAE: it looks like a LoRA"):
        load_vae(lora)


# ---------------------------------------------------------------------------------------------------------------
# refusals and errors


def _pickle(tmp_path, name: str = "model.ckpt"):
    with safe_open(str(shared_tiny_checkpoint("sd15")), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    path = tmp_path / name
    torch.save({"state_dict": sd, "global_step": 875000}, path)
    return path


def test_pickle_refused_with_explanation(tmp_path):
    path = _pickle(tmp_path)
    with pytest.raises(UnsafeModelFileError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "pickle" in msg and "arbitrary code" in msg and ".safetensors" in msg
    assert "weights_only=True" in msg and "allow-unsafe-pickle" in msg
    with pytest.raises(UnsafeModelFileError):
        load_vae(_pickle(tmp_path, "vae.pt"))


def test_pickle_allowed_loads_same_weights(tmp_path):
    ckpt = load_checkpoint(_pickle(tmp_path), allow_unsafe_pickle=True, dtype=torch.float16)
    unet, vae, tes = originals("sd15")
    assert_state_equal(ckpt.unet, unet, torch.float16)
    assert_state_equal(ckpt.text_encoders[0], tes[0], torch.float16)


def test_missing_corrupt_truncated(tmp_path):
    with pytest.raises(ModelFileError, match=re.escape(str(tmp_path / "gone.safetensors"))):
        load_checkpoint(tmp_path / "gone.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ModelFileError, match="junk.safetensors"):
        load_checkpoint(junk)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(shared_tiny_checkpoint("sd15").read_bytes()[: 100_000])
    with pytest.raises(ModelFileError, match="cut.safetensors is truncated"):
        load_checkpoint(cut)
    with pytest.raises(ModelFileError, match="not a diffusers model"):
        load_checkpoint(tmp_path)


def test_mismatched_weights_named(tmp_path):
    with safe_open(str(shared_tiny_checkpoint("sd15")), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    del sd["model.diffusion_model.output_blocks.0.0.in_layers.2.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelFileError, match=r"broken.safetensors: the UNet weights .* 1 missing \(e.g. up_blocks.0"):
        load_checkpoint(path)


def test_not_checkpoints(tmp_path):
    vae = write_tiny_vae(tmp_path / "vae.safetensors")
    with pytest.raises(UnsupportedModelError, match="looks like a VAE"):
        load_checkpoint(vae)
    with safe_open(str(shared_tiny_checkpoint("sd15")), "pt") as f:
        unet_only = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))
    with pytest.raises(ModelFileError, match="has no text encoder"):
        load_checkpoint(tmp_path / "unet.safetensors")


def test_darkroom_config_override_round_trip(tmp_path):
    """Non-inferable fields (norm groups, heads, VAE scale) survive save → load via `darkroom.config`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from darkroom.models.convert import save_single_file

    comps = dict(shared_tiny_components("sd15"))
    torch.manual_seed(0)
    comps["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8).eval()
    comps["vae"] = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                                 scaling_factor=0.3).eval()
    path = save_single_file(comps, tmp_path / "odd.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["darkroom.config"])
    assert meta["unet"]["norm_num_groups"] == 8 and meta["unet"]["attention_head_dim"] == 4
    assert meta["vae"] == {"norm_num_groups": 8, "sample_size": 32, "scaling_factor": 0.3}
    assert "text_encoder" not in meta
    ckpt = load_checkpoint(path)
    assert ckpt.unet.config.norm_num_groups == 8 and ckpt.vae.config.scaling_factor == 0.3
    ours = outputs(ckpt.unet, ckpt.vae, ckpt.text_encoders, ckpt.tokenizers)
    ref = outputs(comps["unet"], comps["vae"], [comps["text_encoder"]], ckpt.tokenizers)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    # tiny files of the standard families need no override at all
    with safe_open(str(shared_tiny_checkpoint("sdxl-base")), "pt") as f:
        assert "darkroom.config" not in (f.metadata() or {})
    assert component_state_dicts(comps)["unet"].keys() == ckpt.unet.state_dict().keys()


def test_real_file_variants(tmp_path):
    """Old CLIP keys without `text_model.`, EMA copies (ignored like A1111 does), bare UNet prefixes."""
    with safe_open(str(shared_tiny_checkpoint("sd15")), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    p = "cond_stage_model.transformer."
    variant = {(p + k[len(p) + len("text_model."):] if k.startswith(p + "text_model.") else k): v for k, v in sd.items()}
    for k, v in sd.items():  # EMA weights under flattened names, as in full (non-pruned) SD1 files
        if k.startswith("model.diffusion_model."):
            variant["model_ema.diffusion_model" + k[len("model.diffusion_model."):].replace(".", "")] = torch.zeros_like(v)
    path = tmp_path / "old.safetensors"
    save_file(variant, str(path))
    ckpt = load_checkpoint(path)
    unet, vae, tes = originals("sd15")
    assert_state_equal(ckpt.unet, unet)
    assert_state_equal(ckpt.text_encoders[0], tes[0])
