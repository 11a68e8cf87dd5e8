"""A1111 infotext: parsing real strings exactly as parse_generation_parameters, rebuilding byte-identically."""

from __future__ import annotations

import pytest

from darkroom.metadata.infotext import (build_infotext, order_params, parse_infotext, quote, split_infotext,
                                        unquote, uses_emphasis)

# Realistic A1111 1.x infotexts (as they appear in PNG "parameters" chunks).
HIRES_LORA = (
    "masterpiece, best quality, 1girl, (smile:1.2), <lora:add_detail:0.8>\n"
    "city street at night, neon lights\n"
    "Negative prompt: (worst quality:1.4), lowres, \"bad hands\"\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3052415713, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
    "Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, Lora hashes: \"add_detail: 7c6bad76eb54\", "
    "TI hashes: \"easynegative: c74b4e810b03, bad-hands-5: aa7651be154c\", Version: v1.10.1"
)
NO_NEGATIVE = (
    "a photo of an astronaut riding a horse on mars\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Version: v1.10.1"
)
QUOTED = (
    "portrait of a woman, detailed face\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 5.5, Seed: 42, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.4, Hires resize: 1024x1536, "
    "Hires steps: 10, Hires upscaler: Latent (nearest-exact), Hires prompt: \"portrait of a woman,\\nsharp focus\", "
    "ADetailer model: face_yolov8n.pt, ADetailer prompt: \"smiling, detailed: eyes\", ADetailer version: 24.9.0, "
    "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.10.1"
)
UNICODE = (
    "桜の木の下の猫, 水彩画\n"
    "Negative prompt: 低品質\n"
    "Steps: 25, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 6, Seed: 77, Size: 768x512, "
    "Model hash: e6bb9ea85b, Model: animagine, Emphasis: No norm, Hires prompt: \"猫, 詳細: 高\", Version: v1.10.1"
)
REAL_STRINGS = [HIRES_LORA, NO_NEGATIVE, QUOTED, UNICODE]


def test_parse_full_infotext_matches_a1111_dict():
    d = parse_infotext(HIRES_LORA)
    assert d["Prompt"] == ("masterpiece, best quality, 1girl, (smile:1.2), <lora:add_detail:0.8>\n"
                           "city street at night, neon lights")
    assert d["Negative prompt"] == "(worst quality:1.4), lowres, \"bad hands\""
    # parsed values stay strings; WxH splits into Key-1/Key-2
    assert d["Steps"] == "28" and d["Seed"] == "3052415713" and d["CFG scale"] == "7"
    assert (d["Size-1"], d["Size-2"]) == ("512", "768") and "Size" not in d
    assert d["Sampler"] == "DPM++ 2M" and d["Schedule type"] == "Karras"
    assert d["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert d["TI hashes"] == "easynegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert d["Clip skip"] == "2" and d["Hires upscaler"] == "R-ESRGAN 4x+"
    # defaults injected for missing keys, with A1111's types
    assert d["Hires resize-1"] == 0 and d["Hires resize-2"] == 0
    assert d["Hires sampler"] == "Use same sampler" and d["Hires checkpoint"] == "Use same checkpoint"
    assert d["Masked area padding"] == 32 and d["RNG"] == "GPU" and d["FP8 weight"] == "Disable"
    assert d["Schedule max sigma"] == 0 and d["Refiner switch by sampling steps"] is False
    assert d["Emphasis"] == "Original"  # the prompts use (x:w) weights
    assert "Cache FP16 weight for LoRA" not in d
    # v1.10.1 needs no back-compat flags
    assert "Downcast alphas_cumprod" not in d and "Old prompt editing timelines" not in d


def test_parse_no_negative_and_defaults():
    d = parse_infotext(NO_NEGATIVE)
    assert d["Prompt"] == "a photo of an astronaut riding a horse on mars"
    assert d["Negative prompt"] == ""
    assert d["Clip skip"] == "1" and d["Schedule type"] == "Automatic"
    assert "Emphasis" not in d  # no weights in the prompt


def test_parse_quoted_values_and_wxh_extras():
    d = parse_infotext(QUOTED)
    assert d["Hires prompt"] == "portrait of a woman,\nsharp focus"
    assert d["ADetailer prompt"] == "smiling, detailed: eyes"
    assert d["ADetailer model"] == "face_yolov8n.pt"
    assert (d["Hires resize-1"], d["Hires resize-2"]) == ("1024", "1536")
    assert d["Refiner"] == "sd_xl_refiner_1.0 [7440042bbd]" and d["Refiner switch at"] == "0.8"
    assert d["CFG scale"] == "5.5"


def test_parse_unicode_quoted():
    d = parse_infotext(UNICODE)
    assert d["Prompt"] == "桜の木の下の猫, 水彩画" and d["Negative prompt"] == "低品質"
    assert d["Hires prompt"] == "猫, 詳細: 高" and d["Emphasis"] == "No norm"


@pytest.mark.parametrize("text", REAL_STRINGS)
def test_real_strings_rebuild_byte_identically(text):
    prompt, negative, raw = split_infotext(text)
    assert build_infotext(prompt, negative, raw) == text
    assert build_infotext(prompt, negative, raw, reorder=False) == text


def test_last_line_needs_three_params():
    d = parse_infotext("a cat\nSteps: 20, Sampler: Euler")
    assert d["Prompt"] == "a cat\nSteps: 20, Sampler: Euler"
    assert "Steps" not in d
    only_prompt = parse_infotext("  just a prompt, with: colons  \n")
    assert only_prompt["Prompt"] == "just a prompt, with: colons"


def test_multiline_negative_and_empty_value_dropped():
    text = ("line one\nline two\nNegative prompt: bad\nworse\n"
            "Steps: 10, Sampler: Euler, Model: , CFG scale: 4, Seed: 9, Size: 64x32")
    d = parse_infotext(text)
    assert d["Prompt"] == "line one\nline two"
    assert d["Negative prompt"] == "bad\nworse"
    assert "Model" not in d  # A1111 fails on an empty value and skips the key
    assert (d["Size-1"], d["Size-2"]) == ("64", "32")


def test_backcompat_for_old_versions_and_hypernet():
    text = ("a [cat:dog:10] on a sofa\n"
            "Steps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 512x512, Hypernet: anime, "
            "Hypernet strength: 0.5, Refiner: r, Version: v1.5.1")
    d = parse_infotext(text)
    assert d["Old prompt editing timelines"] is True
    assert d["Pad conds v0"] is True
    assert d["Downcast alphas_cumprod"] is True
    assert d["Refiner switch by sampling steps"] is True
    assert d["Prompt"].endswith("<hypernet:anime:0.5>")
    # commit-suffixed versions: v1.7.0-225-g… is not older than the tsnr change
    d2 = parse_infotext("x\nSteps: 1, Sampler: Euler, Seed: 1, Version: v1.7.0-225-gdeadbee")
    assert "Downcast alphas_cumprod" not in d2
    # our own version string is not a version A1111 understands: no flags
    d3 = parse_infotext("x [y]\nSteps: 1, Sampler: Euler, Seed: 1, Version: darkroom 0.1.0")
    assert "Old prompt editing timelines" not in d3 and "Downcast alphas_cumprod" not in d3


def test_old_first_pass_size_is_restored():
    d = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Size: 1024x1024, First pass size: 0x0")
    # A1111's old_hires_fix_first_pass_dimensions(1024, 1024) = 512x512
    assert (d["Size-1"], d["Size-2"]) == (512, 512)
    assert (d["Hires resize-1"], d["Hires resize-2"]) == (1024, 1024)


def test_fp8_adds_cache_default():
    d = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, FP8 weight: Enable for SDXL")
    assert d["Cache FP16 weight for LoRA"] is False


def test_quote_unquote_rules():
    assert quote("plain value") == "plain value"
    assert quote(7) == 7
    assert quote("a, b") == '"a, b"'
    assert quote("k: v") == '"k: v"'
    assert quote("two\nlines") == '"two\\nlines"'
    assert quote("猫, 犬") == '"猫, 犬"'  # ensure_ascii=False
    assert unquote('"a, b"') == "a, b"
    assert unquote('"broken') == '"broken'
    assert unquote('"not json\\q"') == '"not json\\q"'


def test_build_orders_keys_like_a1111_and_omits_none():
    params = {"Version": "v1", "Lora hashes": "a: 1", "Seed": 5, "Steps": 20, "Hires upscale": 2,
              "Clip skip": None, "Denoising strength": 0.5, "Size": "64x64", "Sampler": "Euler"}
    text = build_infotext("p", "", params)
    assert text == ("p\nSteps: 20, Sampler: Euler, Seed: 5, Size: 64x64, Denoising strength: 0.5, "
                    "Lora hashes: \"a: 1\", Hires upscale: 2, Version: v1")
    assert list(order_params({"User": "u", "Version": "v", "X": 1, "Steps": 2})) == ["Steps", "X", "Version", "User"]


def test_build_negative_line_and_key_equal_value():
    assert build_infotext("p", "n", {"Steps": 1, "Tiling": "Tiling"}) == "p\nNegative prompt: n\nSteps: 1, Tiling"
    assert build_infotext("", "", {"Steps": 1}) == "Steps: 1"


def test_build_parse_round_trip_arbitrary_values():
    params = {"Steps": 12, "Sampler": "DPM++ 2M", "CFG scale": 6.5, "Seed": 99, "Size": "640x448",
              "Note": "commas, colons: and\nnewlines", "Quote": 'say "hi"', "Emoji": "🙂, ok",
              "Escaped": 'he said "hi, there" \\ left'}
    text = build_infotext("a\nmulti-line prompt", "neg, ative", params)
    d = parse_infotext(text)
    assert d["Prompt"] == "a\nmulti-line prompt" and d["Negative prompt"] == "neg, ative"
    assert d["Note"] == "commas, colons: and\nnewlines"
    assert d["Emoji"] == "🙂, ok" and d["CFG scale"] == "6.5"
    assert (d["Size-1"], d["Size-2"]) == ("640", "448")
    # a value without special characters is written raw and so keeps its quotes
    assert d["Quote"] == 'say "hi"'
    assert d["Escaped"] == 'he said "hi, there" \\ left'
    assert build_infotext(*split_infotext(text)) == text


def test_uses_emphasis():
    assert uses_emphasis("a (cat)")
    assert uses_emphasis("[dog]")
    assert not uses_emphasis("a cat BREAK a dog")
    assert not uses_emphasis("(cat:1.0)")
    assert not uses_emphasis(r"\(literal\)")
