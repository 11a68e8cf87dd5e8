"""Reading generation metadata from images made by darkroom, A1111 (PNG/JPEG/WebP), ComfyUI and NovelAI."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from ..engine.params import GenerationParams
from .comfy_summary import is_api_prompt, summarize_comfy_prompt
from .infotext import parse_infotext, params_from_infotext, split_infotext

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_JSON_KEYS = ("prompt", "workflow")

# A1111's sampler aliases as NovelAI writes them (`sd_samplers.samplers_map`); anything else reads as Euler a.
_NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a", "k_euler_a": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_ancestral": "DPM2 a", "k_dpm_2_a": "DPM2 a", "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "k_dpm_fast": "DPM fast",
    "k_dpm_ad": "DPM adaptive", "ddim": "DDIM", "plms": "PLMS",
}


class ImageMetadataError(ValueError):
    """A file that cannot be read as an image (corrupt, truncated or not an image)."""


@dataclass
class ImageMetadata:
    """What an image says about how it was made. Empty (no exception) when it says nothing."""

    path: str | None = None
    format: str | None = None  # "PNG", "JPEG", "WEBP", …
    width: int = 0
    height: int = 0
    source: str | None = None  # "darkroom" | "a1111" | "comfyui" | "novelai" | None
    parameters: str | None = None  # A1111 infotext (NovelAI converted to it)
    infotext: dict[str, Any] = field(default_factory=dict)  # parse_infotext(parameters)
    prompt: dict[str, Any] | None = None  # ComfyUI API-format prompt
    workflow: dict[str, Any] | None = None  # ComfyUI UI workflow
    comfy: dict[str, Any] = field(default_factory=dict)  # summarize_comfy_prompt(prompt)
    text: dict[str, str] = field(default_factory=dict)  # every text item found (chunks, EXIF strings)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No generation metadata at all."""
        return self.parameters is None and self.prompt is None and self.workflow is None


def decode_user_comment(data: bytes | str) -> str:
    """EXIF UserComment text: 8-byte charset prefix (ASCII, UNICODE as UTF-16 of either byte order, JIS) + body."""
    if isinstance(data, str):
        return data.rstrip("\0")
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\0":
        if len(body) >= 2 and body[0] == 0 and body[1] != 0:
            enc = "utf-16-be"
        elif len(body) >= 2 and body[0] != 0 and body[1] == 0:
            enc = "utf-16-le"
        elif body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            enc = "utf-16"
        else:
            enc = "utf-16-be"  # piexif (A1111) writes big-endian
        text = body.decode(enc, errors="replace")
    elif prefix == b"ASCII\0\0\0":
        text = body.decode("ascii", errors="replace")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    else:  # undefined prefix: A1111 falls back to UTF-8 of the whole value
        text = data.decode("utf-8", errors="ignore").lstrip("\0")
    return text.rstrip("\0")


def _exif_items(img: Image.Image, meta: ImageMetadata) -> str | None:
    """EXIF UserComment (A1111 JPEG/WebP) and ComfyUI's `key:json` strings in IFD0 (ComfyUI WebP)."""
    try:
        exif = img.getexif()
    except Exception as e:  # a broken EXIF block is not a broken image
        meta.warnings.append(f"unreadable EXIF: {e}")
        return None
    comment = None
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception as e:
        meta.warnings.append(f"unreadable EXIF sub-IFD: {e}")
        raw = None
    if raw:
        comment = decode_user_comment(raw) or None
    for tag, value in exif.items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
        if isinstance(value, str) and ":" in value:
            key, _, rest = value.partition(":")
            if key.isidentifier() and rest.lstrip().startswith(("{", "[")):
                meta.text.setdefault(key, rest)
    return comment


def _novelai_infotext(items: dict[str, str], width: int, height: int) -> str:
    """A1111's conversion of NovelAI's `Description` + `Comment` JSON into an infotext."""
    j = json.loads(items["Comment"])
    sampler = _NOVELAI_SAMPLERS.get(str(j.get("sampler", "")).lower(), "Euler a")
    return (f"{items.get('Description', '')}\nNegative prompt: {j['uc']}\n"
            f"Steps: {j['steps']}, Sampler: {sampler}, CFG scale: {j['scale']}, Seed: {j['seed']}, "
            f"Size: {width}x{height}, Clip skip: 2, ENSD: 31337")


def _open(src: str | os.PathLike[str] | bytes | IO[bytes]) -> tuple[Image.Image, str | None]:
    name = None
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        fp = name
    else:
        fp = src
        name = getattr(src, "name", None)
    label = name or "image data"
    try:
        img = Image.open(fp)
        img.load()  # PNG text chunks after IDAT are only read here; also detects truncation
    except FileNotFoundError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageMetadataError(f"{label}: not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, TypeError,
            Image.DecompressionBombError) as e:
        raise ImageMetadataError(f"{label}: corrupt or truncated image ({e or type(e).__name__})") from None
    return img, name


def read_image_metadata(src: str | os.PathLike[str] | bytes | IO[bytes]) -> ImageMetadata:
    """Generation metadata of an image file or its bytes; ImageMetadataError when the file is not a readable image."""
    img, name = _open(src)
    with img:
        meta = ImageMetadata(path=name, format=img.format, width=img.width, height=img.height)
        chunks = getattr(img, "text", None)  # PNG: all tEXt/zTXt/iTXt chunks
        items = dict(chunks) if isinstance(chunks, dict) else {
            k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
        meta.text.update({k: str(v) for k, v in items.items()})
        geninfo = meta.text.get("parameters")
        comment = _exif_items(img, meta) if "exif" in img.info or img.format in ("JPEG", "WEBP", "TIFF") else None
        if comment:
            geninfo = comment
        elif geninfo is None and isinstance(img.info.get("comment"), (bytes, str)):
            c = img.info["comment"]
            geninfo = (c.decode("utf-8", errors="ignore") if isinstance(c, bytes) else c) or None
        if meta.text.get("Software") == "NovelAI" and "Comment" in meta.text:
            try:
                geninfo = _novelai_infotext(meta.text, img.width, img.height)
                meta.source = "novelai"
            except (ValueError, KeyError, TypeError) as e:
                meta.warnings.append(f"NovelAI Comment not understood: {e}")
    for key in _JSON_KEYS:
        raw = meta.text.get(key)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError as e:
            meta.warnings.append(f"{key!r} text is not JSON: {e}")
            continue
        if isinstance(value, dict):
            setattr(meta, key, value)
        else:
            meta.warnings.append(f"{key!r} JSON is not an object")
    if geninfo is not None and geninfo.strip():
        meta.parameters = geninfo
        meta.infotext = parse_infotext(geninfo)
    if meta.prompt is not None:
        if is_api_prompt(meta.prompt):
            meta.comfy = summarize_comfy_prompt(meta.prompt)
        else:
            meta.warnings.append("'prompt' JSON is not an API-format prompt")
    if meta.source is None:
        version = str(meta.infotext.get("Version", ""))
        if meta.parameters is not None and version.startswith("darkroom"):
            meta.source = "darkroom"
        elif meta.prompt is not None or meta.workflow is not None:
            meta.source = "comfyui"
        elif meta.parameters is not None:
            meta.source = "a1111"
    return meta


def params_from_metadata(meta: ImageMetadata) -> tuple[GenerationParams, dict[str, Any]] | None:
    """'Use these settings' for any image: from its infotext, else from its ComfyUI prompt; None when neither."""
    from ..engine.params import GenerationParams, LoraRef

    if meta.parameters:
        return params_from_infotext(meta.parameters)
    c = meta.comfy
    if not c.get("samplers"):
        return None
    params = GenerationParams(prompt=c.get("positive", ""), negative_prompt=c.get("negative", ""))
    params.model = c.get("checkpoint")
    for key, attr, kind in (("sampler_name", "sampler", str), ("scheduler", "scheduler", str), ("steps", "steps", int),
                            ("cfg", "cfg", float), ("seed", "seed", int), ("width", "width", int),
                            ("height", "height", int), ("denoise", "denoise", float),
                            ("batch_size", "batch_size", int)):
        if c.get(key) is not None:
            setattr(params, attr, kind(c[key]))
    if not c.get("width") and meta.width:
        params.width, params.height = meta.width, meta.height
    params.prompt_style = "comfy"
    params.loras = [LoraRef(name=Path(str(lo["name"])).stem, te_weight=float(lo.get("strength_clip") or 0.0),
                            unet_weight=float(lo.get("strength_model") or 0.0))
                    for lo in c.get("loras", []) if lo.get("name")]
    extras = {k: v for k, v in c.items() if k in ("init_image", "second_pass", "samplers")}
    return params, extras


def _short(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def format_info(meta: ImageMetadata) -> str:
    """Human-readable text for `darkroom info`."""
    lines = []
    head = f"{meta.format or 'image'} {meta.width}x{meta.height}"
    lines.append(f"{head}, made by {meta.source}" if meta.source else f"{head}, no generation metadata")
    if meta.parameters is not None:
        info = meta.infotext
        lines.append(f"Prompt: {info.get('Prompt', '')}")
        if info.get("Negative prompt"):
            lines.append(f"Negative prompt: {info['Negative prompt']}")
        lines.append("Parameters:")
        for k, v in split_infotext(meta.parameters)[2].items():
            lines.append(f"  {k}: {v}")
    if meta.comfy.get("samplers"):
        c = meta.comfy
        lines.append(f"ComfyUI workflow: {len(meta.prompt or {})} nodes, {c['samplers']} sampler(s)")
    if meta.comfy.get("samplers") and meta.parameters is None:  # the infotext above already says it all
        c = meta.comfy
        lines.append(f"Prompt: {c.get('positive', '')}")
        if c.get("negative"):
            lines.append(f"Negative prompt: {c['negative']}")
        for label, key in (("Checkpoint", "checkpoint"), ("Seed", "seed"), ("Steps", "steps"), ("CFG", "cfg"),
                           ("Sampler", "sampler_name"), ("Scheduler", "scheduler"), ("Denoise", "denoise"),
                           ("Init image", "init_image")):
            if c.get(key) is not None:
                lines.append(f"  {label}: {c[key]}")
        if c.get("width"):
            lines.append(f"  Size: {c['width']}x{c['height']}" + (f", batch {c['batch_size']}"
                                                                    if c.get("batch_size", 1) != 1 else ""))
        for lo in c.get("loras", []):
            lines.append(f"  LoRA: {lo.get('name')} (model {lo.get('strength_model')}, clip {lo.get('strength_clip')})")
        if "second_pass" in c:
            sp = c["second_pass"]
            lines.append(f"  Second pass: {sp.get('steps')} steps at denoise {sp.get('denoise')}")
    if meta.workflow is not None and not meta.comfy.get("samplers"):
        lines.append(f"ComfyUI UI workflow: {len(meta.workflow.get('nodes', []))} nodes")
    shown = {"parameters", "prompt", "workflow"}
    for k, v in meta.text.items():
        if k not in shown:
            lines.append(f"{k}: {_short(v, 500)}")
    for w in meta.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
