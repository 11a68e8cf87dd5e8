"""Conditioning edit nodes (no text encoder needed) and how KSampler resolves their model-dependent settings."""

from __future__ import annotations

import torch

from darkroom.engine.denoiser import CondItem
from darkroom.graph import NodeContext
from darkroom.models.bundle import BetaSchedule
from darkroom.models.family import Family
from darkroom.nodes.conditioning import (
    ConditioningAverage,
    ConditioningCombine,
    ConditioningSetArea,
    ConditioningSetMask,
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
)
from darkroom.nodes.sampling import latent_preview, resolve_conditioning
from darkroom.sampling import ModelSampling


def ctx() -> NodeContext:
    return NodeContext(node_id="1", prompt_id="p", class_type="Test")


def item(value: float, tokens: int = 77, pooled: bool = True) -> CondItem:
    return CondItem(cross_attn=torch.full((1, tokens, 4), value), pooled=torch.full((1, 2), value) if pooled else None)


def test_combine_and_zero_out_leave_inputs_alone():
    a, b = [item(1.0)], [item(2.0), item(3.0)]
    (both,) = ConditioningCombine().execute(ctx(), a, b)
    assert [float(i.cross_attn[0, 0, 0]) for i in both] == [1.0, 2.0, 3.0] and len(a) == 1
    (zero,) = ConditioningZeroOut().execute(ctx(), b)
    assert all(float(i.cross_attn.abs().sum()) == 0 and float(i.pooled.abs().sum()) == 0 for i in zero)
    assert float(b[0].cross_attn[0, 0, 0]) == 2.0


def test_average_blends_tokens_and_pooled_and_pads_with_zeros():
    (out,) = ConditioningAverage().execute(ctx(), [item(1.0, 154)], [item(3.0, 77)], 0.25)
    (avg,) = out
    assert avg.cross_attn.shape == (1, 154, 4)
    torch.testing.assert_close(avg.cross_attn[0, 0], torch.full((4,), 0.25 * 1.0 + 0.75 * 3.0))
    torch.testing.assert_close(avg.cross_attn[0, 100], torch.full((4,), 0.25))  # source padded with zeros
    torch.testing.assert_close(avg.pooled, torch.full((1, 2), 2.5))
    (out,) = ConditioningAverage().execute(ctx(), [item(1.0, pooled=False)], [item(3.0)], 0.5)
    torch.testing.assert_close(out[0].pooled, torch.full((1, 2), 3.0))  # missing pooled: blended toward from's


def test_area_mask_and_timestep_range_are_recorded():
    (area,) = ConditioningSetArea().execute(ctx(), [item(1.0)], 64, 128, 32, 8, 1.5)
    assert area[0].area == (16, 8, 1, 4) and area[0].strength == 1.5
    mask = torch.zeros(32, 32)
    (masked,) = ConditioningSetMask().execute(ctx(), area, mask, 0.7, "mask bounds")
    assert masked[0].mask.shape == (1, 32, 32) and masked[0].mask_strength == 0.7
    assert masked[0].extra["set_area_to_bounds"] is True and area[0].mask is None
    (timed,) = ConditioningSetTimestepRange().execute(ctx(), masked, 0.2, 0.6)
    assert timed[0].extra == {"set_area_to_bounds": True, "start_percent": 0.2, "end_percent": 0.6}
    assert "start_percent" not in masked[0].extra


def test_resolve_turns_percents_into_sigmas_and_mask_bounds_into_areas():
    ms = ModelSampling(BetaSchedule())
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:24, 32:48] = 1.0
    items = [
        item(1.0).with_(extra={"start_percent": 0.0, "end_percent": 0.5}),
        item(2.0).with_(mask=mask, extra={"set_area_to_bounds": True}),
        item(3.0).with_(mask=torch.zeros(1, 64, 64), extra={"set_area_to_bounds": True}),
        item(4.0).with_(mask=mask, extra={"set_area_to_bounds": False}),
    ]
    timed, bounded, empty, plain = resolve_conditioning(items, (8, 8), ms)
    assert timed.sigma_start > float(ms.sigma_max) and timed.sigma_end == ms.percent_to_sigma(0.5)
    assert 0 < timed.sigma_end < float(ms.sigma_max)
    assert bounded.mask.shape == (1, 8, 8) and bounded.area == (2, 2, 1, 4)
    assert empty.area == (8, 8, 0, 0)
    assert plain.area is None and plain.mask.shape == (1, 8, 8)
    assert items[1].area is None  # the originals are unchanged


def test_latent_preview_is_a_small_rgb_image():
    x0 = torch.zeros(2, 4, 6, 10)
    img = latent_preview(x0, Family.SD1)
    assert img.size == (10, 6) and img.getpixel((0, 0)) == (127, 127, 127)
    xl = latent_preview(x0, Family.SDXL)
    assert xl.getpixel((0, 0)) != img.getpixel((0, 0))  # SDXL's factors carry a bias
    assert latent_preview(torch.zeros(1, 16, 4, 4), Family.SD1) is None
