"""Applying ControlNets and T2I-Adapters while sampling gives exactly what diffusers' pipelines give for the same tiny
weights, seed and timesteps (ControlNet, two ControlNets, start/end percent, T2I-Adapter, SDXL); strength 0 is no
ControlNet; A1111's control modes scale and mask the residuals as sd-webui-controlnet does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))

from cn_tiny import tiny_controlnet, tiny_t2i_adapter  # noqa: E402
from test_diffusers_equivalence import TIMESTEPS, _diffusers_latents, _scheduler  # noqa: E402

from darkroom.control.apply import AppliedControl, apply_control, control_mode  # noqa: E402
from darkroom.control.model import ControlModelError, ControlNet, T2IAdapter  # noqa: E402
from darkroom.engine import pipeline  # noqa: E402
from darkroom.engine.denoiser import CondItem, UNetDenoiser  # noqa: E402
from darkroom.models.family import Family  # noqa: E402
from darkroom.models.loader import load_checkpoint  # noqa: E402
from darkroom.sampling.noise import prepare_noise  # noqa: E402
from darkroom.testing.tiny import shared_tiny_checkpoint  # noqa: E402

SIZE = 32  # pixels; latents are 4×4, hints 32×32
PROMPT, NEGATIVE = "a red circle at the left", "blurry"
SEED, CFG = 42, 6.0


@pytest.fixture(scope="module")
def ckpt():
    torch.set_num_threads(2)
    return load_checkpoint(shared_tiny_checkpoint("sd15"))


@pytest.fixture(scope="module")
def nets(ckpt):
    return tiny_controlnet(ckpt.unet, seed=3), tiny_controlnet(ckpt.unet, seed=4)


def hint_image(seed: int) -> torch.Tensor:
    return torch.rand((1, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(seed))  # IMAGE (1, H, W, 3)


def ours(ckpt, units: list[dict]) -> np.ndarray:
    pos, neg = pipeline.encode_text(ckpt, PROMPT), pipeline.encode_text(ckpt, NEGATIVE)
    for u in units:
        pos, neg = apply_control(pos, neg, **u)
    latent = torch.zeros((1, 4, SIZE // 8, SIZE // 8))
    out = pipeline.ksample(ckpt, latent, pos, neg, seed=SEED, steps=4, cfg=CFG, sampler="euler", scheduler="normal")
    return pipeline.decode(ckpt, out).numpy()


def diffusers_controlnet(ckpt, controlnet, images, **kw) -> np.ndarray:
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0], unet=ckpt.unet,
        controlnet=controlnet, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = prepare_noise((1, 4, SIZE // 8, SIZE // 8), SEED)
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=images, height=SIZE, width=SIZE, timesteps=TIMESTEPS,
                guidance_scale=CFG, latents=_diffusers_latents(noise), output_type="np", **kw).images


@pytest.fixture(scope="module")
def plain(ckpt):
    return ours(ckpt, [])


def test_controlnet_matches_stable_diffusion_controlnet_pipeline(ckpt, nets, plain):
    hint = hint_image(0)
    got = ours(ckpt, [dict(model=ControlNet(nets[0], "a", Family.SD1), image=hint, strength=0.8)])
    ref = diffusers_controlnet(ckpt, nets[0], hint.movedim(-1, 1), controlnet_conditioning_scale=0.8)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    assert np.abs(got - plain).max() > 0.02  # the ControlNet really changes the picture


def test_strength_zero_equals_no_controlnet(ckpt, nets, plain):
    model = ControlNet(nets[0], "a", Family.SD1)
    pos, neg = pipeline.encode_text(ckpt, PROMPT), pipeline.encode_text(ckpt, NEGATIVE)
    assert apply_control(pos, neg, model, hint_image(0), strength=0.0) == (pos, neg)
    # a unit that reaches the denoiser at strength 0 adds nothing either
    unit = AppliedControl(model, hint_image(0), strength=0.0)
    pos = [p.with_(extra={"control": [unit]}) for p in pos]
    neg = [n.with_(extra={"control": [unit]}) for n in neg]
    out = pipeline.ksample(ckpt, torch.zeros((1, 4, SIZE // 8, SIZE // 8)), pos, neg, seed=SEED, steps=4, cfg=CFG,
                           sampler="euler", scheduler="normal")
    np.testing.assert_array_equal(pipeline.decode(ckpt, out).numpy(), plain)


@pytest.mark.parametrize("window", [dict(end_percent=0.5), dict(start_percent=0.5)])
def test_start_and_end_percent_match_diffusers_guidance_window(ckpt, nets, window):
    hint = hint_image(1)
    got = ours(ckpt, [dict(model=ControlNet(nets[0], "a", Family.SD1), image=hint, strength=1.0, **window)])
    kw = ({"control_guidance_end": 0.5} if "end_percent" in window else {"control_guidance_start": 0.5})
    ref = diffusers_controlnet(ckpt, nets[0], hint.movedim(-1, 1), **kw)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    full = diffusers_controlnet(ckpt, nets[0], hint.movedim(-1, 1))
    assert np.abs(got - full).max() > 1e-3  # the window matters


def test_two_units_match_multi_controlnet(ckpt, nets):
    h1, h2 = hint_image(2), hint_image(3)
    got = ours(ckpt, [dict(model=ControlNet(nets[0], "a", Family.SD1), image=h1, strength=0.7),
                      dict(model=ControlNet(nets[1], "b", Family.SD1), image=h2, strength=1.2)])
    ref = diffusers_controlnet(ckpt, list(nets), [h1.movedim(-1, 1), h2.movedim(-1, 1)],
                               controlnet_conditioning_scale=[0.7, 1.2])
    np.testing.assert_allclose(got, ref, atol=2e-4)


def test_t2i_adapter_matches_stable_diffusion_adapter_pipeline(ckpt, plain):
    from diffusers import StableDiffusionAdapterPipeline

    adapter = tiny_t2i_adapter((32, 64, 64, 64), seed=5)
    hint = hint_image(4)
    got = ours(ckpt, [dict(model=T2IAdapter(adapter, "t2i", Family.SD1), image=hint, strength=0.7)])
    pipe = StableDiffusionAdapterPipeline(
        vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0], unet=ckpt.unet,
        adapter=adapter, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = prepare_noise((1, 4, SIZE // 8, SIZE // 8), SEED)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=hint.movedim(-1, 1), height=SIZE, width=SIZE,
               timesteps=TIMESTEPS, guidance_scale=CFG, latents=_diffusers_latents(noise), output_type="np",
               adapter_conditioning_scale=0.7).images
    np.testing.assert_allclose(got, ref, atol=2e-4)
    assert np.abs(got - plain).max() > 0.02


def test_sdxl_controlnet_matches_stable_diffusion_xl_controlnet_pipeline():
    from diffusers import StableDiffusionXLControlNetPipeline

    xl = load_checkpoint(shared_tiny_checkpoint("sdxl-base"))
    cn = tiny_controlnet(xl.unet, seed=6)
    hint = hint_image(5)
    pos, neg = pipeline.encode_text(xl, PROMPT), pipeline.encode_text(xl, NEGATIVE)
    pos, neg = apply_control(pos, neg, ControlNet(cn, "xl", Family.SDXL), hint, strength=0.9)
    latent = torch.zeros((1, 4, SIZE // 8, SIZE // 8))
    out = pipeline.ksample(xl, latent, pos, neg, seed=SEED, steps=4, cfg=CFG, sampler="euler", scheduler="normal")
    got = pipeline.decode(xl, out).numpy()
    pipe = StableDiffusionXLControlNetPipeline(
        vae=xl.vae, text_encoder=xl.text_encoders[0], text_encoder_2=xl.text_encoders[1],
        tokenizer=xl.tokenizers[0], tokenizer_2=xl.tokenizers[1], unet=xl.unet, controlnet=cn,
        scheduler=_scheduler(), force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    noise = prepare_noise(latent.shape, SEED)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=hint.movedim(-1, 1), height=SIZE, width=SIZE,
               timesteps=TIMESTEPS, guidance_scale=CFG, latents=_diffusers_latents(noise), output_type="np",
               controlnet_conditioning_scale=0.9).images
    np.testing.assert_allclose(got, ref, atol=2e-4)


# -- control modes and rows ----------------------------------------------------------------------------------------


def _unit_outputs(ckpt, net, mode: str, cond_rows: list[bool]):
    """One direct unit call on a two-row batch (row 0 / row 1 with the given cond flags)."""
    from darkroom.engine.pipeline import model_sampling_for

    ms = model_sampling_for(ckpt)
    unit = AppliedControl(ControlNet(net, "a", Family.SD1), hint_image(7), strength=0.6, mode=mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 4, 4, 4), generator=g)
    ctx = torch.randn((2, 77, 32), generator=g)
    sigma = float(ms.sigma(torch.tensor(500.0)))
    t = ms.timestep(torch.tensor([sigma, sigma]))
    return unit(x, t, sigma, ctx, None, torch.tensor([0, 0]), torch.tensor(cond_rows), ms)


def test_a1111_control_modes_scale_and_mask_residuals(ckpt, nets):
    bal = _unit_outputs(ckpt, nets[0], "balanced", [True, False])
    soft = _unit_outputs(ckpt, nets[0], "prompt", [True, False])
    ctl = _unit_outputs(ckpt, nets[0], "control", [True, False])
    n = len(bal.down) + 1  # SD1 has 13 (12 skips + middle); the tiny model fewer
    for i, (b, s) in enumerate(zip(bal.down, soft.down)):
        torch.testing.assert_close(s, b * 0.825 ** float(n - 1 - i))  # "My prompt is more important"
    torch.testing.assert_close(soft.mid, bal.mid)  # the middle block keeps its full weight
    for b, c in zip([*bal.down, bal.mid], [*ctl.down, ctl.mid]):
        torch.testing.assert_close(c[0], b[0])  # "ControlNet is more important": the positive row as is …
        assert torch.count_nonzero(c[1]) == 0  # … and nothing on the negative row
    assert control_mode("My prompt is more important") == "prompt" and control_mode(2) == "control"
    with pytest.raises(ValueError, match="unknown control mode"):
        control_mode("Louder")


def test_control_mode_control_leaves_the_unconditional_prediction_alone(ckpt, nets):
    from darkroom.engine.pipeline import model_sampling_for

    ms = model_sampling_for(ckpt)
    pos, neg = pipeline.encode_text(ckpt, PROMPT), pipeline.encode_text(ckpt, NEGATIVE)
    cpos, cneg = apply_control(pos, neg, ControlNet(nets[0], "a", Family.SD1), hint_image(8), mode="control")
    x = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.tensor([3.0])
    plain = UNetDenoiser(ckpt.unet, ms, pos, neg, CFG)._calc(x, sigma, [pos, neg])
    ctl = UNetDenoiser(ckpt.unet, ms, cpos, cneg, CFG)._calc(x, sigma, [cpos, cneg])
    torch.testing.assert_close(ctl[1], plain[1])  # uncond untouched
    assert (ctl[0] - plain[0]).abs().max() > 1e-4  # cond controlled


def test_batch_hints_follow_their_images(ckpt, nets):
    """A two-image hint batch: image i of the latent batch is controlled by hint i (ComfyUI's broadcast rule)."""
    from darkroom.engine.pipeline import model_sampling_for

    ms = model_sampling_for(ckpt)
    model = ControlNet(nets[0], "a", Family.SD1)
    h0, h1 = hint_image(10), hint_image(11)
    pos = pipeline.encode_text(ckpt, PROMPT)
    x = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([2.0])

    def x0(items, latent):
        return UNetDenoiser(ckpt.unet, ms, items, None, 1.0)(latent, sigma)

    both, _ = apply_control(pos, None, model, torch.cat([h0, h1]))
    only0, _ = apply_control(pos, None, model, h0)
    only1, _ = apply_control(pos, None, model, h1)
    batch = x0(both, x.repeat(2, 1, 1, 1))
    torch.testing.assert_close(batch[0:1], x0(only0, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[1:2], x0(only1, x), atol=1e-5, rtol=1e-5)


def test_controlnet_for_another_family_is_refused_by_name(ckpt):
    xl = load_checkpoint(shared_tiny_checkpoint("sdxl-base"))
    net = ControlNet(tiny_controlnet(xl.unet, seed=1), "xl-canny", Family.SDXL)
    pos, neg = apply_control(pipeline.encode_text(ckpt, PROMPT), pipeline.encode_text(ckpt, ""), net, hint_image(0))
    with pytest.raises(ControlModelError, match="xl-canny.*SDXL"):
        pipeline.ksample(ckpt, torch.zeros((1, 4, 4, 4)), pos, neg, seed=1, steps=1, cfg=2.0, sampler="euler",
                         scheduler="normal")


def test_inpainting_unet_gets_latent_channels_only():
    """A 9-channel inpainting UNet with an SD1 ControlNet: the ControlNet sees the 4 latent channels."""
    inp = load_checkpoint(shared_tiny_checkpoint("sd15-inpaint"))
    base = load_checkpoint(shared_tiny_checkpoint("sd15"))
    net = ControlNet(tiny_controlnet(base.unet, seed=2), "a", Family.SD1)
    pos, neg = pipeline.encode_text(inp, PROMPT), pipeline.encode_text(inp, "")
    cpos, cneg = apply_control(pos, neg, net, hint_image(0))
    latent = torch.zeros((1, 4, 4, 4))
    mask = torch.zeros((1, SIZE, SIZE))
    mask[:, :, : SIZE // 2] = 1
    kw = dict(seed=5, steps=2, cfg=3.0, sampler="euler", scheduler="normal", noise_mask=mask)
    a = pipeline.ksample(inp, latent, cpos, cneg, **kw)
    b = pipeline.ksample(inp, latent, pos, neg, **kw)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3
