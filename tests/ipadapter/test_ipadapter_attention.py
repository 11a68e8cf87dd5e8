"""IP-Adapter files and CLIP vision encoders load from the real key layouts; our attention processors give the UNet
output of diffusers' IP-Adapter path for the same weights; weight 0, start/end and block weights behave."""

from __future__ import annotations

import copy

import pytest
import torch
from ipa_tiny import ipadapter_state_dict, nested, tiny_clip_vision, write_clip_vision
from safetensors.torch import save_file

from darkroom.engine.denoiser import CondItem
from darkroom.ipadapter.attention import (attach, block_weight, combine, cross_attention_layers, installed,
                                          layer_weights, make_use, unet_kwargs)
from darkroom.ipadapter.clip_vision import ClipVision, ClipVisionFormatError, clip_vision_config, load_clip_vision
from darkroom.ipadapter.model import IPAdapterFormatError, ipadapter_from_state_dict, load_ipadapter
from darkroom.testing.tiny import shared_tiny_components


class _Sched:
    """percent → sigma: 0 → ∞, 1 → 0, linear 10 → 0 between."""

    def percent_to_sigma(self, p: float) -> float:
        return 1e9 if p <= 0 else 10.0 * (1.0 - p)


@pytest.fixture(scope="module")
def unets():
    torch.set_num_threads(2)
    return {k: shared_tiny_components(k)["unet"].eval() for k in ("sd15", "sdxl-base")}


@pytest.fixture(scope="module")
def vision():
    return ClipVision(tiny_clip_vision())


def _inputs(unet, sdxl: bool):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([400.0, 400.0])
    ctx = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    added = {}
    if sdxl:
        added = {"text_embeds": torch.randn(2, 64, generator=g),
                 "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    return x, t, ctx, added


def _embeds(adapter, vision, images):
    out = vision.encode(images)
    if adapter.uses_hidden_states:
        return out.penultimate_hidden_states[:1], vision.encode(torch.zeros(1, 32, 32, 3)).penultimate_hidden_states
    return out.image_embeds[:1], torch.zeros_like(out.image_embeds[:1])


def _ours(unet, uses, x, t, ctx, added, sigma=5.0, negs=(False, True)):
    items = attach([CondItem(cross_attn=ctx[:1])] * 2, uses, _Sched())
    kw = unet_kwargs(items, list(negs), sigma, tuple(x.shape[-2:]))
    extra = {"added_cond_kwargs": added} if added else {}
    with torch.no_grad(), installed(unet, uses):
        return unet(x, t, encoder_hidden_states=ctx, **extra, **kw).sample


def _plain(unet, x, t, ctx, added):
    extra = {"added_cond_kwargs": added} if added else {}
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx, **extra).sample


@pytest.mark.parametrize("family,kind", [("sd15", "plain"), ("sd15", "plus"), ("sd15", "full"),
                                         ("sdxl-base", "plain"), ("sdxl-base", "plus")])
def test_unet_output_equals_diffusers_ip_adapter(unets, vision, family, kind):
    unet = unets[family]
    sd = ipadapter_state_dict(unet, kind, seed=5)
    adapter = ipadapter_from_state_dict(sd, "tiny")
    assert adapter.kind == kind
    images = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    cond, uncond = _embeds(adapter, vision, images)
    use = make_use(adapter, cond, uncond, weight=0.7)
    x, t, ctx, added = _inputs(unet, family == "sdxl-base")
    ours = _ours(unet, [use], x, t, ctx, added)
    base = _plain(unet, x, t, ctx, added)
    assert (ours - base).abs().max() > 1e-2  # the reference image changes the prediction
    ref = copy.deepcopy(unet)
    ref._load_ip_adapter_weights([nested(sd)], low_cpu_mem_usage=False)
    for p in ref.attn_processors.values():
        if hasattr(p, "scale"):
            p.scale = [0.7]
    embeds = torch.cat([cond, uncond])[:, None]  # (2, 1, …): row 0 cond, row 1 uncond
    with torch.no_grad():
        theirs = ref(x, t, encoder_hidden_states=ctx,
                     added_cond_kwargs={**added, "image_embeds": [embeds]}).sample
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    # processors restored: the UNet is unchanged after the call
    torch.testing.assert_close(_plain(unet, x, t, ctx, added), base, atol=0, rtol=0)


def test_weight_zero_and_window_equal_no_adapter(unets, vision):
    unet = unets["sd15"]
    adapter = ipadapter_from_state_dict(ipadapter_state_dict(unet, "plain"))
    cond, uncond = _embeds(adapter, vision, torch.rand(1, 32, 32, 3))
    x, t, ctx, added = _inputs(unet, False)
    base = _plain(unet, x, t, ctx, added)
    zero = make_use(adapter, cond, uncond, weight=0.0)
    assert torch.equal(_ours(unet, [zero], x, t, ctx, added), base)
    late = make_use(adapter, cond, uncond, weight=1.0, start_at=0.6, end_at=0.9)  # sigma window [1, 4]
    assert torch.equal(_ours(unet, [late], x, t, ctx, added, sigma=5.0), base)  # before start
    assert torch.equal(_ours(unet, [late], x, t, ctx, added, sigma=0.5), base)  # after end
    inside = _ours(unet, [late], x, t, ctx, added, sigma=2.0)
    assert (inside - base).abs().max() > 1e-2
    # rows: a batch of negatives only sees the uncond tokens (zeros for a plain model: still an effect, the bias)
    full = make_use(adapter, cond, uncond, weight=1.0)
    both_neg = _ours(unet, [full], x, t, ctx, added, negs=(True, True))
    mixed = _ours(unet, [full], x, t, ctx, added, negs=(False, True))
    torch.testing.assert_close(both_neg[1], mixed[1], atol=1e-6, rtol=0)
    assert (both_neg[0] - mixed[0]).abs().max() > 1e-3


def test_two_uses_add_and_block_weights(unets, vision):
    unet = unets["sd15"]
    a = ipadapter_from_state_dict(ipadapter_state_dict(unet, "plain", seed=1))
    b = ipadapter_from_state_dict(ipadapter_state_dict(unet, "plus", seed=2))
    img = torch.rand(1, 32, 32, 3)
    ua, ub = make_use(a, *_embeds(a, vision, img), weight=0.5), make_use(b, *_embeds(b, vision, img), weight=0.8)
    x, t, ctx, added = _inputs(unet, False)
    base = _plain(unet, x, t, ctx, added)
    both = _ours(unet, [ua, ub], x, t, ctx, added)
    assert not torch.allclose(both, _ours(unet, [ua], x, t, ctx, added), atol=1e-4)
    # the tiny SD1 UNet has transformers 0..3 (down, mid, up ×2): SD1 "composition" (blocks 4, 5) selects none of
    # them, "style transfer" (0-3, 9-15) all of them
    comp = make_use(a, *_embeds(a, vision, img), weight=1.0, weight_type="composition")
    assert torch.equal(_ours(unet, [comp], x, t, ctx, added), base)
    style = make_use(a, *_embeds(a, vision, img), weight=1.0, weight_type="style transfer")
    assert (_ours(unet, [style], x, t, ctx, added) - base).abs().max() > 1e-3


def test_layer_weights_and_bad_options():
    assert layer_weights("linear", 0.5, sdxl=True) is None
    assert layer_weights("ease in", 0.5, sdxl=True) is None
    assert layer_weights("style transfer", 0.5, sdxl=True) == {6: 0.5}
    assert layer_weights("composition", 1.0, sdxl=True) == {3: 1.0}
    assert layer_weights("composition", 1.0, sdxl=False) == {4: 0.25, 5: 1.0}
    assert 3 not in layer_weights("strong style transfer", 1.0, sdxl=True)
    assert block_weight("style transfer", 0.5, sdxl=True, index=5, kind="output") == 0.0
    assert block_weight("ease in", 1.0, sdxl=False, index=0, kind="input") == pytest.approx(1.0)
    assert block_weight("ease out", 1.0, sdxl=True, index=0, kind="input") == pytest.approx(0.05)
    assert block_weight("ease in-out", 2.0, sdxl=False, index=8, kind="output") == pytest.approx(2.0)
    assert block_weight("reverse in-out", 1.0, sdxl=False, index=8, kind="output") == pytest.approx(0.05)
    assert block_weight("weak input", 1.0, sdxl=False, index=0, kind="input") == pytest.approx(0.2)
    assert block_weight("weak input", 1.0, sdxl=False, index=9, kind="output") == 1.0
    assert block_weight("strong middle", 1.0, sdxl=True, index=4, kind="middle") == 1.0
    assert block_weight("strong middle", 1.0, sdxl=True, index=5, kind="output") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not supported"):
        layer_weights("style transfer precise", 1.0, sdxl=False)
    with pytest.raises(ValueError, match="unknown weight_type"):
        layer_weights("sideways", 1.0, sdxl=False)


def test_cross_attention_layer_order(unets):
    layers = cross_attention_layers(unets["sdxl-base"])
    assert [k for _, k, _, _ in layers] == [str(1 + 2 * i) for i in range(len(layers))]
    blocks = {name.split(".transformer_blocks")[0]: b for name, _, b, _ in layers}
    assert {name[0]: kind for name, _, _, kind in layers} == {"d": "input", "m": "middle", "u": "output"}
    # execution order: down, mid, up (processor order is down, up, mid)
    down = [b for n, b in blocks.items() if n.startswith("down")]
    mid = [b for n, b in blocks.items() if n.startswith("mid")]
    up = [b for n, b in blocks.items() if n.startswith("up")]
    assert max(down) < min(mid) and max(mid) < min(up)


def test_files_load_and_bad_files_fail(tmp_path, unets):
    unet = unets["sd15"]
    for kind in ("plain", "plus", "full"):
        p = tmp_path / f"ip-{kind}.safetensors"
        save_file(ipadapter_state_dict(unet, kind), str(p))
        adapter = load_ipadapter(p)
        assert adapter.kind == kind and adapter.name == f"ip-{kind}"
        assert len(adapter.ip_adapter) == len(cross_attention_layers(unet))
    save_file({"image_proj.foo": torch.zeros(2), "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(IPAdapterFormatError, match="unknown image projection"):
        load_ipadapter(tmp_path / "bad.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "nothing.safetensors"))
    with pytest.raises(IPAdapterFormatError, match="image_proj"):
        load_ipadapter(tmp_path / "nothing.safetensors")
    # an SD1 adapter on an SDXL UNet: clear error
    sdxl_use = make_use(load_ipadapter(tmp_path / "ip-plain.safetensors"), torch.zeros(1, 32), torch.zeros(1, 32))
    with pytest.raises(ValueError, match="another model family"):
        with installed(unets["sdxl-base"], [sdxl_use]):
            pass


def test_clip_vision_file_loads_with_inferred_config(tmp_path):
    model = tiny_clip_vision(seed=4)
    path = write_clip_vision(tmp_path / "clip_vision" / "tiny-vit.safetensors", model)
    vision = load_clip_vision(path)
    assert vision.image_size == 32
    cfg = vision.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.projection_dim) == (64, 3, 8, 32)
    img = torch.rand(2, 50, 40, 3, generator=torch.Generator().manual_seed(2))
    ours = vision.encode(img)
    pixels = torch.nn.functional.interpolate(img.movedim(-1, 1), size=(40, 32), mode="bicubic", antialias=True)
    pixels = ((pixels * 255).clamp(0, 255).round() / 255)[:, :, 4:36, :]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=(pixels - mean) / std, output_hidden_states=True)
    torch.testing.assert_close(ours.image_embeds, ref.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.penultimate_hidden_states, ref.hidden_states[-2], atol=1e-5, rtol=1e-4)
    assert ours.penultimate_hidden_states.shape == (2, 17, 64)
    # real-size shapes give the real configs
    big = {"vision_model.embeddings.patch_embedding.weight": torch.empty(1280, 3, 14, 14),
           "vision_model.embeddings.position_embedding.weight": torch.empty(257, 1280),
           "vision_model.encoder.layers.31.mlp.fc1.weight": torch.empty(5120, 1280),
           "vision_model.encoder.layers.0.mlp.fc1.weight": torch.empty(5120, 1280),
           "visual_projection.weight": torch.empty(1024, 1280)}
    cfg = clip_vision_config(big)
    assert (cfg.image_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_act) == (224, 32, 16, "gelu")
    save_file({"visual.proj": torch.zeros(2, 2)}, str(tmp_path / "openclip.safetensors"))
    with pytest.raises(ClipVisionFormatError, match="Hugging Face layout"):
        load_clip_vision(tmp_path / "openclip.safetensors")


def test_embeds_scaling_and_combining(unets, vision):
    unet = unets["sd15"]
    a = ipadapter_from_state_dict(ipadapter_state_dict(unet, "plain", seed=3))
    cond, uncond = _embeds(a, vision, torch.rand(1, 32, 32, 3))
    x, t, ctx, added = _inputs(unet, False)
    base = _plain(unet, x, t, ctx, added)

    def out(**kw):
        return _ours(unet, [make_use(a, cond, uncond, **kw)], x, t, ctx, added)

    # at weight 1, scaling K as well as V changes nothing; at 0.5 it does
    torch.testing.assert_close(out(weight=1.0, embeds_scaling="K+V"), out(weight=1.0), atol=1e-6, rtol=0)
    assert (out(weight=0.5, embeds_scaling="K+V") - out(weight=0.5)).abs().max() > 1e-4
    for scaling in ("K+V w/ C penalty", "K+mean(V) w/ C penalty"):
        got = out(weight=1.0, embeds_scaling=scaling)
        assert (got - base).abs().max() > 1e-4 and (got - out(weight=1.0)).abs().max() > 1e-5
        assert torch.equal(out(weight=0.0, embeds_scaling=scaling), base)
    # several reference images: concat puts their tokens side by side, average/add/subtract combine embeddings
    two = torch.randn(2, 32)
    use = make_use(a, two, torch.zeros(1, 32), combine_embeds="concat")
    assert use.cond.shape == use.uncond.shape == (1, 8, 32)  # 2 images × 4 tokens
    torch.testing.assert_close(use.cond, torch.cat([a.project(two[:1]), a.project(two[1:])], dim=1))
    torch.testing.assert_close(make_use(a, two, torch.zeros(1, 32), combine_embeds="average").cond,
                               a.project(two.mean(0, keepdim=True)))
    three = torch.randn(3, 32)
    torch.testing.assert_close(combine(three, "subtract"), three[:1] - (three[1] + three[2])[None] / 2)
    torch.testing.assert_close(combine(three, "add"), three.sum(0, keepdim=True))
    torch.testing.assert_close(combine(two, "norm average"), (two / two.norm(dim=0)).mean(0, keepdim=True))
    concat = _ours(unet, [use], x, t, ctx, added)
    assert (concat - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="combine_embeds"):
        combine(two, "median")
    with pytest.raises(ValueError, match="embeds_scaling"):
        make_use(a, cond, uncond, embeds_scaling="Q only")
    with pytest.raises(ValueError, match="start_at"):
        make_use(a, cond, uncond, start_at=0.8, end_at=0.2)


def test_attention_mask(unets, vision):
    unet = unets["sd15"]
    a = ipadapter_from_state_dict(ipadapter_state_dict(unet, "plain", seed=4))
    cond, uncond = _embeds(a, vision, torch.rand(1, 32, 32, 3))
    x, t, ctx, added = _inputs(unet, False)
    base = _plain(unet, x, t, ctx, added)
    full = _ours(unet, [make_use(a, cond, uncond)], x, t, ctx, added)
    ones = _ours(unet, [make_use(a, cond, uncond, mask=torch.ones(64, 64))], x, t, ctx, added)
    zeros = _ours(unet, [make_use(a, cond, uncond, mask=torch.zeros(1, 64, 64))], x, t, ctx, added)
    half_mask = torch.zeros(1, 64, 64)
    half_mask[:, :, :32] = 1.0
    half = _ours(unet, [make_use(a, cond, uncond, mask=half_mask)], x, t, ctx, added)
    assert torch.equal(ones, full) and torch.equal(zeros, base)
    assert (half - full).abs().max() > 1e-4 and (half - base).abs().max() > 1e-4
    # the masked-out right half moves less than the left half
    assert (half - base)[..., 6:].abs().mean() < (half - base)[..., :2].abs().mean()
    with pytest.raises(ValueError, match="MASK"):
        make_use(a, cond, uncond, mask=torch.ones(1, 1, 4, 4))
