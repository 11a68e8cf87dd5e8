"""LoRA merge arithmetic on single modules: LoRA, LoCon 1×1/3×3, Tucker `lora_mid`, DoRA, custom patch kinds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darkroom.models.lora import LoraPatcher, LowRankPatch, lora_from_state_dict


class Tiny(torch.nn.Module):
    """Stands in for a UNet: a linear, a 3×3 conv, a 1×1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.proj = torch.nn.Conv2d(4, 4, 1)


def _ints(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).float()


def test_linear_merge_exact_with_two_loras_and_multipliers():
    m = Tiny()
    with torch.no_grad():
        m.lin.weight.copy_(_ints(5, 6, seed=1))
    w0 = m.lin.weight.clone()
    others = {k: v.clone() for k, v in m.state_dict().items() if k != "lin.weight"}
    up_a, down_a = _ints(5, 2, seed=2), _ints(2, 6, seed=3)
    up_b, down_b = _ints(5, 4, seed=4), _ints(4, 6, seed=5)
    a = lora_from_state_dict({"lora_unet_lin.lora_up.weight": up_a, "lora_unet_lin.lora_down.weight": down_a,
                              "lora_unet_lin.alpha": torch.tensor(1.0)}, "a")  # scale 1/2
    b = lora_from_state_dict({"lora_unet_lin.lora_up.weight": up_b, "lora_unet_lin.lora_down.weight": down_b}, "b")
    patcher = LoraPatcher(m)
    patcher.apply([(a, 1.0, 0.5), (b, 1.0, -0.25)])
    # W' = W + Σ mult·(alpha/rank)·(up @ down); every term is exactly representable
    expected = w0 + 0.5 * 0.5 * (up_a @ down_a) - 0.25 * 1.0 * (up_b @ down_b)
    assert torch.equal(m.lin.weight, expected)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in others.items())  # bias, conv, proj untouched
    patcher.restore()
    assert torch.equal(m.lin.weight, w0)


def test_conv3x3_locon_and_tucker_merge_exact():
    m = Tiny()
    with torch.no_grad():
        m.conv.weight.copy_(_ints(4, 3, 3, 3, seed=7))
    w0 = m.conv.weight.clone()
    up, down = _ints(4, 2, 1, 1, seed=8), _ints(2, 3, 3, 3, seed=9)
    t_up, t_down, t_mid = _ints(4, 2, 1, 1, seed=10), _ints(2, 3, 1, 1, seed=11), _ints(2, 2, 3, 3, seed=12)
    locon = lora_from_state_dict({"lora_unet_conv.lora_up.weight": up, "lora_unet_conv.lora_down.weight": down,
                                  "lora_unet_conv.alpha": torch.tensor(4.0)}, "locon")  # scale 2
    tucker = lora_from_state_dict({"lora_unet_conv.lora_up.weight": t_up, "lora_unet_conv.lora_down.weight": t_down,
                                   "lora_unet_conv.lora_mid.weight": t_mid}, "tucker")
    LoraPatcher(m).apply([(locon, 1.0, 1.0), (tucker, 1.0, 0.5)])
    expected = w0.clone()
    for o in range(4):
        for i in range(3):
            for h in range(3):
                for w in range(3):
                    lo = sum(up[o, a, 0, 0] * down[a, i, h, w] for a in range(2))
                    tu = sum(t_up[o, a, 0, 0] * t_mid[a, b, h, w] * t_down[b, i, 0, 0]
                             for a in range(2) for b in range(2))
                    expected[o, i, h, w] += 2.0 * lo + 0.5 * tu
    assert torch.equal(m.conv.weight, expected)


def test_merged_conv_equals_running_the_lora_layers():
    """The reshape convention matches what the LoRA layers compute: conv(x, W') = conv(x, W) + s·up(mid(down(x)))."""
    torch.manual_seed(0)
    m = Tiny()
    x = torch.randn(2, 3, 7, 7)
    base = m.conv(x)
    up, down, mid = torch.randn(4, 2, 1, 1), torch.randn(2, 3, 1, 1), torch.randn(2, 2, 3, 3)
    lf = lora_from_state_dict({"lora_unet_conv.lora_up.weight": up, "lora_unet_conv.lora_down.weight": down,
                               "lora_unet_conv.lora_mid.weight": mid, "lora_unet_conv.alpha": torch.tensor(1.0)})
    LoraPatcher(m).apply([lf])
    h = F.conv2d(F.conv2d(x, down), mid, padding=1)
    torch.testing.assert_close(m.conv(x), base + 0.5 * F.conv2d(h, up), atol=1e-5, rtol=1e-5)
    # plain 3×3 LoCon and a linear-shaped LoRA on a 1×1 conv (proj_in of SD1 vs SD2/SDXL)
    m2 = Tiny()
    base2, y = m2.conv(x), torch.randn(2, 4, 5, 5)
    base_p = m2.proj(y)
    d3 = torch.randn(2, 3, 3, 3)
    lin_up, lin_down = torch.randn(4, 3), torch.randn(3, 4)
    lf2 = lora_from_state_dict({"lora_unet_conv.lora_up.weight": up, "lora_unet_conv.lora_down.weight": d3,
                                "lora_unet_proj.lora_up.weight": lin_up, "lora_unet_proj.lora_down.weight": lin_down})
    LoraPatcher(m2).apply([(lf2, 1.0, 0.3)])
    torch.testing.assert_close(m2.conv(x), base2 + 0.3 * F.conv2d(F.conv2d(x, d3, padding=1), up), atol=1e-5, rtol=1e-5)
    lin_out = torch.einsum("oa,ai,bihw->bohw", lin_up, lin_down, y)
    torch.testing.assert_close(m2.proj(y), base_p + 0.3 * lin_out, atol=1e-5, rtol=1e-5)


def test_dora_matches_reference_formula():
    torch.manual_seed(0)
    m = Tiny()
    w0 = m.lin.weight.detach().clone()
    up, down = torch.randn(5, 2) * 0.1, torch.randn(2, 6) * 0.1
    magnitude = torch.rand(1, 6) + 0.5  # LyCORIS/kohya layout: one value per input column
    lf = lora_from_state_dict({"lora_unet_lin.lora_up.weight": up, "lora_unet_lin.lora_down.weight": down,
                               "lora_unet_lin.alpha": torch.tensor(1.0), "lora_unet_lin.dora_scale": magnitude})
    patcher = LoraPatcher(m)
    for mult in (1.0, 0.6):
        patcher.apply([(lf, 1.0, mult)])
        merged = w0 + 0.5 * (up @ down)
        full = merged * (magnitude / merged.norm(dim=0, keepdim=True))  # column norms of W + ΔW
        torch.testing.assert_close(m.lin.weight, w0 + mult * (full - w0), atol=1e-6, rtol=1e-5)
        if mult == 1.0:  # at full strength the column norms are the stored magnitudes
            torch.testing.assert_close(m.lin.weight.norm(dim=0), magnitude[0], atol=1e-5, rtol=1e-5)
    # PEFT-style magnitude (out,) normalises rows instead
    row_mag = torch.rand(5) + 0.5
    lf_rows = lora_from_state_dict({"unet.lin.lora_A.weight": down, "unet.lin.lora_B.weight": up,
                                    "unet.lin.lora_magnitude_vector": row_mag})
    patcher.apply([lf_rows])
    torch.testing.assert_close(m.lin.weight.norm(dim=1), row_mag, atol=1e-5, rtol=1e-5)
    patcher.restore()
    assert torch.equal(m.lin.weight, w0)


class ScaledDiff:
    """A made-up patch kind (like LyCORIS 'full diff'): the patcher needs only `fits` and `apply`."""

    kind = "diff"

    def __init__(self, diff: torch.Tensor, fail: bool = False) -> None:
        self.diff, self.fail = diff, fail

    def fits(self, shape: torch.Size) -> bool:
        return self.diff.shape == shape

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("boom")
        return weight + multiplier * self.diff.to(weight.device)


def test_custom_patch_kind_and_atomic_failure():
    from darkroom.models.lora import LoraFile

    m = Tiny()
    originals = {k: v.clone() for k, v in m.state_dict().items()}
    ok = LoraFile("ok", {("unet", "lin"): ScaledDiff(torch.ones(5, 6))}, format="test")
    patcher = LoraPatcher(m)
    patcher.apply([(ok, 1.0, 2.0)])
    assert torch.equal(m.lin.weight, originals["lin.weight"] + 2.0)
    bad = LoraFile("bad", {("unet", "conv"): ScaledDiff(torch.ones(4, 3, 3, 3), fail=True),
                           ("unet", "proj"): ScaledDiff(torch.ones(4, 4, 1, 1))}, format="test")
    with pytest.raises(RuntimeError, match="boom"):
        patcher.apply([ok, bad])
    # a failed apply leaves the model clean (not half-patched) and the patcher usable
    assert all(torch.equal(v, originals[k]) for k, v in m.state_dict().items())
    assert patcher.applied == [] and patcher.patched_slots == []
    patcher.apply([ok])
    assert torch.equal(m.lin.weight, originals["lin.weight"] + 1.0)


def test_low_rank_patch_validation_helpers():
    p = LowRankPatch(up=torch.zeros(8, 4), down=torch.zeros(4, 16), alpha=2.0)
    assert p.rank == 4 and p.scale == 0.5
    assert p.fits(torch.Size((8, 16))) and p.fits(torch.Size((8, 16, 1, 1))) and not p.fits(torch.Size((16, 8)))
