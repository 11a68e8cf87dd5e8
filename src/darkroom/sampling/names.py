"""A1111 sampler / "Schedule type" labels <-> ComfyUI sampler and scheduler names.

A1111 (1.10) names a sampler by label ("DPM++ 2M"), alias ("k_dpmpp_2m") or an old combined
label ("DPM++ 2M Karras"); "Schedule type" is separate, and "Automatic" means the sampler's own
default (Karras for DPM++ 2M, Exponential for the 2M/3M SDE samplers, the model's uniform
timesteps otherwise). Lookups are case-insensitive, as in A1111; ComfyUI names are accepted too.

Approximations (A1111 computes these differently; the closest ComfyUI equivalent is used):
DDIM / UniPC with Automatic -> ddim_uniform timesteps; LCM with Automatic -> sgm_uniform;
"Beta" (A1111 spaces sigmas linearly, ComfyUI indexes the table) -> beta; "Polyexponential"
(rho 1 by default) -> exponential; "Uniform" and "Normal" both -> normal (same sigmas).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import SAMPLER_NAMES, SAMPLERS
from .schedules import SCHEDULER_NAMES


@dataclass(frozen=True)
class A1111Sampler:
    """One A1111 sampler entry and the ComfyUI sampler it maps to."""

    label: str
    sampler: str  # ComfyUI name
    aliases: tuple[str, ...] = ()
    #: ComfyUI scheduler that A1111's "Automatic" resolves to for this sampler.
    automatic: str = "normal"
    #: True when A1111 writes that Automatic choice into infotext ("Schedule type: Karras").
    writes_automatic: bool = False


#: A1111 1.10 samplers (UI order), plus LCM and Forge's DDPM.
A1111_SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler("DPM++ 2M", "dpmpp_2m", ("k_dpmpp_2m",), "karras", True),
    A1111Sampler("DPM++ SDE", "dpmpp_sde", ("k_dpmpp_sde",), "karras", True),
    A1111Sampler("DPM++ 2M SDE", "dpmpp_2m_sde", ("k_dpmpp_2m_sde",), "exponential", True),
    A1111Sampler("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", ("k_dpmpp_2m_sde_heun",), "exponential", True),
    A1111Sampler("DPM++ 2S a", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), "karras", True),
    A1111Sampler("DPM++ 3M SDE", "dpmpp_3m_sde", ("k_dpmpp_3m_sde",), "exponential", True),
    A1111Sampler("Euler a", "euler_ancestral", ("k_euler_a", "k_euler_ancestral")),
    A1111Sampler("Euler", "euler", ("k_euler",)),
    A1111Sampler("LMS", "lms", ("k_lms",)),
    A1111Sampler("Heun", "heun", ("k_heun",)),
    A1111Sampler("DPM2", "dpm_2", ("k_dpm_2",), "karras", True),
    A1111Sampler("DPM2 a", "dpm_2_ancestral", ("k_dpm_2_a",), "karras", True),
    A1111Sampler("DDIM", "ddim", (), "ddim_uniform"),
    A1111Sampler("UniPC", "uni_pc", ("unipc",), "ddim_uniform"),
    A1111Sampler("LCM", "lcm", ("k_lcm",), "sgm_uniform", True),
    A1111Sampler("DDPM", "ddpm", ()),
)

#: Old A1111 aliases that name a sampler together with a schedule.
_COMBINED_ALIASES: dict[str, tuple[str, str]] = {
    "k_lms_ka": ("lms", "karras"),
    "k_dpm_2_ka": ("dpm_2", "karras"),
    "k_dpm_2_a_ka": ("dpm_2_ancestral", "karras"),
    "k_dpmpp_2s_a_ka": ("dpmpp_2s_ancestral", "karras"),
    "k_dpmpp_2m_ka": ("dpmpp_2m", "karras"),
    "k_dpmpp_sde_ka": ("dpmpp_sde", "karras"),
    "k_dpmpp_2m_sde_ka": ("dpmpp_2m_sde", "karras"),
    "k_dpmpp_2m_sde_heun_ka": ("dpmpp_2m_sde_heun", "karras"),
    "k_dpmpp_2m_sde_heun_exp": ("dpmpp_2m_sde_heun", "exponential"),
    "k_dpmpp_3m_sde_ka": ("dpmpp_3m_sde", "karras"),
    "k_dpmpp_3m_sde_exp": ("dpmpp_3m_sde", "exponential"),
}


@dataclass(frozen=True)
class A1111Schedule:
    """One A1111 "Schedule type" and the ComfyUI scheduler it maps to (None: Automatic)."""

    label: str
    name: str
    scheduler: str | None
    aliases: tuple[str, ...] = ()


#: A1111 1.10 schedule types darkroom can honour (Align Your Steps is not among them).
A1111_SCHEDULES: tuple[A1111Schedule, ...] = (
    A1111Schedule("Automatic", "automatic", None),
    A1111Schedule("Uniform", "uniform", "normal"),
    A1111Schedule("Karras", "karras", "karras"),
    A1111Schedule("Exponential", "exponential", "exponential"),
    A1111Schedule("Polyexponential", "polyexponential", "exponential"),
    A1111Schedule("SGM Uniform", "sgm_uniform", "sgm_uniform", ("SGMUniform",)),
    A1111Schedule("KL Optimal", "kl_optimal", "kl_optimal"),
    A1111Schedule("Simple", "simple", "simple"),
    A1111Schedule("Normal", "normal", "normal"),
    A1111Schedule("DDIM", "ddim", "ddim_uniform"),
    A1111Schedule("Beta", "beta", "beta"),
)

#: ComfyUI scheduler -> the A1111 label written to infotext.
_SCHEDULE_LABEL: dict[str, str] = {
    "normal": "Normal",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "simple": "Simple",
    "ddim_uniform": "DDIM",
    "beta": "Beta",
}


def _build_sampler_lookup() -> dict[str, A1111Sampler]:
    table: dict[str, A1111Sampler] = {}
    for entry in A1111_SAMPLERS:
        for key in (entry.label, *entry.aliases):
            table[key.lower()] = entry
    return table


def _build_schedule_lookup() -> dict[str, A1111Schedule]:
    table: dict[str, A1111Schedule] = {}
    for entry in A1111_SCHEDULES:
        for key in (entry.label, entry.name, *entry.aliases):
            table[key.lower()] = entry
    return table


_SAMPLER_LOOKUP = _build_sampler_lookup()
_SCHEDULE_LOOKUP = _build_schedule_lookup()
_BY_COMFY = {entry.sampler: entry for entry in A1111_SAMPLERS}


def _valid_sampler_names() -> str:
    labels = [e.label for e in A1111_SAMPLERS]
    extra = [n for n in SAMPLER_NAMES if n not in _BY_COMFY]
    return ", ".join(labels + extra)


def _valid_schedule_names() -> str:
    return ", ".join([s.label for s in A1111_SCHEDULES] + [n for n in SCHEDULER_NAMES if n not in _SCHEDULE_LABEL])


def _lookup_sampler(name: str) -> tuple[str, A1111Sampler | None] | None:
    """(ComfyUI sampler, A1111 entry or None) for a label, alias or ComfyUI name; None if unknown."""
    key = name.strip().lower()
    entry = _SAMPLER_LOOKUP.get(key)
    if entry is not None:
        return entry.sampler, entry
    if key in SAMPLERS:
        return key, _BY_COMFY.get(key)
    return None


def parse_a1111_schedule(schedule_label: str) -> str | None:
    """ComfyUI scheduler for an A1111 "Schedule type" label or ComfyUI name; None for Automatic."""
    key = schedule_label.strip().lower()
    entry = _SCHEDULE_LOOKUP.get(key)
    if entry is not None:
        return entry.scheduler
    if key in SCHEDULER_NAMES:
        return key
    raise ValueError(f"unknown schedule type {schedule_label!r}; valid schedule types: {_valid_schedule_names()}")


def parse_a1111_sampler(sampler_label: str, schedule_label: str | None = None) -> tuple[str, str]:
    """(ComfyUI sampler, ComfyUI scheduler) for an A1111 sampler label and optional "Schedule type".

    A schedule suffix in the sampler label ("DPM++ 2M Karras") wins over schedule_label, as in A1111.
    """
    if not isinstance(sampler_label, str) or not sampler_label.strip():
        raise ValueError(f"sampler label must be a non-empty string, got {sampler_label!r}; valid samplers: {_valid_sampler_names()}")
    key = sampler_label.strip().lower()
    if key in _COMBINED_ALIASES:
        return _COMBINED_ALIASES[key]
    found = _lookup_sampler(key)
    scheduler: str | None = None
    if found is None:
        for sched in A1111_SCHEDULES[1:]:
            for option in (sched.label, sched.name, *sched.aliases):
                suffix = " " + option.lower()
                if key.endswith(suffix):
                    found = _lookup_sampler(key[: -len(suffix)])
                    if found is not None:
                        scheduler = sched.scheduler
                        break
            if found is not None:
                break
    if found is None:
        raise ValueError(f"unknown sampler {sampler_label!r}; valid samplers: {_valid_sampler_names()}")
    sampler, entry = found
    if scheduler is None and schedule_label is not None:
        scheduler = parse_a1111_schedule(schedule_label)
    if scheduler is None:
        scheduler = entry.automatic if entry is not None else "normal"
    return sampler, scheduler


def a1111_labels(sampler: str, scheduler: str) -> tuple[str, str | None]:
    """(sampler label, "Schedule type" label or None) to write in A1111 infotext.

    None means A1111 would not write a schedule (Automatic that resolves to its implicit default).
    Samplers / schedulers without an A1111 label keep their ComfyUI name, which parses back.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLER_NAMES)}")
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid schedulers: {', '.join(SCHEDULER_NAMES)}")
    entry = _BY_COMFY.get(sampler)
    label = entry.label if entry is not None else sampler
    automatic = entry.automatic if entry is not None else "normal"
    writes = entry.writes_automatic if entry is not None else False
    if scheduler == automatic and not writes:
        return label, None
    return label, _SCHEDULE_LABEL.get(scheduler, scheduler)
