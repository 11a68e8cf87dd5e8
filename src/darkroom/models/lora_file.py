"""LoRA files: kohya/A1111/LyCORIS and diffusers/PEFT `.safetensors` parsed into per-module weight patches (data)."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

import torch

log = logging.getLogger(__name__)

#: Model parts a patch can target. "te" is the single text encoder of SD1/SD2 (`lora_te_`), "te1"/"te2" are
#: SDXL's CLIP-L and OpenCLIP-bigG (`lora_te1_`/`lora_te2_`).
COMPONENTS = ("unet", "te", "te1", "te2")

#: A patch target: (component, module path with dots replaced by underscores, e.g.
#: ("unet", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")).
TargetKey = tuple[str, str]

#: kohya/A1111/LyCORIS name prefixes → component. `lycoris_` is LyCORIS's own prefix for a UNet named by its
#: diffusers module paths (SimpleTuner exports; ComfyUI maps it the same way).
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
                   ("lycoris_", "unet"))

#: Per-module tensor names of the plain LoRA / LoCon kind (kohya naming).
_LORA_PARTS = {"lora_up.weight": "up", "lora_down.weight": "down", "lora_mid.weight": "mid", "alpha": "alpha",
               "dora_scale": "dora_scale"}

#: First tensor-name prefix of LyCORIS kinds we recognise but cannot apply yet → human label. (LoHa, LoKr, full
#: diff and norm modules are parsed by `lora_lycoris`.)
_LYCORIS_KINDS = {
    "oft_": "OFT",
    "a1.weight": "GLoRA",
    "on_input": "LyCORIS IA3",
}

#: diffusers/PEFT down/up spellings: suffix of the down tensor → suffix of the up tensor.
_DIFFUSERS_PAIRS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_A.default.weight", ".lora_B.default.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
)

_DIFFUSERS_COMPONENTS = (("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te"))


class LoraError(ValueError):
    """Base class for LoRA problems that the user can fix (bad file, wrong model)."""


class LoraFormatError(LoraError):
    """The file is not a LoRA darkroom can read (wrong container, broken tensors, no usable keys)."""


class LoraMismatchError(LoraError):
    """A LoRA does not fit the loaded model (none of its modules exist there)."""


@runtime_checkable
class WeightPatch(Protocol):
    """One module's patch, as data. New kinds (LoHa, LoKr, …) implement this and nothing else changes."""

    kind: str

    def fits(self, weight_shape: torch.Size) -> bool:
        """True if this patch can be applied to a weight of this shape."""

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        """The patched weight: `weight` (float32, on the compute device) with this patch at `multiplier`."""

    # Optional, for kinds that also change the module's bias (LyCORIS `diff_b`, `b_norm`): `patches_bias: bool`,
    # `fits_bias(bias_shape) -> bool`, `apply_bias(bias_f32, multiplier) -> Tensor`; and `patches_weight: bool`
    # (False for a bias-only patch, so the weight is left alone). `LoraPatcher` looks these up with getattr.


@dataclass(eq=False)
class LowRankPatch:
    """A LoRA/LoCon patch: ΔW = (alpha/rank)·up @ [mid ×] down, optionally DoRA-normalised (Hu 2021; Liu 2024).

    Shapes: linear up (out, r), down (r, in); conv up (out, r, 1, 1), down (r, in, kh, kw);
    Tucker conv (LoCon `lora_mid`): down (r, in, 1, 1), mid (r, r, kh, kw).
    """

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None = None
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    kind: str = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank (1 when the file stores no alpha, as kohya and diffusers do)."""
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def delta_numel(self) -> int:
        """Number of elements of the full ΔW."""
        if self.mid is not None:
            return self.out_features * int(self.down.shape[1]) * int(self.mid[0, 0].numel())
        return self.out_features * int(self.down[0].numel())

    def fits(self, weight_shape: torch.Size) -> bool:
        return len(weight_shape) >= 2 and int(weight_shape[0]) == self.out_features and \
            self.delta_numel() == int(torch.Size(weight_shape).numel())

    def delta(self, weight_shape: torch.Size, device: torch.device | str) -> torch.Tensor:
        """The unscaled ΔW = up @ [mid ×] down in float32, reshaped to `weight_shape`."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)  # (out, r)
        down = self.down.to(device=device, dtype=torch.float32)
        if self.mid is None:
            d = up @ down.flatten(1)  # (out, in·kh·kw)
        else:
            mid = self.mid.to(device=device, dtype=torch.float32)  # (r, r, kh, kw)
            # Tucker: ΔW[o,i,h,w] = Σ_a,b up[o,a] · mid[a,b,h,w] · down[b,i]
            d = torch.einsum("oa,abhw,bi->oihw", up, mid, down.flatten(1))
        return d.reshape(weight_shape)

    def apply(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        d = self.delta(weight.shape, weight.device)
        if self.dora_scale is None:
            return weight + d * (multiplier * self.scale)
        return _dora(weight, d * self.scale, self.dora_scale, multiplier)

    def to(self, device: torch.device | str) -> "LowRankPatch":
        """A copy with tensors on `device` (e.g. to keep a hot LoRA on the GPU)."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LowRankPatch(mv(self.up), mv(self.down), mv(self.mid), self.alpha, mv(self.dora_scale), self.kind)


def _dora(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor, multiplier: float) -> torch.Tensor:
    """DoRA merge: W + m·(magnitude · (W+ΔW)/‖W+ΔW‖ − W), the norm taken along the axis `dora_scale` lies on.

    LyCORIS/kohya store `dora_scale` as (1, in, …) (norm over the output axis, per input column) or (out, 1, …);
    PEFT's `lora_magnitude_vector` is (out,).
    """
    merged = weight + delta
    out = weight.shape[0]
    mag = dora_scale.to(device=weight.device, dtype=torch.float32)
    on_output = mag.shape[0] == out and mag.numel() == out
    if on_output:
        norm = merged.reshape(out, -1).norm(dim=1).reshape(out, *[1] * (weight.dim() - 1))
        mag = mag.reshape(norm.shape)
    else:
        n_in = weight.shape[1]
        norm = merged.transpose(0, 1).reshape(n_in, -1).norm(dim=1).reshape(1, n_in, *[1] * (weight.dim() - 2))
        mag = mag.reshape(norm.shape)
    dora = merged * (mag / (norm + torch.finfo(torch.float32).eps))
    return weight + (dora - weight) * multiplier


@dataclass(eq=False)
class LoraFile:
    """A parsed LoRA: patches keyed by target, plus what was skipped and why."""

    name: str
    patches: dict[TargetKey, WeightPatch]
    format: str  # "kohya" | "diffusers"
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: file keys that were not turned into patches → reason (e.g. "LyCORIS IA3 is not supported yet").
    skipped: dict[str, str] = field(default_factory=dict)
    #: identity used by LoraPatcher to make repeated `apply` calls free (path+size+mtime, or a random id).
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = f"mem:{uuid.uuid4().hex}"  # not id(): ids are reused after garbage collection

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def components(self) -> set[str]:
        """Which model parts this LoRA touches (subset of COMPONENTS)."""
        return {c for c, _ in self.patches}

    @property
    def base_model(self) -> str | None:
        """Guess of the family it was trained for: 'sd1', 'sd2', 'sdxl' or None (kohya metadata, then keys)."""
        version = str(self.metadata.get("ss_base_model_version", ""))
        if version.startswith("sdxl"):
            return "sdxl"
        if str(self.metadata.get("ss_v2", "")) == "True" or version.startswith("sd_v2"):
            return "sd2"
        comps = self.components
        if comps & {"te1", "te2"} or any(n.startswith(("input_blocks_", "output_blocks_", "middle_block_"))
                                         for c, n in self.patches if c == "unet"):
            return "sdxl"
        for (c, n), p in self.patches.items():
            out = getattr(p, "out_features", None)
            if c == "te" and out is not None and n.endswith("q_proj"):
                return "sd2" if out == 1024 else "sd1" if out == 768 else None
        return "sd1" if version.startswith("sd_v1") else None

    def summary(self) -> str:
        """One line: name, kinds and counts per component."""
        counts = {c: sum(1 for k in self.patches if k[0] == c) for c in COMPONENTS}
        parts = ", ".join(f"{c} {n}" for c, n in counts.items() if n)
        kinds = sorted({p.kind for p in self.patches.values()})
        return f"{self.name}: {len(self.patches)} modules ({parts}); kinds {'/'.join(kinds)}; format {self.format}"


def load_lora_file(path: str | Path, name: str | None = None) -> LoraFile:
    """Read a LoRA `.safetensors` file (kohya/A1111 or diffusers/PEFT keys) into a LoraFile on the CPU."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"LoRA file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".ckpt", ".pth", ".bin"):
        raise LoraFormatError(
            f"{p.name}: pickle-based {suffix} LoRA files are not loaded, because unpickling can run code; "
            "convert it to .safetensors (e.g. with kohya's tools) from a source you trust")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError for a broken header
        raise LoraFormatError(f"{p.name}: not a readable .safetensors file ({e})") from e
    st = p.stat()
    lora = lora_from_state_dict(tensors, name or p.stem, metadata=metadata, source=p.name)
    lora.path = p
    lora.fingerprint = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return lora


def lora_from_state_dict(state_dict: Mapping[str, torch.Tensor], name: str = "lora",
                         metadata: Mapping[str, str] | None = None, source: str | None = None) -> LoraFile:
    """Parse an in-memory LoRA state dict (kohya or diffusers keys) into a LoraFile."""
    what = source or name
    metadata = dict(metadata or {})
    if not state_dict:
        raise LoraFormatError(f"{what}: the file holds no tensors")
    for k, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise LoraFormatError(f"{what}: entry {k!r} is not a tensor")
    if any(k.startswith(tuple(p for p, _ in _KOHYA_PREFIXES)) for k in state_dict):
        patches, skipped, fmt = *_parse_kohya(state_dict, what), "kohya"
    elif any(k.endswith(tuple(d for d, _ in _DIFFUSERS_PAIRS)) for k in state_dict):
        patches, skipped, fmt = *_parse_diffusers(state_dict, metadata, what), "diffusers"
    else:
        sample = ", ".join(list(state_dict)[:3])
        raise LoraFormatError(f"{what}: no LoRA keys found (expected lora_unet_*/lora_te_* or "
                              f"unet.*.lora_A.weight style keys; the file starts with {sample})")
    if not patches:
        kinds = sorted(set(skipped.values()))
        raise LoraFormatError(f"{what}: no usable LoRA modules; " + ("; ".join(kinds) if kinds else "empty"))
    if skipped:
        kinds = sorted(set(skipped.values()))
        log.warning("LoRA %s: %d tensor(s) ignored: %s", what, len(skipped), "; ".join(kinds))
    return LoraFile(name=name, patches=patches, format=fmt, metadata=metadata, skipped=skipped)


def _float(t: torch.Tensor, key: str, what: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise LoraFormatError(f"{what}: {key} has dtype {t.dtype}, expected a float tensor")
    return t


def _make_patch(parts: dict[str, torch.Tensor], base: str, what: str) -> LowRankPatch:
    """Build and validate one LowRankPatch from its named tensors."""
    if "up" not in parts or "down" not in parts:
        missing = "up" if "up" not in parts else "down"
        raise LoraFormatError(f"{what}: {base} has no {missing} weight (the file is truncated or malformed)")
    up, down = _float(parts["up"], base + " up", what), _float(parts["down"], base + " down", what)
    mid = parts.get("mid")
    if up.dim() not in (2, 4) or down.dim() not in (2, 4):
        raise LoraFormatError(f"{what}: {base} has up {tuple(up.shape)} / down {tuple(down.shape)}; "
                              "expected 2-D (linear) or 4-D (conv) tensors")
    r = down.shape[0]
    if up.shape[1] != r or (up.dim() == 4 and up[0, 0].numel() != 1):
        raise LoraFormatError(f"{what}: {base} up {tuple(up.shape)} does not match down {tuple(down.shape)} "
                              f"(rank {r})")
    if mid is not None:
        mid = _float(mid, base + " mid", what)
        if mid.dim() != 4 or mid.shape[0] != r or mid.shape[1] != r or down[0, 0].numel() != 1:
            raise LoraFormatError(f"{what}: {base} lora_mid {tuple(mid.shape)} does not match "
                                  f"down {tuple(down.shape)} (expected mid (r, r, kh, kw) and a 1×1 down)")
        mid = mid.contiguous()
    alpha = parts.get("alpha")
    alpha_f = None
    if alpha is not None:
        if alpha.numel() != 1:
            raise LoraFormatError(f"{what}: {base}.alpha has {alpha.numel()} values, expected one")
        alpha_f = float(alpha.float().item())
    dora = parts.get("dora_scale")
    if dora is not None:
        dora = _float(dora, base + " dora_scale", what)
    return LowRankPatch(up=up, down=down, mid=mid, alpha=alpha_f, dora_scale=dora)


def _parse_kohya(sd: Mapping[str, torch.Tensor], what: str) -> tuple[dict[TargetKey, WeightPatch], dict[str, str]]:
    """kohya/A1111/LyCORIS layout: `lora_{unet,te,te1,te2}_<module_path_with_underscores>.<part>`.

    Parts are LoRA/LoCon (`lora_up.weight`, `lora_down.weight`, `lora_mid.weight`), LoHa (`hada_*`), LoKr (`lokr_*`),
    full diffs (`diff`, `diff_b`) or norms (`w_norm`, `b_norm`), each with optional `alpha` and `dora_scale`.
    """
    from .lora_lycoris import LYCORIS_PARTS, make_lycoris_patch

    groups: dict[TargetKey, dict[str, torch.Tensor]] = {}
    kinds: dict[TargetKey, set[str]] = {}
    bases: dict[TargetKey, str] = {}
    skipped: dict[str, str] = {}
    unsupported: dict[TargetKey, str] = {}
    for key, t in sd.items():
        base, _, part = key.partition(".")
        comp = next((c for p, c in _KOHYA_PREFIXES if base.startswith(p)), None)
        if comp is None:
            skipped[key] = "not a SD1/SD2/SDXL UNet or text-encoder key"
            continue
        prefix = next(p for p in (p for p, _ in _KOHYA_PREFIXES) if base.startswith(p))
        target = (comp, base[len(prefix):])
        bases[target] = base
        role = _LORA_PARTS.get(part)
        if role is not None:
            groups.setdefault(target, {})[role] = t
            if role in ("up", "down", "mid"):
                kinds.setdefault(target, set()).add("lora")
            continue
        if part in LYCORIS_PARTS:
            groups.setdefault(target, {})[part] = t
            kinds.setdefault(target, set()).add(LYCORIS_PARTS[part])
            continue
        kind = next((label for pre, label in _LYCORIS_KINDS.items() if part.startswith(pre)), None)
        unsupported[target] = f"{kind} is not supported yet" if kind else f"unknown tensor name .{part}"
    patches: dict[TargetKey, WeightPatch] = {}
    for target, parts in groups.items():
        if target in unsupported:
            continue
        found = kinds.get(target, set())
        if not found:
            skipped.update({f"{bases[target]}.{p}": "alpha/scale without LoRA weights" for p in parts})
            continue
        if len(found) > 1:
            raise LoraFormatError(f"{what}: {bases[target]} mixes tensors of several kinds "
                                  f"({', '.join(sorted(found))}); one module can hold only one")
        (kind,) = found
        if kind == "lora":
            patches[target] = _make_patch(parts, bases[target], what)
        else:
            patches[target] = make_lycoris_patch(kind, parts, bases[target], what)
    for target, reason in unsupported.items():
        prefix = bases[target] + "."
        skipped.update({k: reason for k in sd if k.startswith(prefix)})
    return patches, skipped


def _diffusers_module(path: str, old_processor: bool) -> str:
    """Module path from a diffusers key stem; old attention-processor names (`attn1.processor.to_out_lora`) too."""
    if old_processor:
        path = path.replace(".processor.", ".")
        if path.endswith("to_out"):
            path += ".0"
    return path


def _parse_diffusers(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                     what: str) -> tuple[dict[TargetKey, WeightPatch], dict[str, str]]:
    """diffusers/PEFT layout: `unet.<module.path>.lora_A.weight` / `text_encoder[_2].…` (+ optional `.alpha`)."""
    has_te2 = any(k.startswith("text_encoder_2.") for k in sd)
    default_alpha: dict[str, float] = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            meta = json.loads(raw)
            te = "te1" if has_te2 else "te"
            for prefix, comp in (("unet", "unet"), ("text_encoder", te), ("text_encoder_2", "te2")):
                if f"{prefix}.lora_alpha" in meta:
                    default_alpha[comp] = float(meta[f"{prefix}.lora_alpha"])
        except (ValueError, TypeError):
            log.warning("LoRA %s: unreadable lora_adapter_metadata ignored", what)
    used: set[str] = set()
    patches: dict[TargetKey, WeightPatch] = {}
    for key in sd:
        pair = next(((d, u) for d, u in _DIFFUSERS_PAIRS if key.endswith(d)), None)
        if pair is None:
            continue
        stem = key[: -len(pair[0])]
        pre = next(((p, c) for p, c in _DIFFUSERS_COMPONENTS if stem.startswith(p)), None)
        if pre is None:
            continue
        comp = "te1" if pre[1] == "te" and has_te2 else pre[1]
        old_processor = pair[0].startswith("_lora")
        module = _diffusers_module(stem[len(pre[0]):], old_processor)
        parts = {"down": sd[key]}
        up_key = stem + pair[1]
        if up_key in sd:
            parts["up"] = sd[up_key]
            used.add(up_key)
        for extra, role in ((".alpha", "alpha"), (".lora_magnitude_vector", "dora_scale"),
                            (".lora_magnitude_vector.weight", "dora_scale"),
                            (".lora_magnitude_vector.default.weight", "dora_scale")):
            if stem + extra in sd:
                parts[role] = sd[stem + extra]
                used.add(stem + extra)
        if "alpha" not in parts and comp in default_alpha:
            parts["alpha"] = torch.tensor(default_alpha[comp])
        used.add(key)
        patches[(comp, module.replace(".", "_"))] = _make_patch(parts, stem, what)
    skipped = {k: "not a LoRA down/up/alpha tensor" for k in sd if k not in used}
    return patches, skipped
