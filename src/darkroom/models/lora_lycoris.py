"""LyCORIS weight patches beyond plain low rank: LoHa (Hadamard), LoKr (Kronecker), full diffs and norm diffs.

Each patch is data with the `WeightPatch` interface (`fits(shape)`, `apply(weight_f32, multiplier)`), merged by
`LoraPatcher` exactly as a LoRA is. Arithmetic follows LyCORIS (KohakuBlueleaf) as A1111 and ComfyUI apply it:

- LoHa (Hyeon-Woo 2022, FedPara): ΔW = (alpha/r)·(w1a @ w1b) ⊙ (w2a @ w2b), r = rows of w1b; with Tucker factors
  each product is `Σ t[a,b,h,w]·wa[a,o]·wb[b,i]` (wa stored (r, out), wb (r, in)).
- LoKr (Yeh 2023, LyCORIS): ΔW = scale·(w1 ⊗ w2) with each factor stored whole (`lokr_w1`) or as a low-rank product
  (`lokr_w1_a @ lokr_w1_b`, `lokr_w2` Tucker with `lokr_t2`); scale = alpha/r only when a factor is decomposed
  (r from the decomposed w2, else w1), otherwise 1 whatever alpha says.
- Full diff (`.diff`, `.diff_b`) and norm (`.w_norm`, `.b_norm`): ΔW and Δbias stored whole, no scale.

A `dora_scale` on LoHa/LoKr is DoRA weight decomposition, merged as for LoRA (`lora_file._dora`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .lora_file import LoraFormatError, _dora, _float

#: Tensor names (after the module name and a dot) of the LyCORIS kinds parsed here → kind.
LYCORIS_PARTS: dict[str, str] = {
    **{f"hada_{n}": "loha" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{n}": "lokr" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    "diff": "diff", "diff_b": "diff",
    "w_norm": "norm", "b_norm": "norm",
}


def _f32(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """CP/Tucker rebuild: out[o,i,h,w] = Σ_a,b t[a,b,h,w]·wa[a,o]·wb[b,i]; t (r, r, kh, kw), wa (r, out), wb (r, in)."""
    return torch.einsum("abhw,ao,bi->oihw", t, wa, wb)


def _scale(alpha: float | None, rank: int | None) -> float:
    return 1.0 if alpha is None or rank is None else float(alpha) / rank


def _fits_delta(weight_shape: torch.Size, out: int, numel: int, spatial: tuple[int, ...] | None) -> bool:
    """Whether a ΔW with `out` rows, `numel` elements and (if known) kernel `spatial` reshapes onto this weight."""
    shape = torch.Size(weight_shape)
    if len(shape) < 2 or int(shape[0]) != out or int(shape.numel()) != numel:
        return False
    return spatial is None or (len(shape) == 4 and tuple(shape[2:]) == spatial)


@dataclass(eq=False)
class LoHaPatch:
    """LyCORIS LoHa: ΔW = (alpha/r)·(w1a @ w1b) ⊙ (w2a @ w2b), optionally Tucker (`hada_t1/t2`) and DoRA."""

    w1a: torch.Tensor  # (out, r) ; Tucker: (r, out)
    w1b: torch.Tensor  # (r, in·kh·kw) ; Tucker: (r, in)
    w2a: torch.Tensor
    w2b: torch.Tensor
    t1: torch.Tensor | None = None  # (r, r, kh, kw)
    t2: torch.Tensor | None = None
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    kind: str = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank (1 without alpha)."""
        return _scale(self.alpha, self.rank)

    @property
    def out_features(self) -> int:
        return int(self.w1a.shape[1] if self.t1 is not None else self.w1a.shape[0])

    def _numel(self) -> int:
        if self.t1 is not None:
            return self.out_features * int(self.w1b.shape[1]) * int(self.t1[0, 0].numel())
        return self.out_features * int(self.w1b[0].numel())

    def fits(self, weight_shape: torch.Size) -> bool:
        spatial = tuple(int(s) for s in self.t1.shape[2:]) if self.t1 is not None else None
        return _fits_delta(weight_shape, self.out_features, self._numel(), spatial)

    def delta(self, weight_shape: torch.Size, device: torch.device | str) -> torch.Tensor:
        """The unscaled ΔW in float32, reshaped to `weight_shape`."""
        if self.t1 is None or self.t2 is None:
            m1 = _f32(self.w1a, device).flatten(1) @ _f32(self.w1b, device).flatten(1)  # (out, in·kh·kw)
            m2 = _f32(self.w2a, device).flatten(1) @ _f32(self.w2b, device).flatten(1)
        else:
            m1 = _tucker(_f32(self.t1, device), _f32(self.w1a, device), _f32(self.w1b, device))  # (out, in, kh, kw)
            m2 = _tucker(_f32(self.t2, device), _f32(self.w2a, device), _f32(self.w2b, device))
        return (m1 * m2).reshape(weight_shape)

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        d = self.delta(weight.shape, weight.device)
        if self.dora_scale is None:
            return weight + d * (multiplier * self.scale)
        return _dora(weight, d * self.scale, self.dora_scale, multiplier)


@dataclass(eq=False)
class LoKrPatch:
    """LyCORIS LoKr: ΔW = scale·kron(w1, w2); each factor whole or low-rank (w2 optionally Tucker), DoRA optional."""

    w1: torch.Tensor | None = None  # (a, b)
    w1a: torch.Tensor | None = None  # (a, r)
    w1b: torch.Tensor | None = None  # (r, b)
    w2: torch.Tensor | None = None  # (c, d) or (c, d, kh, kw)
    w2a: torch.Tensor | None = None  # (c, r) ; Tucker: (r, c)
    w2b: torch.Tensor | None = None  # (r, d·kh·kw) ; Tucker: (r, d)
    t2: torch.Tensor | None = None  # (r, r, kh, kw)
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    kind: str = "lokr"

    @property
    def rank(self) -> int | None:
        """Rank of the decomposed factor that sets the scale (w2's, else w1's); None when both are whole."""
        if self.w2 is None and self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1 is None and self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank when a factor is decomposed, else 1 (LyCORIS stores alpha = dim for whole factors)."""
        return _scale(self.alpha, self.rank)

    def _w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return int(self.w1.shape[0]), int(self.w1[0].numel())
        return int(self.w1a.shape[0]), int(self.w1b[0].numel())  # type: ignore[union-attr]

    def _w2_shape(self) -> tuple[int, ...]:
        if self.w2 is not None:
            return tuple(int(s) for s in self.w2.shape)
        if self.t2 is not None:
            return (int(self.w2a.shape[1]), int(self.w2b.shape[1]), *(int(s) for s in self.t2.shape[2:]))  # type: ignore[union-attr]
        return int(self.w2a.shape[0]), int(self.w2b[0].numel())  # type: ignore[union-attr]

    @property
    def out_features(self) -> int:
        return self._w1_shape()[0] * self._w2_shape()[0]

    def fits(self, weight_shape: torch.Size) -> bool:
        (a, b), w2 = self._w1_shape(), self._w2_shape()
        numel = a * b * math.prod(w2)
        spatial = w2[2:] if len(w2) == 4 and w2[2:] != (1, 1) else None
        return _fits_delta(weight_shape, self.out_features, numel, spatial)

    def factors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(w1 (a, b), w2 (c, d[, kh, kw])) rebuilt in float32, unscaled."""
        w1 = _f32(self.w1, device) if self.w1 is not None else \
            _f32(self.w1a, device).flatten(1) @ _f32(self.w1b, device).flatten(1)  # type: ignore[arg-type]
        if self.w2 is not None:
            w2 = _f32(self.w2, device)
        elif self.t2 is not None:
            w2 = _tucker(_f32(self.t2, device), _f32(self.w2a, device), _f32(self.w2b, device))  # type: ignore[arg-type]
        else:
            w2 = _f32(self.w2a, device).flatten(1) @ _f32(self.w2b, device).flatten(1)  # type: ignore[arg-type]
        return w1.flatten(1), w2

    def delta(self, weight_shape: torch.Size, device: torch.device | str) -> torch.Tensor:
        """The unscaled ΔW = kron(w1, w2) in float32, reshaped to `weight_shape`.

        kron of the 2-D factors (w2 flattened to (c, d·kh·kw)) equals the 4-D kron of (a, b, 1, 1) ⊗ (c, d, kh, kw)
        after the reshape, so conv factors need no special case.
        """
        w1, w2 = self.factors(device)
        return torch.kron(w1, w2.flatten(1)).reshape(weight_shape)  # (a·c, b·d·kh·kw)

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        d = self.delta(weight.shape, weight.device)
        if self.dora_scale is None:
            return weight + d * (multiplier * self.scale)
        return _dora(weight, d * self.scale, self.dora_scale, multiplier)


@dataclass(eq=False)
class DiffPatch:
    """A whole stored difference: W' = W + m·diff and b' = b + m·diff_b (LyCORIS `full` and norm modules)."""

    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    kind: str = "diff"  # "diff" (.diff/.diff_b) | "norm" (.w_norm/.b_norm)

    @property
    def patches_weight(self) -> bool:
        return self.diff is not None

    @property
    def patches_bias(self) -> bool:
        return self.diff_b is not None

    @property
    def out_features(self) -> int | None:
        return None if self.diff is None else int(self.diff.shape[0])

    def fits(self, weight_shape: torch.Size) -> bool:
        if self.diff is None:
            return True
        shape = torch.Size(weight_shape)
        return int(self.diff.shape[0]) == int(shape[0]) and self.diff.numel() == shape.numel()

    def fits_bias(self, bias_shape: torch.Size) -> bool:
        return self.diff_b is None or self.diff_b.numel() == torch.Size(bias_shape).numel()

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        if self.diff is None:
            return weight
        return weight + _f32(self.diff, weight.device).reshape(weight.shape) * multiplier

    def apply_bias(self, bias: torch.Tensor, multiplier: float) -> torch.Tensor:
        if self.diff_b is None:
            return bias
        return bias + _f32(self.diff_b, bias.device).reshape(bias.shape) * multiplier


# -- building patches from a module's named tensors ---------------------------------------------------------------


def _need(parts: Mapping[str, torch.Tensor], names: tuple[str, ...], base: str, label: str, what: str) -> None:
    missing = [n for n in names if n not in parts]
    if missing:
        raise LoraFormatError(f"{what}: {base} is an incomplete {label} module: missing "
                              f"{', '.join('.' + m for m in missing)}")


def _alpha(parts: Mapping[str, torch.Tensor], base: str, what: str) -> float | None:
    alpha = parts.get("alpha")
    if alpha is None:
        return None
    if alpha.numel() != 1:
        raise LoraFormatError(f"{what}: {base}.alpha has {alpha.numel()} values, expected one")
    return float(alpha.float().item())


def _shape_error(base: str, label: str, detail: str, what: str) -> LoraFormatError:
    return LoraFormatError(f"{what}: {base} {label} tensors do not fit together: {detail}")


def _tucker_check(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, names: str, base: str, label: str,
                  what: str) -> None:
    r = t.shape[0] if t.dim() == 4 else -1
    if t.dim() != 4 or t.shape[1] != r or wa.dim() != 2 or wb.dim() != 2 or wa.shape[0] != r or wb.shape[0] != r:
        raise _shape_error(base, label, f"{names} {tuple(t.shape)}/{tuple(wa.shape)}/{tuple(wb.shape)}; expected "
                           "t (r, r, kh, kw), a (r, out), b (r, in)", what)


def _pair_check(a: torch.Tensor, b: torch.Tensor, names: str, base: str, label: str, what: str) -> None:
    if a.dim() not in (2, 4) or b.dim() not in (2, 4) or a.shape[1] != b.shape[0] or a[0, 0].numel() != 1:
        raise _shape_error(base, label, f"{names} {tuple(a.shape)} @ {tuple(b.shape)}", what)


def make_loha(parts: Mapping[str, torch.Tensor], base: str, what: str) -> LoHaPatch:
    """Validate `hada_*` tensors (+ alpha, dora_scale) of one module into a LoHaPatch."""
    _need(parts, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), base, "LoHa", what)
    w1a, w1b, w2a, w2b = (_float(parts[f"hada_{n}"], f"{base}.hada_{n}", what) for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
    t1, t2 = parts.get("hada_t1"), parts.get("hada_t2")
    if (t1 is None) != (t2 is None):
        raise LoraFormatError(f"{what}: {base} LoHa has only one of .hada_t1/.hada_t2 (Tucker needs both)")
    if t1 is not None and t2 is not None:
        t1, t2 = _float(t1, base + ".hada_t1", what), _float(t2, base + ".hada_t2", what)
        _tucker_check(t1, w1a, w1b, "hada_t1/w1_a/w1_b", base, "LoHa", what)
        _tucker_check(t2, w2a, w2b, "hada_t2/w2_a/w2_b", base, "LoHa", what)
        s1 = (w1a.shape[1], w1b.shape[1], *t1.shape[2:])
        s2 = (w2a.shape[1], w2b.shape[1], *t2.shape[2:])
    else:
        _pair_check(w1a, w1b, "hada_w1_a/w1_b", base, "LoHa", what)
        _pair_check(w2a, w2b, "hada_w2_a/w2_b", base, "LoHa", what)
        s1, s2 = (w1a.shape[0], w1b[0].numel()), (w2a.shape[0], w2b[0].numel())
    if tuple(s1) != tuple(s2):
        raise _shape_error(base, "LoHa", f"the two Hadamard factors have shapes {tuple(s1)} and {tuple(s2)}", what)
    dora = parts.get("dora_scale")
    return LoHaPatch(w1a, w1b, w2a, w2b, t1, t2, alpha=_alpha(parts, base, what),
                     dora_scale=None if dora is None else _float(dora, base + ".dora_scale", what))


def make_lokr(parts: Mapping[str, torch.Tensor], base: str, what: str) -> LoKrPatch:
    """Validate `lokr_*` tensors (+ alpha, dora_scale) of one module into a LoKrPatch."""
    get = {n: _float(parts[f"lokr_{n}"], f"{base}.lokr_{n}", what)
           for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2") if f"lokr_{n}" in parts}
    if "w1" not in get:
        _need(parts, ("lokr_w1_a", "lokr_w1_b"), base, "LoKr (no .lokr_w1)", what)
        _pair_check(get["w1_a"], get["w1_b"], "lokr_w1_a/w1_b", base, "LoKr", what)
    elif get["w1"].dim() not in (2, 4) or get["w1"][0, 0].numel() != 1:
        raise _shape_error(base, "LoKr", f"lokr_w1 {tuple(get['w1'].shape)} is not a 2-D factor", what)
    if "w2" not in get:
        _need(parts, ("lokr_w2_a", "lokr_w2_b"), base, "LoKr (no .lokr_w2)", what)
        if "t2" in get:
            _tucker_check(get["t2"], get["w2_a"], get["w2_b"], "lokr_t2/w2_a/w2_b", base, "LoKr", what)
        else:
            _pair_check(get["w2_a"], get["w2_b"], "lokr_w2_a/w2_b", base, "LoKr", what)
    elif get["w2"].dim() not in (2, 4):
        raise _shape_error(base, "LoKr", f"lokr_w2 {tuple(get['w2'].shape)} is neither 2-D nor 4-D", what)
    dora = parts.get("dora_scale")
    return LoKrPatch(w1=get.get("w1"), w1a=get.get("w1_a"), w1b=get.get("w1_b"), w2=get.get("w2"),
                     w2a=get.get("w2_a"), w2b=get.get("w2_b"), t2=get.get("t2"), alpha=_alpha(parts, base, what),
                     dora_scale=None if dora is None else _float(dora, base + ".dora_scale", what))


def make_diff(parts: Mapping[str, torch.Tensor], base: str, what: str, kind: str) -> DiffPatch:
    """`.diff`/`.diff_b` (kind "diff") or `.w_norm`/`.b_norm` (kind "norm") of one module into a DiffPatch."""
    w_key, b_key = ("diff", "diff_b") if kind == "diff" else ("w_norm", "b_norm")
    w, b = parts.get(w_key), parts.get(b_key)
    if w is None and b is None:
        raise LoraFormatError(f"{what}: {base} has neither .{w_key} nor .{b_key}")
    return DiffPatch(diff=None if w is None else _float(w, f"{base}.{w_key}", what),
                     diff_b=None if b is None else _float(b, f"{base}.{b_key}", what), kind=kind)


def make_lycoris_patch(kind: str, parts: Mapping[str, torch.Tensor], base: str, what: str):
    """One module's patch of a LyCORIS `kind` ("loha", "lokr", "diff", "norm") from its named tensors."""
    if kind == "loha":
        return make_loha(parts, base, what)
    if kind == "lokr":
        return make_lokr(parts, base, what)
    return make_diff(parts, base, what, kind)
