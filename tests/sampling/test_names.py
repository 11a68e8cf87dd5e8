"""A1111 sampler / schedule labels <-> ComfyUI names."""

from __future__ import annotations

import pytest

from darkroom.sampling import (
    A1111_SAMPLERS,
    COMFY_SAMPLER_NAMES,
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULER_NAMES,
    a1111_labels,
    parse_a1111_sampler,
    parse_a1111_schedule,
)


@pytest.mark.parametrize(
    ("label", "schedule", "expected"),
    [
        ("Euler a", None, ("euler_ancestral", "normal")),
        ("Euler", "Automatic", ("euler", "normal")),
        ("DPM++ 2M", None, ("dpmpp_2m", "karras")),
        ("DPM++ 2M", "Exponential", ("dpmpp_2m", "exponential")),
        ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
        ("DPM++ SDE Karras", None, ("dpmpp_sde", "karras")),
        ("DPM++ 2M SDE", None, ("dpmpp_2m_sde", "exponential")),
        ("DPM++ 2M SDE Heun Exponential", None, ("dpmpp_2m_sde_heun", "exponential")),
        ("DPM++ 3M SDE", "Karras", ("dpmpp_3m_sde", "karras")),
        ("DPM2 a", None, ("dpm_2_ancestral", "karras")),
        ("LMS", "Uniform", ("lms", "normal")),
        ("DDIM", None, ("ddim", "ddim_uniform")),
        ("DDIM", "Normal", ("ddim", "normal")),
        ("UniPC", None, ("uni_pc", "ddim_uniform")),
        ("LCM", None, ("lcm", "sgm_uniform")),
        ("Euler", "SGM Uniform", ("euler", "sgm_uniform")),
        ("Euler", "SGMUniform", ("euler", "sgm_uniform")),
        ("Heun", "Simple", ("heun", "simple")),
        ("Heun", "Beta", ("heun", "beta")),
        ("Heun", "KL Optimal", ("heun", "kl_optimal")),
        ("Euler", "DDIM", ("euler", "ddim_uniform")),
        ("Euler", "Polyexponential", ("euler", "exponential")),
    ],
)
def test_parse_labels(label, schedule, expected):
    assert parse_a1111_sampler(label, schedule) == expected


def test_aliases_case_and_comfy_names():
    assert parse_a1111_sampler("k_euler_a") == ("euler_ancestral", "normal")
    assert parse_a1111_sampler("k_dpmpp_2m_ka") == ("dpmpp_2m", "karras")
    assert parse_a1111_sampler("k_dpmpp_3m_sde_exp") == ("dpmpp_3m_sde", "exponential")
    assert parse_a1111_sampler("k_lms") == ("lms", "normal")
    assert parse_a1111_sampler("  dpm++ 2m karras ") == ("dpmpp_2m", "karras")
    assert parse_a1111_sampler("EULER A", "karras") == ("euler_ancestral", "karras")
    assert parse_a1111_sampler("dpmpp_2m_sde_gpu", "linear_quadratic") == ("dpmpp_2m_sde_gpu", "linear_quadratic")
    assert parse_a1111_sampler("uni_pc_bh2") == ("uni_pc_bh2", "normal")


def test_schedule_suffix_wins_over_schedule_type():
    """A1111's get_sampler_and_scheduler takes the scheduler from the label suffix."""
    assert parse_a1111_sampler("DPM++ 2M Karras", "Exponential") == ("dpmpp_2m", "karras")


def test_unknown_names_raise_listing_valid_ones():
    for bad in ("Restart", "DPM fast", "PLMS", "", "Euler Turbo"):
        with pytest.raises(ValueError, match=r"valid samplers: DPM\+\+ 2M, DPM\+\+ SDE"):
            parse_a1111_sampler(bad)
    with pytest.raises(ValueError, match="valid schedule types: Automatic, Uniform, Karras"):
        parse_a1111_sampler("Euler", "Align Your Steps")
    with pytest.raises(ValueError, match="schedule type"):
        parse_a1111_schedule("karras_exponential")
    with pytest.raises(ValueError, match="valid samplers"):
        a1111_labels("dpm_fast", "normal")
    with pytest.raises(ValueError, match="valid schedulers"):
        a1111_labels("euler", "Karras")


def test_labels_for_infotext():
    assert a1111_labels("dpmpp_2m", "karras") == ("DPM++ 2M", "Karras")  # A1111 writes its Automatic choice
    assert a1111_labels("euler_ancestral", "normal") == ("Euler a", None)
    assert a1111_labels("euler_ancestral", "karras") == ("Euler a", "Karras")
    assert a1111_labels("dpmpp_2m", "normal") == ("DPM++ 2M", "Normal")
    assert a1111_labels("ddim", "ddim_uniform") == ("DDIM", None)
    assert a1111_labels("dpmpp_2m_sde", "exponential") == ("DPM++ 2M SDE", "Exponential")
    assert a1111_labels("ipndm", "linear_quadratic") == ("ipndm", "linear_quadratic")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_round_trip_every_pair(sampler):
    for scheduler in SCHEDULER_NAMES:
        assert parse_a1111_sampler(*a1111_labels(sampler, scheduler)) == (sampler, scheduler)


def test_tables_point_at_real_samplers():
    assert all(e.sampler in SAMPLERS for e in A1111_SAMPLERS)
    assert all(e.automatic in SCHEDULER_NAMES for e in A1111_SAMPLERS)
    assert set(SAMPLER_NAMES) <= set(COMFY_SAMPLER_NAMES)
    assert list(SAMPLER_NAMES) == [n for n in COMFY_SAMPLER_NAMES if n in SAMPLER_NAMES]
    for required in ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                     "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "ddpm", "uni_pc", "uni_pc_bh2", "lcm"):  # fmt: skip
        assert required in SAMPLERS
