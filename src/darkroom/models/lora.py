"""LoRA: merge several kohya/A1111, LyCORIS or diffusers LoRAs into a loaded checkpoint's weights, and undo it.

Patches are data (`LoraFile.patches`: per-module weight patches: LoRA/LoCon/DoRA `LowRankPatch`, LyCORIS
`LoHaPatch`, `LoKrPatch`, `DiffPatch`). `LoraPatcher` merges them in place, e.g. for a LoRA
W' = W + Σ mult·(alpha/rank)·(up @ down), computed in float32 from a backup of the original weight (and bias, for
patches that change it) and cast back; `restore()` copies the backups back bit for bit. Nothing is monkey-patched;
the modules' forward is unchanged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import torch

from .lora_file import (
    LoraError,
    LoraFile,
    LoraFormatError,
    LoraMismatchError,
    LowRankPatch,
    TargetKey,
    WeightPatch,
    load_lora_file,
    lora_from_state_dict,
)
from .lora_keys import text_encoder_lora_names, unet_lora_names, unwrap
from .lora_lycoris import DiffPatch, LoHaPatch, LoKrPatch

__all__ = [
    "ApplyReport",
    "DiffPatch",
    "LoHaPatch",
    "LoKrPatch",
    "LoraError",
    "LoraFile",
    "LoraFormatError",
    "LoraMatch",
    "LoraMismatchError",
    "LoraPatcher",
    "LoraWeight",
    "LowRankPatch",
    "TargetKey",
    "WeightPatch",
    "load_lora_file",
    "lora_from_state_dict",
]

log = logging.getLogger(__name__)

#: How many unmatched names a warning or error lists.
_SHOW = 5


class LoraWeight(NamedTuple):
    """A LoRA with A1111's two multipliers, as in `<lora:name:te:unet>` (`<lora:name:w>` means te = unet = w)."""

    lora: LoraFile
    te: float = 1.0
    unet: float = 1.0


@dataclass
class LoraMatch:
    """How one LoraFile maps onto one model: the patched slots and what did not fit."""

    name: str
    #: (slot, target key in the file, is_text_encoder); a slot is "unet:<path>" or "te<i>:<path>".
    #: Holds names only, so the cache never keeps a LoRA's tensors alive.
    targets: list[tuple[str, TargetKey, bool]]
    #: target name as written in the file ("lora_unet_…") → why it was not used.
    unmatched: dict[str, str]

    @property
    def total(self) -> int:
        return len(self.targets) + len(self.unmatched)


@dataclass
class ApplyReport:
    """What `LoraPatcher.apply` did (cheap to keep; returned again when the same set is requested)."""

    loras: list[tuple[str, float, float]] = field(default_factory=list)
    #: LoRA name → number of its modules patched into this model.
    matched: dict[str, int] = field(default_factory=dict)
    #: LoRA name → file target names that did not fit (with reasons).
    unmatched: dict[str, dict[str, str]] = field(default_factory=dict)
    #: number of model weights currently differing from the checkpoint.
    patched_weights: int = 0
    #: False when the call found the requested set already applied and did nothing.
    changed: bool = True


#: Suffix of a patcher slot naming a module's bias instead of its weight.
_BIAS = "@bias"


def _file_name(component: str, name: str) -> str:
    return f"lora_{component}_{name}"


def _patches_weight(patch: WeightPatch) -> bool:
    """False only for bias-only patches (a LyCORIS `diff_b`/`b_norm` without a weight part)."""
    return bool(getattr(patch, "patches_weight", True))


class LoraPatcher:
    """Applies a set of LoRAs to a UNet and its text encoders by merging weights in place; `restore()` undoes it.

    `apply([(lora, te_weight, unet_weight), …])` makes the model's weights equal to the checkpoint plus exactly that
    set: weights touched by a previous set but not by this one are restored, the others are recomputed from the
    original (never stacked on a previous merge, so there is no drift). Requesting the set already applied is free.
    Backups hold only the touched weights, on `backup_device` (CPU by default, to spare GPU memory; pass None to keep
    them on each weight's own device). Deltas are computed in float32 on the weight's device and cast to its dtype.

    Thread-safety: `apply`/`restore` take an internal lock, so concurrent calls cannot corrupt the backups, but a
    forward pass running *while* another thread applies would see half-patched weights. Call both from the one worker
    that owns the model (darkroom runs one GPU worker per device), e.g. once before each generation.
    If the model is moved to another device between calls that is fine; changing its dtype while LoRAs are applied
    is not (call `restore()` first).
    """

    def __init__(self, unet: torch.nn.Module | None, text_encoders: Sequence[torch.nn.Module] = (),
                 *, te_slots: dict[str, int] | None = None, backup_device: torch.device | str | None = "cpu") -> None:
        self.unet = unwrap(unet) if unet is not None else None
        self.text_encoders = [unwrap(t) for t in text_encoders]
        if te_slots is None:
            te_slots = {"te": 0, "te1": 0, "te2": 1} if len(self.text_encoders) > 1 else {"te": 0, "te1": 0}
        self.te_slots = {k: v for k, v in te_slots.items() if v < len(self.text_encoders)}
        self.backup_device = None if backup_device is None else torch.device(backup_device)
        self._lock = threading.RLock()
        self._names: dict[str, dict[str, str]] | None = None  # component → {lora name → module path}
        self._modules: dict[str, torch.nn.Module] = {}  # slot → module owning the weight
        self._matches: dict[str, LoraMatch] = {}  # fingerprint → match (bounded cache of names)
        self._backups: dict[str, torch.Tensor] = {}  # slot → original weight
        self._spec: tuple | None = None
        self._report = ApplyReport(changed=False)

    @classmethod
    def for_checkpoint(cls, checkpoint: Any, **kwargs: Any) -> "LoraPatcher":
        """A patcher over a `darkroom.models.bundle.Checkpoint` (SDXL refiner: `lora_te2_` → its only encoder)."""
        kind = getattr(checkpoint, "kind", None)
        family = getattr(getattr(kind, "family", None), "value", None)
        if family == "sdxl_refiner" and "te_slots" not in kwargs:
            kwargs["te_slots"] = {"te2": 0}
        return cls(checkpoint.unet, list(checkpoint.text_encoders), **kwargs)

    # -- mapping -------------------------------------------------------------------------------------------------

    def _name_tables(self) -> dict[str, dict[str, str]]:
        if self._names is None:
            tables: dict[str, dict[str, str]] = {}
            if self.unet is not None:
                tables["unet"] = unet_lora_names(self.unet)
            te_tables = [text_encoder_lora_names(t) for t in self.text_encoders]
            for comp, i in self.te_slots.items():
                tables[comp] = te_tables[i]
            self._names = tables
        return self._names

    def _slot(self, comp: str, path: str) -> str:
        owner = "unet" if comp == "unet" else f"te{self.te_slots[comp]}"
        slot = f"{owner}:{path}"
        if slot not in self._modules:
            root = self.unet if comp == "unet" else self.text_encoders[self.te_slots[comp]]
            self._modules[slot] = root.get_submodule(path)
        return slot

    def match(self, lora: LoraFile) -> LoraMatch:
        """Map a LoraFile onto this model (cached per file): which module each patch lands on, and what is left over."""
        with self._lock:
            hit = self._matches.get(lora.fingerprint)
            if hit is not None:
                self._check_match(lora, hit, warn=False)
                return hit
            tables = self._name_tables()
            targets: list[tuple[str, TargetKey, bool]] = []
            unmatched: dict[str, str] = {}
            for (comp, name), patch in lora.patches.items():
                table = tables.get(comp)
                if table is None:
                    unmatched[_file_name(comp, name)] = f"this model has no {comp} component"
                    continue
                path = table.get(name)
                if path is None:
                    unmatched[_file_name(comp, name)] = "no such module in this model"
                    continue
                slot = self._slot(comp, path)
                module = self._modules[slot]
                shape = module.weight.shape
                if _patches_weight(patch) and not patch.fits(shape):
                    unmatched[_file_name(comp, name)] = f"shape mismatch with model weight {tuple(shape)}"
                    continue
                if getattr(patch, "patches_bias", False):
                    bias = getattr(module, "bias", None)
                    if not isinstance(bias, torch.nn.Parameter):
                        unmatched[_file_name(comp, name)] = "patches a bias but the model module has none"
                        continue
                    if not patch.fits_bias(bias.shape):
                        unmatched[_file_name(comp, name)] = f"shape mismatch with model bias {tuple(bias.shape)}"
                        continue
                targets.append((slot, (comp, name), comp != "unet"))
            m = LoraMatch(lora.name, targets, unmatched)
            if len(self._matches) >= 64:
                self._matches.pop(next(iter(self._matches)))
            self._matches[lora.fingerprint] = m
            self._check_match(lora, m, warn=True)
            return m

    def _check_match(self, lora: LoraFile, m: LoraMatch, warn: bool) -> None:
        """Raise if nothing fits (every time), warn listing a few if part does not (first time only)."""
        if not m.unmatched:
            return
        sample = "; ".join(f"{k} ({v})" for k, v in list(m.unmatched.items())[:_SHOW])
        more = f" and {len(m.unmatched) - _SHOW} more" if len(m.unmatched) > _SHOW else ""
        if not m.targets:
            base = lora.base_model
            hint = f" It looks like a LoRA for {base.upper()}; is the right checkpoint loaded?" if base else ""
            raise LoraMismatchError(f"LoRA '{lora.name}' does not fit this model: none of its {m.total} modules "
                                    f"matched, e.g. {sample}{more}.{hint}")
        if warn:
            log.warning("LoRA '%s': %d of %d modules do not fit this model and are ignored: %s%s",
                        lora.name, len(m.unmatched), m.total, sample, more)

    # -- patching ------------------------------------------------------------------------------------------------

    @staticmethod
    def _normalise(loras: Iterable[LoraWeight | tuple | LoraFile]) -> list[LoraWeight]:
        out: list[LoraWeight] = []
        for item in loras:
            if isinstance(item, LoraFile):
                item = LoraWeight(item)
            elif not isinstance(item, LoraWeight):
                if not isinstance(item, tuple) or not item or not isinstance(item[0], LoraFile) or len(item) > 3:
                    raise TypeError(f"expected (LoraFile, te_weight, unet_weight), got {item!r}")
                item = LoraWeight(*item)
            out.append(LoraWeight(item.lora, float(item.te), float(item.unet)))
        return out

    def apply(self, loras: Iterable[LoraWeight | tuple | LoraFile]) -> ApplyReport:
        """Make the model weights equal to the checkpoint plus exactly these LoRAs (an empty list restores)."""
        items = self._normalise(loras)
        spec = tuple((w.lora.fingerprint, w.te, w.unet) for w in items)
        with self._lock:
            if spec == self._spec:
                self._report.changed = False
                return self._report
            matches = [self.match(w.lora) for w in items]  # may raise before anything is touched
            plan: dict[str, list[tuple[WeightPatch, float]]] = {}
            for w, m in zip(items, matches):
                for slot, key, is_te in m.targets:
                    mult = w.te if is_te else w.unet
                    if mult != 0.0:
                        patch = w.lora.patches[key]
                        if _patches_weight(patch):
                            plan.setdefault(slot, []).append((patch, mult))
                        if getattr(patch, "patches_bias", False):
                            plan.setdefault(slot + _BIAS, []).append((patch, mult))
            try:
                for slot in [s for s in self._backups if s not in plan]:
                    self._restore_slot(slot)
                for slot, patches in plan.items():
                    self._patch_slot(slot, patches)
            except BaseException:
                self._restore_all()
                raise
            self._spec = spec
            self._report = ApplyReport(
                loras=[(w.lora.name, w.te, w.unet) for w in items],
                matched={m.name: len(m.targets) for m in matches},
                unmatched={m.name: dict(m.unmatched) for m in matches if m.unmatched},
                patched_weights=len(self._backups),
            )
            return self._report

    def restore(self) -> None:
        """Put back the original weights of every patched module, bit-identical."""
        with self._lock:
            self._restore_all()

    @property
    def applied(self) -> list[tuple[str, float, float]]:
        """(name, te, unet) of the LoRAs currently merged (empty when the model is clean)."""
        return list(self._report.loras) if self._spec else []

    @property
    def patched_slots(self) -> list[str]:
        """Slots ("unet:<path>", "te<i>:<path>"; "…@bias" for a bias) whose tensors differ from the checkpoint."""
        return list(self._backups)

    def _param(self, slot: str) -> torch.nn.Parameter:
        """The tensor a slot names: the module's weight, or its bias for a "…@bias" slot."""
        if slot.endswith(_BIAS):
            return self._modules[slot[: -len(_BIAS)]].bias
        return self._modules[slot].weight

    def _restore_all(self) -> None:
        for slot in list(self._backups):
            self._restore_slot(slot)
        self._spec = None
        self._report = ApplyReport(changed=True)

    def _restore_slot(self, slot: str) -> None:
        weight = self._param(slot)
        backup = self._backups.pop(slot)
        if backup.dtype != weight.dtype:
            log.warning("LoRA restore: %s changed dtype %s → %s while patched; restoring with a cast",
                        slot, backup.dtype, weight.dtype)
        with torch.no_grad():
            weight.copy_(backup)

    def _patch_slot(self, slot: str, patches: list[tuple[WeightPatch, float]]) -> None:
        weight = self._param(slot)
        is_bias = slot.endswith(_BIAS)
        backup = self._backups.get(slot)
        if backup is None:
            device = weight.device if self.backup_device is None else self.backup_device
            backup = weight.detach().to(device=device, copy=True)
            self._backups[slot] = backup
        w = backup.to(device=weight.device, dtype=torch.float32, copy=True)
        for patch, mult in patches:
            w = patch.apply_bias(w, mult) if is_bias else patch.apply(w, mult)  # type: ignore[attr-defined]
        with torch.no_grad():
            weight.copy_(w.to(weight.dtype))

