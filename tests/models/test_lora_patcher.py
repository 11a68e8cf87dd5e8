"""LoraPatcher on tiny real diffusers UNets and CLIP text encoders: SD1 (diffusers names) and SDXL (LDM names)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from darkroom.models.bundle import Checkpoint
from darkroom.models.family import Family, ModelKind
from darkroom.models.lora import LoraMismatchError, LoraPatcher, LoraWeight, load_lora_file, lora_from_state_dict
from darkroom.models.lora_keys import text_encoder_lora_names, unet_lora_names
from darkroom.testing.lora_files import kohya_lora_state_dict, peft_lora_state_dict, tiny_text_encoder, tiny_unet, \
    write_kohya_lora


def _state(*models):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def _same(models, states) -> bool:
    return all(torch.equal(v, s[k]) for m, s in zip(models, states) for k, v in m.state_dict().items())


def _expected(models_by_comp, originals_by_comp, loras):
    """Independent merge: {(component-model index, param key): expected tensor} from the files' tensors."""
    names = {c: (unet_lora_names(m) if c == "unet" else text_encoder_lora_names(m)) for c, m in models_by_comp.items()}
    acc: dict[tuple[str, str], torch.Tensor] = {}
    for lf, te_w, unet_w in loras:
        for (comp, name), p in lf.patches.items():
            mult = unet_w if comp == "unet" else te_w
            if mult == 0:
                continue
            key = (comp, names[comp][name] + ".weight")
            w = acc.get(key)
            if w is None:
                w = originals_by_comp[comp][key[1]].float()
            if p.mid is None:
                d = p.up.float().flatten(1) @ p.down.float().flatten(1)
            else:
                d = torch.einsum("oa,abhw,bi->oihw", p.up.float().flatten(1), p.mid.float(), p.down.float().flatten(1))
            acc[key] = w + d.reshape(w.shape) * (mult * p.alpha / p.rank)
    return acc


@pytest.fixture()
def sd1():
    return tiny_unet("sd1"), tiny_text_encoder()


@pytest.fixture()
def sd1_files(tmp_path, sd1):
    unet, te = sd1
    a = load_lora_file(write_kohya_lora(tmp_path / "style_a.safetensors", unet, [te], targets="all", tucker=True,
                                       seed=1))
    b = load_lora_file(write_kohya_lora(tmp_path / "style_b.safetensors", unet, [te], seed=2, rank=8))
    return a, b


def _unet_out(unet, ctx_dim=32, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 5, ctx_dim, generator=g)
    with torch.no_grad():
        return unet(x.to(unet.dtype), torch.tensor([10]), encoder_hidden_states=ctx.to(unet.dtype), **extra).sample


def _te_out(te):
    with torch.no_grad():
        return te(torch.tensor([[49406, 320, 2368, 49407]])).last_hidden_state


def test_two_loras_sd1_exact_deltas_untouched_and_restore(sd1, sd1_files):
    unet, te = sd1
    a, b = sd1_files
    orig_u, orig_t = _state(unet, te)
    loras = [(a, 0.7, 1.0), (b, 0.3, -0.5)]
    patcher = LoraPatcher(unet, [te])
    report = patcher.apply(loras)
    assert report.matched == {"style_a": len(a), "style_b": len(b)} and not report.unmatched
    expected = _expected({"unet": unet, "te": te}, {"unet": orig_u, "te": orig_t}, loras)
    touched = {c: {k for (cc, k) in expected if cc == c} for c in ("unet", "te")}
    assert len(touched["unet"]) > 30 and len(touched["te"]) == 12 and report.patched_weights == len(expected)
    for (comp, key), want in expected.items():
        got = (unet if comp == "unet" else te).state_dict()[key]
        torch.testing.assert_close(got, want, atol=2e-7, rtol=1e-6, msg=lambda m: f"{comp} {key}: {m}")
    for comp, model, orig in (("unet", unet, orig_u), ("te", te, orig_t)):
        for k, v in model.state_dict().items():
            if k not in touched[comp]:
                assert torch.equal(v, orig[k]), k  # biases, norms, untargeted layers
    # 3×3 resnet convs got LoCon+Tucker deltas
    assert not torch.equal(unet.down_blocks[0].resnets[0].conv1.weight, orig_u["down_blocks.0.resnets.0.conv1.weight"])
    patcher.restore()
    assert _same([unet, te], [orig_u, orig_t]) and patcher.applied == []


def test_forward_equals_manually_merged_model(sd1, sd1_files):
    unet, te = sd1
    a, b = sd1_files
    ref_u, ref_t = copy.deepcopy(unet), copy.deepcopy(te)
    base_u, base_t = _unet_out(unet), _te_out(te)
    loras = [(a, 1.0, 0.8), (b, 0.5, 0.4)]
    for (comp, key), w in _expected({"unet": ref_u, "te": ref_t}, {"unet": ref_u.state_dict(), "te": ref_t.state_dict()},
                                    loras).items():
        (ref_u if comp == "unet" else ref_t).get_parameter(key).data.copy_(w)
    LoraPatcher(unet, [te]).apply(loras)
    out_u, out_t = _unet_out(unet), _te_out(te)
    torch.testing.assert_close(out_u, _unet_out(ref_u), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_t, _te_out(ref_t), atol=1e-5, rtol=1e-5)
    assert (out_u - base_u).abs().max() > 1e-3 and (out_t - base_t).abs().max() > 1e-3


def test_te_and_unet_multipliers_are_independent(sd1, sd1_files):
    unet, te = sd1
    a, _ = sd1_files
    orig_u, orig_t = _state(unet, te)
    patcher = LoraPatcher(unet, [te])
    patcher.apply([(a, 0.0, 1.0)])  # <lora:a:0:1>
    assert _same([te], [orig_t]) and not _same([unet], [orig_u])
    patcher.apply([(a, 1.0, 0.0)])  # <lora:a:1:0>
    assert _same([unet], [orig_u]) and not _same([te], [orig_t])
    te_at_1 = _state(te)[0]
    patcher.apply([(a, 1.0, 1.0)])
    assert _same([te], [te_at_1])  # the text encoder's result does not depend on the UNet multiplier
    patcher.apply([])
    assert _same([unet, te], [orig_u, orig_t])


def test_same_set_is_free_and_switching_sets_does_not_drift(sd1, sd1_files):
    unet, te = sd1
    a, b = sd1_files
    orig_u, orig_t = _state(unet, te)
    patcher = LoraPatcher(unet, [te])
    patcher.apply([(a, 1.0, 1.0), (b, 1.0, 1.0)])
    versions = {n: p._version for n, p in unet.named_parameters()}
    again = load_lora_file(a.path)  # a fresh object for the same file version
    report = patcher.apply([(again, 1.0, 1.0), (b, 1.0, 1.0)])
    assert report.changed is False
    assert all(p._version == versions[n] for n, p in unet.named_parameters())  # nothing was written
    for _ in range(3):  # a → b → a cycles must reproduce the same bits
        patcher.apply([(b, 1.0, 0.5)])
        only_b = _state(unet, te)
        patcher.apply([(a, 1.0, 1.0), (b, 1.0, 1.0)])
    fresh_u, fresh_t = tiny_unet("sd1"), tiny_text_encoder()
    LoraPatcher(fresh_u, [fresh_t]).apply([(b, 1.0, 0.5)])
    assert _same([fresh_u, fresh_t], only_b)
    patcher.restore()
    assert _same([unet, te], [orig_u, orig_t])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(sd1, sd1_files, dtype):
    unet, te = sd1
    unet.to(dtype)
    te.to(dtype)
    a, b = sd1_files
    orig_u, orig_t = _state(unet, te)
    loras = [(a, 1.0, 1.0), (b, 0.5, 0.5)]
    patcher = LoraPatcher(unet, [te])
    patcher.apply(loras)
    for (comp, key), want in _expected({"unet": unet, "te": te}, {"unet": orig_u, "te": orig_t}, loras).items():
        got = (unet if comp == "unet" else te).state_dict()[key]
        assert got.dtype == dtype
        # computed in float32 then cast once: equal to the cast of the float32 result (1 ulp for summation order)
        torch.testing.assert_close(got, want.to(dtype), atol=0, rtol=torch.finfo(dtype).eps)
    if dtype == torch.float16:
        assert torch.isfinite(_unet_out(unet)).all()
    patcher.restore()
    assert _same([unet, te], [orig_u, orig_t])


def test_sdxl_ldm_names_two_text_encoders(tmp_path):
    unet, te1, te2 = tiny_unet("sdxl"), tiny_text_encoder(seed=1), tiny_text_encoder(projection=True, seed=2)
    orig = _state(unet, te1, te2)
    p = write_kohya_lora(tmp_path / "xl.safetensors", unet, [te1, te2], unet_naming="ldm", targets="all",
                         metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    lf = load_lora_file(p)
    assert lf.base_model == "sdxl"
    assert any(n.startswith("input_blocks_4_1_transformer_blocks_0") for c, n in lf.patches if c == "unet")
    assert {c for c, _ in lf.patches} == {"unet", "te1", "te2"}
    ckpt = Checkpoint(name="tiny-xl", kind=ModelKind(Family.SDXL), unet=unet, vae=None, text_encoders=[te1, te2],
                      tokenizers=[])
    patcher = LoraPatcher.for_checkpoint(ckpt)
    report = patcher.apply([(lf, 0.5, 1.5)])
    assert report.matched["xl"] == len(lf) and not report.unmatched
    expected = _expected({"unet": unet, "te1": te1, "te2": te2}, dict(zip(("unet", "te1", "te2"), orig)),
                         [(lf, 0.5, 1.5)])
    for (comp, key), want in expected.items():
        model = {"unet": unet, "te1": te1, "te2": te2}[comp]
        torch.testing.assert_close(model.state_dict()[key], want, atol=2e-7, rtol=1e-6)
    assert len([k for k in expected if k[0] == "te2"]) == 12  # te2 keys landed on the second encoder
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    assert torch.isfinite(_unet_out(unet, ctx_dim=64, added_cond_kwargs=added)).all()
    patcher.restore()
    assert _same([unet, te1, te2], orig)


def test_sd1_naming_on_sdxl_unet_also_matches(tmp_path):
    """Some SDXL LoRAs (diffusers-converted) use diffusers names; both spellings resolve on any UNet."""
    unet = tiny_unet("sdxl")
    lf = lora_from_state_dict(kohya_lora_state_dict(unet, unet_naming="diffusers", seed=3), "xl_diffusers_names")
    ldm = lora_from_state_dict(kohya_lora_state_dict(unet, unet_naming="ldm", seed=3), "xl_ldm_names")
    assert len(lf) == len(ldm) > 0
    a, b = copy.deepcopy(unet), copy.deepcopy(unet)
    LoraPatcher(a).apply([lf])
    LoraPatcher(b).apply([ldm])
    assert _same([a], _state(b))


def test_peft_format_equals_kohya_format():
    unet, te = tiny_unet("sd1"), tiny_text_encoder()
    peft_sd = peft_lora_state_dict(unet, [te], rank=4, alpha=2.0, seed=5)
    kohya_sd = {}
    for k, v in peft_sd.items():
        comp, _, rest = k.partition(".")
        prefix = "lora_unet_" if comp == "unet" else "lora_te_text_model_"
        for suffix, new in ((".lora_A.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_up.weight"),
                            (".alpha", ".alpha")):
            if rest.endswith(suffix):
                kohya_sd[prefix + rest[: -len(suffix)].replace(".", "_") + new] = v
    a_u, a_t = copy.deepcopy(unet), copy.deepcopy(te)
    LoraPatcher(a_u, [a_t]).apply([lora_from_state_dict(peft_sd, "peft")])
    LoraPatcher(unet, [te]).apply([lora_from_state_dict(kohya_sd, "kohya")])
    assert _same([unet, te], _state(a_u, a_t))
    assert not _same([unet], _state(tiny_unet("sd1")))


def test_unmatched_keys_are_reported(sd1, caplog):
    unet, te = sd1
    sd = kohya_lora_state_dict(unet, [te], seed=4)
    n = len({k.split(".")[0] for k in sd})
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.randn(2, 32)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.randn(32, 2)
    # right name, wrong shape (a LoRA for a bigger model)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(2, 768)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(768, 2)
    lf = lora_from_state_dict(sd, "partly")
    with caplog.at_level(logging.WARNING):
        report = LoraPatcher(unet, [te]).apply([lf])
    assert report.matched["partly"] == n - 1
    assert report.unmatched["partly"] == {
        "lora_unet_down_blocks_9_attentions_0_proj_in": "no such module in this model",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "shape mismatch with model weight (32, 32)",
    }
    assert "2 of" in caplog.text and "lora_unet_down_blocks_9_attentions_0_proj_in" in caplog.text


def test_lora_for_another_family_raises_before_touching(sd1):
    unet, te = sd1
    orig = _state(unet, te)
    xl = tiny_unet("sdxl")
    sd = kohya_lora_state_dict(xl, unet_naming="ldm", select=lambda k: "input_blocks_4_" in k or "input_blocks_5_" in k)
    lf = lora_from_state_dict(sd, "xl_only")
    patcher = LoraPatcher(unet, [te])
    for _ in range(2):  # the mapping is cached; the error must not be
        with pytest.raises(LoraMismatchError, match=r"xl_only.*none of its \d+ modules matched.*SDXL"):
            patcher.apply([lf])
    assert _same([unet, te], orig)
    te_only = lora_from_state_dict(kohya_lora_state_dict(None, [te], te_prefixes=["lora_te"]), "te_only")
    with pytest.raises(LoraMismatchError, match="no te component"):
        LoraPatcher(unet, []).apply([te_only])


def test_refiner_maps_te2_to_its_only_encoder():
    unet, te2 = tiny_unet("sdxl"), tiny_text_encoder(projection=True)
    orig = _state(te2)
    lf = lora_from_state_dict(kohya_lora_state_dict(None, [te2], te_prefixes=["lora_te2"]), "ref")
    ckpt = Checkpoint(name="ref", kind=ModelKind(Family.SDXL_REFINER), unet=unet, vae=None, text_encoders=[te2],
                      tokenizers=[])
    report = LoraPatcher.for_checkpoint(ckpt).apply([lf])
    assert report.matched["ref"] == len(lf) == 12 and not _same([te2], orig)


def test_backups_only_for_touched_weights_on_cpu(sd1, sd1_files):
    unet, te = sd1
    _, b = sd1_files
    patcher = LoraPatcher(unet, [te])
    patcher.apply([(b, 0.0, 1.0)])
    assert len(patcher.patched_slots) == sum(1 for c, _ in b.patches if c == "unet")
    assert all(s.startswith("unet:") for s in patcher.patched_slots)
    assert all(t.device.type == "cpu" for t in patcher._backups.values())
    same_dev = LoraPatcher(tiny_unet("sd1"), backup_device=None)
    same_dev.apply([(b, 0.0, 1.0)])
    assert len(same_dev.patched_slots) == len(patcher.patched_slots)


def test_argument_forms_and_bad_arguments(sd1, sd1_files):
    unet, te = sd1
    a, _ = sd1_files
    patcher = LoraPatcher(unet, [te])
    assert patcher.apply([a]).changed is True  # a bare LoraFile means te = unet = 1
    assert patcher.apply([LoraWeight(a)]).changed is False
    assert patcher.apply([(a, 1, 1.0)]).changed is False
    assert patcher.applied == [("style_a", 1.0, 1.0)]
    with pytest.raises(TypeError, match="LoraFile"):
        patcher.apply([("not a lora", 1.0, 1.0)])


def test_apply_under_inference_mode_then_restore_outside(sd1, sd1_files):
    unet, te = sd1
    a, _ = sd1_files
    orig = _state(unet, te)
    patcher = LoraPatcher(unet, [te])
    with torch.inference_mode():  # how an engine worker typically runs
        patcher.apply([(a, 1.0, 0.5)])
    assert not _same([unet, te], orig)
    patcher.restore()
    assert _same([unet, te], orig)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weights_with_cpu_backups(sd1, sd1_files):
    unet, te = (m.to("cuda", torch.float16) for m in sd1)
    a, b = sd1_files
    orig_u, orig_t = _state(unet, te)
    patcher = LoraPatcher(unet, [te])
    patcher.apply([(a, 1.0, 1.0), (b, 0.5, 0.5)])
    assert not _same([unet, te], [orig_u, orig_t])
    assert all(t.device.type == "cpu" for t in patcher._backups.values())
    cpu_u, cpu_t = (m.to(torch.float16) for m in (tiny_unet("sd1"), tiny_text_encoder()))
    LoraPatcher(cpu_u, [cpu_t]).apply([(a, 1.0, 1.0), (b, 0.5, 0.5)])
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(v.cpu(), cpu_u.state_dict()[k], atol=0, rtol=1e-3)
    patcher.restore()
    assert _same([unet, te], [orig_u, orig_t])
