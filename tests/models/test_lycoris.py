"""LyCORIS merge arithmetic on single modules: LoHa (plain, Tucker), LoKr (every factor mode and its scale rule),
DoRA on both, full/norm diffs with biases, and clear errors for malformed modules. Expected weights are written
out index by index from the published formulas (integers, so float32 is exact where no division happens)."""

from __future__ import annotations

import itertools

import pytest
import torch

from darkroom.models.lora import (
    DiffPatch,
    LoHaPatch,
    LoKrPatch,
    LoraFormatError,
    LoraMismatchError,
    LoraPatcher,
    lora_from_state_dict,
)


class Tiny(torch.nn.Module):
    """Stands in for a UNet: a linear, two convs, a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)
        self.conv = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.proj = torch.nn.Conv2d(4, 4, 1, bias=False)
        self.norm = torch.nn.GroupNorm(2, 4)


def _ints(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).float()


def _model() -> Tiny:
    m = Tiny()
    with torch.no_grad():
        for i, p in enumerate(m.parameters()):
            p.copy_(_ints(*p.shape, seed=100 + i))
    return m


def _sd(module: str, **tensors: torch.Tensor | float) -> dict[str, torch.Tensor]:
    return {f"lora_unet_{module}.{k}": (v if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
            for k, v in tensors.items()}


def _rows(w: torch.Tensor) -> int:
    return int(w.shape[0])


# -- LoHa ------------------------------------------------------------------------------------------------------------


def test_loha_linear_merge_exact():
    m = _model()
    w0 = m.lin.weight.clone()
    w1a, w1b, w2a, w2b = _ints(6, 2, seed=1), _ints(2, 6, seed=2), _ints(6, 2, seed=3), _ints(2, 6, seed=4)
    lf = lora_from_state_dict(_sd("lin", hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, alpha=1.0))
    patch = lf.patches[("unet", "lin")]
    assert isinstance(patch, LoHaPatch) and patch.rank == 2 and patch.scale == 0.5
    LoraPatcher(m).apply([(lf, 1.0, 0.5)])
    expected = w0.clone()
    for o, i in itertools.product(range(6), range(6)):
        p1 = sum(w1a[o, a] * w1b[a, i] for a in range(2))
        p2 = sum(w2a[o, b] * w2b[b, i] for b in range(2))
        expected[o, i] += 0.5 * 0.5 * p1 * p2  # multiplier · alpha/rank · (w1a w1b ⊙ w2a w2b)
    assert torch.equal(m.lin.weight, expected)


def test_loha_conv_plain_and_tucker_merge_exact():
    m = _model()
    w0 = m.conv.weight.clone()  # (4, 6, 3, 3)
    # plain: the b factors hold in·kh·kw columns
    p = dict(hada_w1_a=_ints(4, 2, seed=5), hada_w1_b=_ints(2, 54, seed=6), hada_w2_a=_ints(4, 2, seed=7),
             hada_w2_b=_ints(2, 54, seed=8))
    # Tucker: a (r, out), b (r, in), t (r, r, kh, kw)
    t = dict(hada_w1_a=_ints(2, 4, seed=9), hada_w1_b=_ints(2, 6, seed=10), hada_t1=_ints(2, 2, 3, 3, seed=11),
             hada_w2_a=_ints(2, 4, seed=12), hada_w2_b=_ints(2, 6, seed=13), hada_t2=_ints(2, 2, 3, 3, seed=14))
    plain = lora_from_state_dict(_sd("conv", **p, alpha=4.0), "plain")  # scale 2
    tucker = lora_from_state_dict(_sd("conv", **t), "tucker")  # no alpha: scale 1
    LoraPatcher(m).apply([(plain, 1.0, 1.0), (tucker, 1.0, -1.0)])
    expected = w0.clone()
    for o, i, h, w in itertools.product(range(4), range(6), range(3), range(3)):
        col = i * 9 + h * 3 + w
        d_plain = sum(p["hada_w1_a"][o, a] * p["hada_w1_b"][a, col] for a in range(2)) * \
            sum(p["hada_w2_a"][o, a] * p["hada_w2_b"][a, col] for a in range(2))

        def rebuild(ta: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
            return sum(ta[a, b, h, w] * wa[a, o] * wb[b, i] for a in range(2) for b in range(2))

        d_tucker = rebuild(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * \
            rebuild(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
        expected[o, i, h, w] += 2.0 * d_plain - d_tucker
    assert torch.equal(m.conv.weight, expected)


# -- LoKr -------------------------------------------------------------------------------------------------------------


def _kron_ref(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """ΔW[i·c + p, j·d + q, …] = w1[i, j] · w2[p, q, …], written out."""
    a, b = w1.shape
    c, d = w2.shape[:2]
    out = torch.zeros(a * c, b * d, *w2.shape[2:])
    for i, j, p, q in itertools.product(range(a), range(b), range(c), range(d)):
        out[i * c + p, j * d + q] = w1[i, j] * w2[p, q]
    return out


@pytest.mark.parametrize("mode", ["whole+whole", "whole+lowrank", "lowrank+whole", "lowrank+lowrank", "no alpha"])
def test_lokr_linear_scale_rule(mode):
    """scale = alpha/r only when a factor is decomposed (r of w2 if it is, else of w1); whole factors: 1."""
    m = _model()
    w0 = m.lin.weight.clone()  # (6, 6) = kron((2, 3), (3, 2))
    w1, w1a, w1b = _ints(2, 3, seed=20), _ints(2, 1, seed=21), _ints(1, 3, seed=22)
    w2, w2a, w2b = _ints(3, 2, seed=23), _ints(3, 2, seed=24), _ints(2, 2, seed=25)
    first, second = mode.split("+") if "+" in mode else ("whole", "lowrank")
    tensors: dict[str, torch.Tensor | float] = {}
    tensors.update(dict(lokr_w1=w1) if first == "whole" else dict(lokr_w1_a=w1a, lokr_w1_b=w1b))
    tensors.update(dict(lokr_w2=w2) if second == "whole" else dict(lokr_w2_a=w2a, lokr_w2_b=w2b))
    if mode != "no alpha":
        tensors["alpha"] = 6.0
    lf = lora_from_state_dict(_sd("lin", **tensors))
    patch = lf.patches[("unet", "lin")]
    assert isinstance(patch, LoKrPatch)
    scale = {"whole+whole": 1.0, "whole+lowrank": 6.0 / 2, "lowrank+whole": 6.0 / 1, "lowrank+lowrank": 6.0 / 2,
             "no alpha": 1.0}[mode]
    assert patch.scale == scale
    LoraPatcher(m).apply([(lf, 1.0, 0.5)])
    f1 = w1 if first == "whole" else w1a @ w1b
    f2 = w2 if second == "whole" else w2a @ w2b
    assert torch.equal(m.lin.weight, w0 + 0.5 * scale * _kron_ref(f1, f2))


@pytest.mark.parametrize("w2_mode", ["whole 4-D", "tucker", "flat low rank"])
def test_lokr_conv_merge_exact(w2_mode):
    m = _model()
    w0 = m.conv.weight.clone()  # (4, 6, 3, 3): w1 (2, 2) ⊗ w2 (2, 3, 3, 3)
    w1 = _ints(2, 2, seed=30)
    if w2_mode == "whole 4-D":
        w2 = _ints(2, 3, 3, 3, seed=31)
        tensors = dict(lokr_w1=w1, lokr_w2=w2)
    elif w2_mode == "tucker":
        t2, w2a, w2b = _ints(2, 2, 3, 3, seed=32), _ints(2, 2, seed=33), _ints(2, 3, seed=34)  # a (r, c), b (r, d)
        w2 = torch.zeros(2, 3, 3, 3)
        for p, q, h, w in itertools.product(range(2), range(3), range(3), range(3)):
            w2[p, q, h, w] = sum(t2[a, b, h, w] * w2a[a, p] * w2b[b, q] for a in range(2) for b in range(2))
        tensors = dict(lokr_w1=w1, lokr_w2_a=w2a, lokr_w2_b=w2b, lokr_t2=t2)
    else:
        w2a, w2b = _ints(2, 2, seed=35), _ints(2, 27, seed=36)  # b holds d·kh·kw columns
        w2 = (w2a @ w2b).reshape(2, 3, 3, 3)
        tensors = dict(lokr_w1=w1, lokr_w2_a=w2a, lokr_w2_b=w2b)
    lf = lora_from_state_dict(_sd("conv", **tensors, alpha=4.0))
    scale = 1.0 if w2_mode == "whole 4-D" else 2.0
    assert lf.patches[("unet", "conv")].scale == scale
    LoraPatcher(m).apply([(lf, 1.0, 1.0)])
    assert torch.equal(m.conv.weight, w0 + scale * _kron_ref(w1, w2))


def test_merged_lokr_conv_equals_running_the_kronecker_layer():
    """The kron/reshape convention is the one a LoKr layer computes: conv(x, W') = conv(x, W) + conv(x, w1 ⊗ w2)."""
    torch.manual_seed(0)
    m = Tiny()
    x = torch.randn(1, 6, 5, 5)
    base = m.conv(x)
    w1, w2 = torch.randn(2, 2), torch.randn(2, 3, 3, 3)
    LoraPatcher(m).apply([lora_from_state_dict(_sd("conv", lokr_w1=w1, lokr_w2=w2))])
    # output channel block i, input channel block j: y_i += Σ_j w1[i, j] · conv(x_j, w2)
    extra = torch.zeros_like(base)
    for i, j in itertools.product(range(2), range(2)):
        extra[:, i * 2:(i + 1) * 2] += w1[i, j] * torch.nn.functional.conv2d(x[:, j * 3:(j + 1) * 3], w2, padding=1)
    torch.testing.assert_close(m.conv(x), base + extra, atol=1e-5, rtol=1e-5)


# -- DoRA on LyCORIS kinds --------------------------------------------------------------------------------------------


def _dora_ref(w0: torch.Tensor, delta: torch.Tensor, mag: torch.Tensor, mult: float, on_output: bool) -> torch.Tensor:
    """W + m·(mag · (W+Δ)/‖W+Δ‖ − W), the norm per input column (mag (1, in)) or per output row (mag (out, 1))."""
    merged = (w0 + delta).double()
    out = merged.clone()
    if on_output:
        for o in range(merged.shape[0]):
            out[o] = merged[o] * (mag.reshape(-1)[o].double() / merged[o].norm())
    else:
        for i in range(merged.shape[1]):
            out[:, i] = merged[:, i] * (mag.reshape(-1)[i].double() / merged[:, i].norm())
    return (w0.double() + mult * (out - w0.double())).float()


@pytest.mark.parametrize("on_output", [False, True])
def test_dora_on_loha_and_lokr(on_output):
    m = _model()
    w0 = m.lin.weight.clone()
    g = torch.Generator().manual_seed(3)
    mag = torch.rand(6, 1, generator=g) + 0.5 if on_output else torch.rand(1, 6, generator=g) + 0.5
    w1a, w1b, w2a, w2b = _ints(6, 2, seed=40), _ints(2, 6, seed=41), _ints(6, 2, seed=42), _ints(2, 6, seed=43)
    loha = lora_from_state_dict(_sd("lin", hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, alpha=1.0,
                                    dora_scale=mag), "loha")
    LoraPatcher(m).apply([(loha, 1.0, 0.7)])
    torch.testing.assert_close(m.lin.weight, _dora_ref(w0, 0.5 * (w1a @ w1b) * (w2a @ w2b), mag, 0.7, on_output),
                               atol=1e-5, rtol=1e-5)
    m = _model()
    k1, k2a, k2b = _ints(2, 3, seed=44), _ints(3, 1, seed=45), _ints(1, 2, seed=46)
    lokr = lora_from_state_dict(_sd("lin", lokr_w1=k1, lokr_w2_a=k2a, lokr_w2_b=k2b, alpha=0.5, dora_scale=mag),
                                "lokr")
    LoraPatcher(m).apply([(lokr, 1.0, 1.0)])
    torch.testing.assert_close(m.lin.weight, _dora_ref(w0, 0.5 * _kron_ref(k1, k2a @ k2b), mag, 1.0, on_output),
                               atol=1e-5, rtol=1e-5)


# -- full diff and norm, with biases ----------------------------------------------------------------------------------


def test_full_diff_and_norm_patch_weights_and_biases_then_restore():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    diff, diff_b = _ints(6, 6, seed=50), _ints(6, seed=51)
    w_norm, b_norm = _ints(4, seed=52), _ints(4, seed=53)
    sd = {**_sd("lin", diff=diff, diff_b=diff_b), **_sd("norm", w_norm=w_norm, b_norm=b_norm),
          **_sd("conv", diff_b=_ints(4, seed=54))}  # bias only
    lf = lora_from_state_dict(sd, "full")
    assert {k: p.kind for k, p in lf.patches.items()} == {("unet", "lin"): "diff", ("unet", "norm"): "norm",
                                                            ("unet", "conv"): "diff"}
    patcher = LoraPatcher(m)
    report = patcher.apply([(lf, 1.0, 0.5)])
    assert report.matched == {"full": 3} and report.patched_weights == 5
    assert torch.equal(m.lin.weight, before["lin.weight"] + 0.5 * diff)
    assert torch.equal(m.lin.bias, before["lin.bias"] + 0.5 * diff_b)
    assert torch.equal(m.norm.weight, before["norm.weight"] + 0.5 * w_norm)
    assert torch.equal(m.norm.bias, before["norm.bias"] + 0.5 * b_norm)
    assert torch.equal(m.conv.bias, before["conv.bias"] + 0.5 * _ints(4, seed=54))
    assert torch.equal(m.conv.weight, before["conv.weight"])  # a bias-only patch leaves the weight alone …
    assert "unet:conv" not in patcher.patched_slots and "unet:conv@bias" in patcher.patched_slots  # … unbacked
    patcher.apply([(lf, 1.0, -1.0)])  # recomputed from the originals, not stacked
    assert torch.equal(m.lin.bias, before["lin.bias"] - diff_b)
    patcher.restore()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_bias_patch_on_module_without_bias_is_unmatched():
    m = _model()
    lf = lora_from_state_dict({**_sd("proj", diff=_ints(4, 4, 1, 1, seed=60), diff_b=_ints(4, seed=61)),
                               **_sd("lin", diff=_ints(6, 6, seed=62))}, "x")
    report = LoraPatcher(m).apply([lf])
    assert report.unmatched == {"x": {"lora_unet_proj": "patches a bias but the model module has none"}}
    with pytest.raises(LoraMismatchError, match="none of its 1 modules"):
        LoraPatcher(_model()).apply([lora_from_state_dict(_sd("proj", diff_b=_ints(4, seed=61)))])


def test_shape_mismatch_lands_in_unmatched():
    m = _model()
    good = _sd("lin", hada_w1_a=_ints(6, 1, seed=1), hada_w1_b=_ints(1, 6, seed=2), hada_w2_a=_ints(6, 1, seed=3),
               hada_w2_b=_ints(1, 6, seed=4))
    bad = _sd("proj", lokr_w1=_ints(2, 2, seed=5), lokr_w2=_ints(2, 3, seed=6))  # 4×6 ≠ proj 4×4
    report = LoraPatcher(m).apply([lora_from_state_dict({**good, **bad}, "x")])
    assert list(report.unmatched["x"]) == ["lora_unet_proj"] and "shape mismatch" in report.unmatched["x"]["lora_unet_proj"]
    assert report.matched == {"x": 1}


# -- parsing ----------------------------------------------------------------------------------------------------------


LOHA = dict(hada_w1_a=torch.randn(6, 2), hada_w1_b=torch.randn(2, 6), hada_w2_a=torch.randn(6, 2),
            hada_w2_b=torch.randn(2, 6))


@pytest.mark.parametrize("tensors,message", [
    ({k: v for k, v in LOHA.items() if k != "hada_w2_b"}, r"incomplete LoHa module: missing \.hada_w2_b"),
    ({**LOHA, "hada_t1": torch.randn(2, 2, 3, 3)}, "only one of .hada_t1/.hada_t2"),
    ({**LOHA, "hada_w2_b": torch.randn(2, 5)}, "the two Hadamard factors have shapes"),
    ({**LOHA, "hada_w1_b": torch.randn(3, 6)}, r"hada_w1_a/w1_b \(6, 2\) @ \(3, 6\)"),
    ({**LOHA, "lora_up.weight": torch.randn(6, 2), "lora_down.weight": torch.randn(2, 6)}, "mixes tensors"),
    ({"lokr_w1": torch.randn(2, 2)}, r"missing \.lokr_w2_a, \.lokr_w2_b"),
    ({"lokr_w1": torch.randn(2, 2), "lokr_w2_a": torch.randn(2, 2), "lokr_w2_b": torch.randn(2, 3),
      "lokr_t2": torch.randn(3, 3, 3, 3)}, "expected t \\(r, r, kh, kw\\), a \\(r, out\\), b \\(r, in\\)"),
    ({"lokr_w1": torch.ones(2, 2, dtype=torch.int64), "lokr_w2": torch.randn(3, 3)}, "expected a float tensor"),
    ({**LOHA, "alpha": torch.ones(2)}, "alpha has 2 values"),
])
def test_malformed_lycoris_modules_are_clear_errors(tensors, message):
    with pytest.raises(LoraFormatError, match=message):
        lora_from_state_dict(_sd("lin", **tensors), "bad")


def test_lycoris_prefix_and_patch_metadata():
    """`lycoris_<diffusers path>` (SimpleTuner) names the UNet; TE q_proj width tells SD1 from SD2."""
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    sd = {"lycoris_lin.lokr_w1": torch.randn(2, 3), "lycoris_lin.lokr_w2": torch.randn(3, 2),
          f"{te}.hada_w1_a": torch.randn(768, 1), f"{te}.hada_w1_b": torch.randn(1, 768),
          f"{te}.hada_w2_a": torch.randn(768, 1), f"{te}.hada_w2_b": torch.randn(1, 768)}
    lf = lora_from_state_dict(sd, "mix")
    assert set(lf.patches) == {("unet", "lin"), ("te", te[len("lora_te_"):])}
    assert lf.base_model == "sd1" and lf.patches[("te", te[len("lora_te_"):])].out_features == 768
    assert "kinds loha/lokr" in lf.summary()
    patch = lf.patches[("unet", "lin")]
    assert patch.fits(torch.Size([6, 6])) and patch.out_features == 6
    assert not patch.fits(torch.Size([6, 5])) and not patch.fits(torch.Size([3, 12]))
    tucker = LoHaPatch(torch.zeros(1, 4), torch.zeros(1, 6), torch.zeros(1, 4), torch.zeros(1, 6),
                       torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    assert tucker.fits(torch.Size([4, 6, 3, 3])) and not tucker.fits(torch.Size([4, 54]))  # kernel must match
    assert DiffPatch(diff_b=torch.zeros(4)).fits(torch.Size([9, 9]))  # bias-only: any weight
