"""Key conversion LDM ↔ diffusers: exact inverses on full-size listings and bit-identical tiny round trips."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors import safe_open

from darkroom.models.convert import (
    checkpoint_to_ldm_state_dict,
    component_state_dicts,
    diffusers_to_ldm,
    ldm_to_diffusers,
    save_single_file,
    to_diffusers_components,
)
from darkroom.models.loader import load_checkpoint
from darkroom.testing.tiny import (
    ALL_KINDS,
    KIND_NAMES,
    full_size_components,
    full_size_state_dict,
    shared_tiny_checkpoint,
    shared_tiny_components,
)

FAMILIES = ["sd15", "sd2-base", "sdxl-base", "sdxl-refiner"]


@functools.lru_cache(maxsize=None)
def tiny_sds(kind: str) -> dict[str, dict[str, torch.Tensor]]:
    return component_state_dicts(shared_tiny_components(kind))


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", FAMILIES + ["sdxl-inpaint"])
def test_full_size_ldm_to_diffusers_inverts_ours(kind):
    """diffusers' own LDM converters undo our diffusers → LDM mapping on the real-size key sets."""
    ldm = full_size_state_dict(kind)
    back = ldm_to_diffusers(ldm)
    want = full_size_components(kind)
    assert set(back) == set(want)
    for comp in want:
        assert {k: tuple(v.shape) for k, v in back[comp].items()} == {k: tuple(v.shape) for k, v in want[comp].items()}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tiny_round_trips_are_bit_identical(kind):
    comps = tiny_sds(kind)
    family = KIND_NAMES[kind].family
    ldm = diffusers_to_ldm(comps, family)
    back = ldm_to_diffusers(ldm)
    assert set(back) == set(comps)
    for comp in comps:
        assert_same(back[comp], comps[comp])
    assert_same(diffusers_to_ldm(back, family), ldm)


def test_sd2_file_keeps_the_real_openclip_layout():
    """SD2 files hold 24 OpenCLIP layers of which SD2 uses 23; we write the unused one as an identity (zeros)."""
    comps = tiny_sds("sd2-base")
    ldm = diffusers_to_ldm(comps, KIND_NAMES["sd2-base"].family)
    p = "cond_stage_model.model."
    layers = {int(k[len(p) + len("transformer.resblocks."):].split(".")[0]) for k in ldm if ".resblocks." in k}
    assert layers == {0, 1, 2}  # tiny text encoder has 2 layers
    last = {k: v for k, v in ldm.items() if k.startswith(p + "transformer.resblocks.2.")}
    assert len(last) == 12 and all(not v.any() for v in last.values())
    assert torch.equal(ldm[p + "text_projection"], torch.eye(32))
    te = comps["text_encoder"]
    q, k, v = (te[f"text_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(ldm[p + "transformer.resblocks.1.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert torch.equal(ldm[p + "positional_embedding"], te["text_model.embeddings.position_embedding.weight"])


def test_sdxl_projection_transposed():
    comps = tiny_sds("sdxl-base")
    ldm = diffusers_to_ldm(comps, KIND_NAMES["sdxl-base"].family)
    w = comps["text_encoder_2"]["text_projection.weight"]
    assert torch.equal(ldm["conditioner.embedders.1.model.text_projection"], w.T)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in ldm


@pytest.mark.parametrize("kind", ["sd15", "sdxl-base"])
def test_diffusers_layout_single_file_components(kind):
    path = shared_tiny_checkpoint(kind, "diffusers-file")
    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        assert all(k.split(".")[0] in ("unet", "vae", "text_encoder", "text_encoder_2") for k in sd)
    comps = to_diffusers_components(sd)
    for comp, want in tiny_sds(kind).items():
        assert_same(comps[comp], want)


def test_save_dtype_and_reload_identical(tmp_path):
    """A loaded checkpoint saved back gives the same tensors as the file it came from."""
    src = shared_tiny_checkpoint("sdxl-base")
    ckpt = load_checkpoint(src)
    with safe_open(str(src), "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    again = checkpoint_to_ldm_state_dict(ckpt)
    assert_same({k: v.contiguous() for k, v in again.items()}, original)
    out = save_single_file(ckpt, tmp_path / "half.safetensors", dtype=torch.float16, metadata={"note": "x"})
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["note"] == "x"
        assert set(f.keys()) == set(original)
        for k in original:
            assert torch.equal(f.get_tensor(k), original[k].half()), k


def test_unknown_component_rejected():
    with pytest.raises(ValueError, match="unknown component"):
        component_state_dicts({"unet2": {}})
