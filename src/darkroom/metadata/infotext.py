"""A1111 "infotext": the `parameters` text that A1111 writes into images, built and parsed exactly as A1111 1.10 does.

Writing follows `processing.create_infotext`; parsing follows `infotext_utils.parse_generation_parameters`
(with A1111's default options: no styles, no skipped fields, automatic back-compat).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine package imports torch; metadata stays light and imports it only when needed
    from ..engine.params import GenerationParams

# A1111's `re_param`: one `key: value` pair of the parameter line; a value is a JSON string or runs to the next comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

# Key order of A1111's `generation_params` dict; extra keys follow in insertion order, then TAIL_KEYS.
A1111_KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight",
    "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)
TAIL_KEYS: tuple[str, ...] = ("Version", "User")

# Extras written by A1111 itself, in the order a txt2img/img2img run adds them (hires at init, networks at
# activation, TI at conditioning, refiner while sampling).
_EXTRA_SLOTS: tuple[str, ...] = (
    "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Lora hashes", "TI hashes", "Refiner",
    "Refiner switch at",
)

_MODEL_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft"}


class InfotextError(ValueError):
    """An infotext that cannot be turned into generation parameters."""


def quote(value: object) -> object:
    """A1111's `quote`: JSON-encode a value whose text contains `,`, `:` or a newline; else return it unchanged."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's `unquote`: decode a JSON string value; anything else (or invalid JSON) is returned as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def order_params(params: Mapping[str, object]) -> dict[str, object]:
    """Reorder like A1111's dict literal: fixed keys first, then extras in insertion order, then Version, User."""
    out: dict[str, object] = {k: params[k] for k in A1111_KEY_ORDER if k in params}
    fixed = set(A1111_KEY_ORDER) | set(TAIL_KEYS)
    out.update((k, v) for k, v in params.items() if k not in fixed)
    out.update((k, params[k]) for k in TAIL_KEYS if k in params)
    return out


def build_infotext(prompt: str, negative: str, params: Mapping[str, object], *, reorder: bool = True) -> str:
    """The A1111 infotext: prompt, optional `Negative prompt:` line, then `k: v, …` (None values omitted)."""
    items = order_params(params) if reorder else dict(params)
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in items.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_text}\n{line}".strip()


def split_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Prompt, negative prompt and the raw `key: value` pairs (values unquoted, `WxH` kept whole) in text order."""
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    prompt, negative, done_with_prompt = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    raw: dict[str, str] = {}
    for k, v in RE_PARAM.findall(lastline):
        if not v:  # A1111 fails on v[0] for an empty value and drops the key
            continue
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        raw[k] = v
    return prompt, negative, raw


def parse_infotext(text: str) -> dict[str, Any]:
    """Exactly A1111's `parse_generation_parameters` (default options): the dict the UI pastes from."""
    prompt, negative, raw = split_infotext(text)
    res: dict[str, Any] = {}
    for k, v in raw.items():
        m = RE_IMAGESIZE.match(v) if isinstance(v, str) else None
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    _inject_defaults(res, prompt, negative)
    return res


def _inject_defaults(res: dict[str, Any], prompt: str, negative: str) -> None:
    """A1111's defaults for keys missing from old or partial infotexts, so old images reproduce old behaviour."""
    res.setdefault("Clip skip", "1")
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, default in (("Hires sampler", "Use same sampler"), ("Hires schedule type", "Use same scheduler"),
                         ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""),
                         ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"), ("Masked content", "original"),
                         ("Inpaint area", "Whole picture"), ("Masked area padding", 32)):
        res.setdefault(key, default)
    _restore_old_hires_fix_params(res)
    for key, default in (("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0),
                         ("Schedule min sigma", 0), ("Schedule rho", 0), ("VAE Encoder", "Full"),
                         ("VAE Decoder", "Full"), ("FP8 weight", "Disable")):
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and (uses_emphasis(prompt) or uses_emphasis(negative)):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _backcompat(res)


def _restore_old_hires_fix_params(res: dict[str, Any]) -> None:
    """Infotexts with the pre-1.0 `First pass size` become first-pass Size plus Hires resize."""
    fw, fh = res.get("First pass size-1"), res.get("First pass size-2")
    if fw is None or fh is None:
        return
    fw, fh = int(fw), int(fh)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if fw == 0 or fh == 0:
        scale = math.sqrt(512 * 512 / (width * height))  # A1111's old_hires_fix_first_pass_dimensions
        fw, fh = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = fw, fh
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _parse_version(text: object) -> Any:
    """A1111's `infotext_versions.parse_version`: a packaging Version, or None when the text is not one."""
    if not isinstance(text, str):
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    try:
        from packaging import version
        return version.parse(text)
    except Exception:
        return None


def _backcompat(res: dict[str, Any]) -> None:
    """A1111's `infotext_versions.backcompat`: flags that make images from old versions reproduce."""
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    from packaging import version

    v160, v170_tsnr, v180 = version.parse("1.6.0"), version.parse("v1.7.0-225"), version.parse("1.8.0")
    if ver < v160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < v160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < v170_tsnr:
        res["Downcast alphas_cumprod"] = True
    if ver < v180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def uses_emphasis(text: str) -> bool:
    """A1111's `prompt_uses_emphasis`: some run of the prompt has a weight other than 1 (BREAK aside)."""
    from ..conditioning.prompt_parser import parse_prompt_attention

    return any(w != 1.0 and t != "BREAK" for t, w in parse_prompt_attention(text))


# ---------------------------------------------------------------- our request <-> A1111 keys


def _num(x: float | int) -> int | float:
    """7.0 → 7 (as A1111's UI writes integral sliders), 7.5 → 7.5."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def model_display_name(name: str | None) -> str | None:
    """A1111's `name_for_extra`: the checkpoint's file name without folder or model extension."""
    if not name:
        return None
    p = PurePath(name.replace("\\", "/"))
    return p.stem if p.suffix.lower() in _MODEL_EXTENSIONS else p.name


def _sampler_labels(sampler: str, scheduler: str) -> tuple[str, str | None]:
    """A1111 (Sampler, Schedule type) labels for our ComfyUI-named sampler and scheduler."""
    from ..sampling.names import a1111_labels  # lazy: sampling is optional for metadata-only use

    return a1111_labels(sampler, scheduler)


def hashes_text(hashes: Mapping[str, str]) -> str:
    """A1111's `Lora hashes` / `TI hashes` value: `name: hash, …` with `:` and `,` removed from names."""
    return ", ".join(f"{k.replace(':', '').replace(',', '')}: {v}" for k, v in hashes.items())


def infotext_params(params: GenerationParams, *, seed: int, model_name: str | None, model_hash: str | None = None,
                    vae_hash: str | None = None, lora_hashes: Mapping[str, str] | None = None,
                    ti_hashes: Mapping[str, str] | None = None, refiner_hash: str | None = None,
                    extra: Mapping[str, object] | None = None, version: str | None = None) -> dict[str, object]:
    """Our request as A1111's ordered `generation_params` dict (None = omitted)."""
    from .. import __version__

    sampler_label, schedule_label = _sampler_labels(params.sampler, params.scheduler)
    hires = params.hires if params.init_image is None else None
    denoise: float | None = None
    if params.init_image is not None:
        denoise = params.denoise
    elif hires is not None:
        denoise = hires.denoise
    out: dict[str, object] = {
        "Steps": params.steps,
        "Sampler": sampler_label,
        "Schedule type": schedule_label,
        "CFG scale": _num(params.cfg),
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model_hash,
        "Model": model_display_name(model_name),
        "VAE hash": vae_hash if params.vae else None,
        "VAE": PurePath(params.vae.replace("\\", "/")).name if params.vae else None,
        "Denoising strength": _num(denoise) if denoise is not None else None,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "Tiling": True if getattr(params, "tiling", False) else None,
    }
    slots: dict[str, object] = dict.fromkeys(_EXTRA_SLOTS)
    if hires is not None:
        if hires.width or hires.height:
            slots["Hires resize"] = f"{hires.width or 0}x{hires.height or 0}"
        else:
            slots["Hires upscale"] = _num(hires.scale)
        slots["Hires steps"] = hires.steps or None
        slots["Hires upscaler"] = hires.upscaler
    if lora_hashes:
        slots["Lora hashes"] = hashes_text(lora_hashes)
    if ti_hashes:
        slots["TI hashes"] = hashes_text(ti_hashes)
    if params.refiner:
        name = model_display_name(params.refiner)
        slots["Refiner"] = f"{name} [{refiner_hash}]" if refiner_hash else name
        slots["Refiner switch at"] = _num(params.refiner_switch)
    for k, v in (extra or {}).items():
        if k in out:
            out[k] = v
        else:
            slots[k] = v
    out.update(slots)
    if version is not None or "Version" not in out:  # an explicit `version`, else extra's, else ours
        out["Version"] = version if version is not None else f"darkroom {__version__}"
    return order_params(out)


def infotext_for(params: GenerationParams, *, seed: int, model_name: str | None, model_hash: str | None = None,
                 extra: Mapping[str, object] | None = None, **kwargs: Any) -> str:
    """The A1111 infotext of one image (kwargs: vae_hash, lora_hashes, ti_hashes, refiner_hash, version)."""
    p = infotext_params(params, seed=seed, model_name=model_name, model_hash=model_hash, extra=extra, **kwargs)
    return build_infotext(params.prompt, params.negative_prompt, p)


def _int(res: Mapping[str, Any], key: str, default: int) -> int:
    v = res.get(key)
    if v in (None, ""):
        return default
    try:
        return int(v) if isinstance(v, (int, str)) and str(v).strip().lstrip("+-").isdigit() else int(float(v))
    except (TypeError, ValueError, OverflowError):
        raise InfotextError(f"infotext {key!r} is not a number: {v!r}") from None


def _float(res: Mapping[str, Any], key: str, default: float) -> float:
    v = res.get(key)
    if v in (None, ""):
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InfotextError(f"infotext {key!r} is not a number: {v!r}") from None


_RE_TITLE_HASH = re.compile(r"^(.*?)\s*\[[0-9a-fA-F]{8,64}\]$")

# Keys that params_from_infotext turns into GenerationParams fields (not reported as extras).
_CONSUMED = {
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "VAE", "Denoising strength",
    "Clip skip", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Refiner", "Refiner switch at",
    "Tiling",
}


def params_from_infotext(text: str) -> tuple[GenerationParams, dict[str, Any]]:
    """'Use these settings': our request from an infotext, plus the keys it did not map (Model hash, Version, …)."""
    from ..engine.params import GenerationParams, HiresParams
    from ..sampling.names import parse_a1111_sampler

    res = parse_infotext(text)
    _, _, raw = split_infotext(text)
    sampler_label = res.get("Sampler")
    schedule = res.get("Schedule type")
    if sampler_label:
        try:
            sampler, scheduler = parse_a1111_sampler(sampler_label, None if schedule == "Automatic" else schedule)
        except ValueError as e:
            raise InfotextError(f"infotext sampler {sampler_label!r}: {e}") from None
    else:
        sampler, scheduler = GenerationParams.sampler, GenerationParams.scheduler
    has_denoise = "Denoising strength" in res
    hires: HiresParams | None = None
    if has_denoise and any(k in res for k in ("Hires upscale", "Hires upscaler", "Hires resize")):
        hw, hh = _int(res, "Hires resize-1", 0), _int(res, "Hires resize-2", 0)
        hires = HiresParams(scale=_float(res, "Hires upscale", 2.0), upscaler=res.get("Hires upscaler", "Latent"),
                            steps=_int(res, "Hires steps", 0), denoise=_float(res, "Denoising strength", 0.7),
                            width=hw or None, height=hh or None)
    refiner = res.get("Refiner") or None
    if refiner:
        m = _RE_TITLE_HASH.match(refiner)
        refiner = m.group(1) if m else refiner
    params = GenerationParams(
        prompt=res["Prompt"], negative_prompt=res["Negative prompt"], model=res.get("Model") or None,
        vae=res.get("VAE") or None, sampler=sampler, scheduler=scheduler, steps=_int(res, "Steps", 20),
        cfg=_float(res, "CFG scale", 7.0), seed=_int(res, "Seed", -1), width=_int(res, "Size-1", 512),
        height=_int(res, "Size-2", 512), clip_skip=_int(res, "Clip skip", 1), hires=hires, refiner=refiner,
        refiner_switch=_float(res, "Refiner switch at", 0.8), prompt_style="a1111",
        tiling=str(res.get("Tiling", "")).strip().lower() == "true",
    )
    if has_denoise and hires is None:
        params = replace(params, denoise=_float(res, "Denoising strength", 1.0))
    extras = {k: v for k, v in raw.items() if k not in _CONSUMED}
    return params, extras
