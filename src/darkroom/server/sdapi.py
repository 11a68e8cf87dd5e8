"""A1111 generation requests → GenerationParams → one ComfyUI workflow per image → one queued job, and back.

`build_job` checks and translates a txt2img/img2img request (A1111 defaults, options and override_settings,
styles, LoRA tags, hires fix, refiner, img2img resize and inpaint options) into per-image API workflows made by
`darkroom.metadata.workflow.workflow_from_params` — image i uses seed + i, so every image reproduces alone.
`sdapi_results.assemble` (called by the worker) turns the run results into A1111's answer.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from . import sdapi_images as imgs
from .config import Limits
from .files import FileRequestError, Folders, decode_base64, encode_png, open_image, save_upload, sha256_bytes
from .sdapi_models import Img2ImgRequest, ProcessingBase, Txt2ImgRequest
from .sdapi_options import OptionsStore, StyleBook, resolve_model

MAX_A1111_SEED = 4294967294
#: alwayson_scripts entries darkroom understands (title, lower case).
KNOWN_ALWAYSON = ("refiner", "controlnet")
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")


class SdapiError(Exception):
    """A request darkroom cannot run as given; answered with `status` and A1111's error body."""

    def __init__(self, status: int, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field_name


@dataclass
class SdapiContext:
    """What translation needs: model listing, node registry (for validation), folders, limits and options."""

    models: Any  # darkroom.models.registry.ModelRegistry
    nodes: Any  # darkroom.graph.NodeRegistry
    folders: Folders
    limits: Limits
    options: OptionsStore
    styles: StyleBook
    embeddings: Any = None  # darkroom.conditioning.embeddings.EmbeddingLibrary (names decide the text encoder)


@dataclass
class Prepared:
    """Per-image img2img inputs written to input/ (names as LoadImage takes them) and the paste-back plan."""

    init_names: list[str] = field(default_factory=list)
    mask_name: str | None = None  # noise mask (white = repaint), at the processing size
    original_names: list[str] = field(default_factory=list)  # overlay sources at the processing size
    keep_name: str | None = None  # overlay keep-mask (white = keep the original), whole-picture mode
    paste: list[dict[str, Any]] = field(default_factory=list)  # only-masked: {box, original, mask} per image
    extra: dict[str, Any] = field(default_factory=dict)  # infotext extras (Mask blur, Masked content, …)


# -- small checks --------------------------------------------------------------------------------------------------

def _bad(message: str, field_name: str | None = None, status: int = 400) -> SdapiError:
    return SdapiError(status, message, field_name)


def check_limits(req: ProcessingBase, limits: Limits) -> None:
    """Sizes, steps, batch and prompt length within the server's limits; errors name the field."""
    for name, value, top in (("width", req.width, limits.max_width), ("height", req.height, limits.max_height)):
        if value < 64 or value > top or value % 8:
            raise _bad(f"{name} must be a multiple of 8 between 64 and {top} (got {value})", name)
    if not 1 <= req.steps <= limits.max_steps:
        raise _bad(f"steps must be between 1 and {limits.max_steps} (got {req.steps})", "steps")
    if req.batch_size < 1 or req.n_iter < 1:
        raise _bad("batch_size and n_iter must be at least 1", "batch_size" if req.batch_size < 1 else "n_iter")
    if req.batch_size * req.n_iter > limits.max_batch_size:
        raise _bad(f"batch_size × n_iter must be at most {limits.max_batch_size} images (got "
                   f"{req.batch_size * req.n_iter})", "batch_size")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name)) > limits.max_prompt_chars:
            raise _bad(f"{name} is longer than {limits.max_prompt_chars} characters", name)
    if not 0.0 <= req.cfg_scale <= 100.0:
        raise _bad(f"cfg_scale must be between 0 and 100 (got {req.cfg_scale})", "cfg_scale")
    if req.seed < -1 or req.seed > 2**64 - 1 - 1024:
        raise _bad(f"seed must be -1 (random) or a non-negative integer below 2^64 (got {req.seed})", "seed")


def check_supported(req: ProcessingBase) -> None:
    """Refuse, by name, options darkroom cannot honour yet instead of silently ignoring them."""
    if req.script_name:  # issue #7: "SD upscale" (sdapi_scripts)
        from .sdapi_scripts import check_script

        check_script(req)
    for key in req.alwayson_scripts:
        if key.lower() not in KNOWN_ALWAYSON:
            raise _bad(f"unknown alwayson_scripts entry {key!r}: no such extension is installed in darkroom "
                       f"(supported: {', '.join(KNOWN_ALWAYSON)})", "alwayson_scripts")
    if req.restore_faces:
        raise _bad("restore_faces: face restoration is not available in darkroom", "restore_faces")
    if req.subseed_strength:
        raise _bad("variation seeds (subseed_strength > 0) are not supported yet", "subseed_strength")
    if max(req.seed_resize_from_w, req.seed_resize_from_h) > 0:
        raise _bad("seed_resize_from_w/h is not supported yet", "seed_resize_from_w")
    if isinstance(req, Txt2ImgRequest):
        if req.firstpass_image:
            raise _bad("firstpass_image is not supported", "firstpass_image")
        if req.enable_hr:
            if req.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
                raise _bad("hr_checkpoint_name: a different hires checkpoint is not supported yet",
                           "hr_checkpoint_name")
            if req.hr_sampler_name not in (None, "", "Use same sampler"):
                raise _bad("hr_sampler_name: a different hires sampler is not supported yet", "hr_sampler_name")
            if req.hr_scheduler not in (None, "", "Use same scheduler"):
                raise _bad("hr_scheduler: a different hires scheduler is not supported yet", "hr_scheduler")
            if (req.hr_prompt and req.hr_prompt != req.prompt) or (
                    req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt):
                raise _bad("hr_prompt / hr_negative_prompt: a separate hires prompt is not supported yet",
                           "hr_prompt")
    if isinstance(req, Img2ImgRequest):
        if req.resize_mode not in (0, 1):
            raise _bad(f"resize_mode {req.resize_mode} is not supported (0 just resize, 1 crop and resize)",
                       "resize_mode")
        if req.mask and req.inpainting_fill not in (0, 1):
            raise _bad(f"inpainting_fill {req.inpainting_fill} is not supported (0 fill, 1 original)",
                       "inpainting_fill")
        if req.latent_mask:
            raise _bad("latent_mask is not supported", "latent_mask")


def resolve_sampler(req: ProcessingBase) -> tuple[str, str]:
    """(ComfyUI sampler, scheduler) from sampler_name / sampler_index and scheduler (label or name)."""
    from ..sampling import parse_a1111_sampler

    label = req.sampler_name or req.sampler_index or "Euler"
    schedule = req.scheduler
    if schedule is not None and schedule.strip().lower() in ("", "automatic"):
        schedule = None
    try:
        return parse_a1111_sampler(label, schedule)
    except ValueError as ex:
        field_name = "scheduler" if "schedule" in str(ex).split(";")[0] else "sampler_name"
        raise _bad(str(ex), field_name) from None


def apply_infotext(req: ProcessingBase) -> ProcessingBase:
    """A1111 1.8's `infotext` field: fill every field the request did not set from a pasted infotext."""
    from ..metadata.infotext import parse_infotext

    res = parse_infotext(req.infotext or "")
    given = req.model_fields_set
    updates: dict[str, Any] = {}
    mapping = {"Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
               "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
               "Denoising strength": "denoising_strength", "Tiling": "tiling"}
    for key, name in mapping.items():
        if key in res and name not in given and name in type(req).model_fields:
            updates[name] = res[key]
    if "Schedule type" in res and "scheduler" not in given and res["Schedule type"] != "Automatic":
        updates["scheduler"] = res["Schedule type"]
    overrides = dict(req.override_settings or {})
    if "Model" in res and "sd_model_checkpoint" not in overrides:
        overrides["sd_model_checkpoint"] = res["Model"]
    if "Clip skip" in res and "CLIP_stop_at_last_layers" not in overrides:
        overrides["CLIP_stop_at_last_layers"] = res["Clip skip"]
    updates["override_settings"] = overrides
    try:
        return type(req).model_validate({**req.model_dump(), **updates})
    except Exception as ex:
        raise _bad(f"infotext could not be applied: {ex}", "infotext") from None


def needs_a1111_text(prompt: str, negative: str, *, is_sdxl: bool, embedding_names: list[str]) -> bool:
    """Whether ComfyUI's CLIPTextEncode would encode these prompts differently from A1111's rules.

    The same test the engine applies (weights, BREAK/AND, embeddings by name, over 75 tokens, SDXL's zeroed empty
    negative), decided without loading the model; workflows then use darkroom's CLIPTextEncodeA1111 node.
    """
    texts = (prompt, negative)
    if any(c in t for t in texts for c in "()[]\\") or any(re.search(r"\b(BREAK|AND)\b", t) for t in texts):
        return True
    if is_sdxl and not negative.strip():
        return True
    for name in embedding_names:
        if any(re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", t) for t in texts):
            return True
    from ..conditioning.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    return any(len(tok(t, add_special_tokens=False)["input_ids"]) > 75 for t in texts)


def _is_sdxl(models: Any, ckpt: str) -> bool:
    from ..models.detect import detect_file

    try:
        return bool(detect_file(models.find("checkpoints", ckpt)).is_sdxl)
    except Exception:
        return True  # unknown: A1111 text encoding is the safe choice


def random_seed() -> int:
    return random.randrange(MAX_A1111_SEED)


# -- GenerationParams <-> JSON ------------------------------------------------------------------------------------

def params_to_dict(params: Any) -> dict[str, Any]:
    d = asdict(params)
    if d.get("init_image") is not None:
        d["init_image"] = str(d["init_image"])
    d["controlnets"] = [u.to_dict() for u in getattr(params, "controlnets", [])]  # issue #7
    return d


def params_from_dict(d: dict[str, Any]) -> Any:
    from ..engine.params import GenerationParams, HiresParams, LoraRef

    d = dict(d)
    if d.get("hires") is not None:
        d["hires"] = HiresParams(**d["hires"])
    d["loras"] = [LoraRef(**lo) for lo in d.get("loras") or []]
    from ..control.units import ControlNetUnit  # issue #7

    d["controlnets"] = [ControlNetUnit.from_dict(u) for u in d.get("controlnets") or []]
    if d.get("init_image") is not None:
        d["init_image"] = Path(d["init_image"])
    return GenerationParams(**d)


# -- images for img2img --------------------------------------------------------------------------------------------

def _store_input(img: Image.Image, folders: Folders, kind: str) -> str:
    """Write a prepared image into input/sdapi/ under its content hash; returns LoadImage's name for it."""
    data = encode_png(img)
    name, sub = save_upload(data, folders.input, "sdapi", f"{kind}-{sha256_bytes(data)[:16]}.png")
    return f"{sub}/{name}"


def _flatten(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (A1111's img2img background colour)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return img.convert("RGB")


def _decode(text: str, what: str, limits: Limits) -> Image.Image:
    try:
        data = decode_base64(text, what=what, max_bytes=limits.max_body_bytes)
        return open_image(data, max_pixels=limits.max_image_pixels, what=what)
    except FileRequestError as ex:
        raise SdapiError(ex.status, ex.message, what.split(" ")[0]) from None


def prepare_img2img(req: Img2ImgRequest, n: int, folders: Folders, limits: Limits) -> Prepared:
    """Decode init images and mask, apply A1111's mask/resize/fill rules, write the inputs the workflows load."""
    if not req.init_images:
        raise SdapiError(404, "Init image not found", "init_images")
    inits = [_flatten(_decode(text, f"init_images[{i}]", limits)) for i, text in enumerate(req.init_images)]
    out = Prepared()
    w, h = req.width, req.height
    if not req.mask:
        for i in range(n):
            out.init_names.append(_store_input(inits[i % len(inits)], folders, "init"))
        return out
    blur_x = req.mask_blur if req.mask_blur is not None else req.mask_blur_x
    blur_y = req.mask_blur if req.mask_blur is not None else req.mask_blur_y
    raw_mask = _decode(req.mask, "mask", limits)
    mask = imgs.prepare_mask(raw_mask, invert=bool(req.inpainting_mask_invert), blur_x=blur_x, blur_y=blur_y,
                             round_mask=req.mask_round)
    if req.inpainting_mask_invert:
        out.extra["Mask mode"] = "Inpaint not masked"
    if blur_x > 0 or blur_y > 0:
        out.extra["Mask blur"] = blur_x if blur_x == blur_y else None
    box = None
    if req.inpaint_full_res:
        box = imgs.crop_region(mask, req.inpaint_full_res_padding)
        if box is not None:
            box = imgs.expand_to_aspect(box, w, h, mask.width, mask.height)
            out.extra["Inpaint area"] = "Only masked"
            out.extra["Masked area padding"] = req.inpaint_full_res_padding
    if req.inpaint_full_res and box is None:  # a blank mask: A1111 falls back to plain img2img
        for i in range(n):
            out.init_names.append(_store_input(inits[i % len(inits)], folders, "init"))
        return out
    if box is not None:
        work_mask = mask.crop(box).resize((w, h), Image.LANCZOS)
    else:
        work_mask = imgs.resize(mask, req.resize_mode, w, h)
        overlay_mask = work_mask.point(lambda v: min(255, v * 2))
        out.keep_name = _store_input(Image.eval(overlay_mask, lambda v: 255 - v), folders, "keep")
    out.mask_name = _store_input(imgs.latent_noise_mask(work_mask, w, h, round_mask=req.mask_round), folders, "mask")
    if req.inpainting_fill == 0:
        out.extra["Masked content"] = "fill"
    for i in range(n):
        init = inits[i % len(inits)]
        if box is not None:
            if mask.size != init.size:
                raise _bad(f"the mask is {mask.width}x{mask.height} but init image {i % len(inits)} is "
                           f"{init.width}x{init.height}; 'Only masked' needs them the same size", "mask")
            work = imgs.resize(init.crop(box), 0, w, h)
            out.paste.append({"box": list(box), "original": _store_input(init, folders, "orig"),
                              "mask": _store_input(mask, folders, "overlay")})
        else:
            work = imgs.resize(init, req.resize_mode, w, h)
            out.original_names.append(_store_input(work, folders, "orig"))
        if req.inpainting_fill == 0:
            work = imgs.fill_masked(work, work_mask)
        out.init_names.append(_store_input(work, folders, "init"))
    return out


# -- workflows ------------------------------------------------------------------------------------------------------

def _next_id(wf: dict[str, Any]) -> str:
    return str(max(int(k) for k in wf if k.isdigit()) + 1)


def _add(wf: dict[str, Any], class_type: str, inputs: dict[str, Any], title: str) -> str:
    nid = _next_id(wf)
    wf[nid] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
    return nid


def add_inpaint_nodes(wf: dict[str, Any], prep: Prepared, index: int) -> None:
    """Inpaint on top of the img2img graph: noise mask on the encoded latent, overlay of the original."""
    encode = wf["5"]
    scale_id = encode["inputs"]["pixels"][0]
    if wf.get(scale_id, {}).get("class_type") == "ImageScale":  # inputs are already at the processing size
        encode["inputs"]["pixels"] = wf[scale_id]["inputs"]["image"]
        del wf[scale_id]
    mask = _add(wf, "LoadImageMask", {"image": prep.mask_name, "channel": "red"}, "Load Inpaint Mask")
    noise = _add(wf, "SetLatentNoiseMask", {"samples": ["5", 0], "mask": [mask, 0]}, "Set Latent Noise Mask")
    for node in wf.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced") and node["inputs"].get("latent_image") == ["5", 0]:
            node["inputs"]["latent_image"] = [noise, 0]
    if prep.keep_name is not None:
        original = _add(wf, "LoadImage", {"image": prep.original_names[index]}, "Load Original")
        keep = _add(wf, "LoadImageMask", {"image": prep.keep_name, "channel": "red"}, "Load Overlay Mask")
        comp = _add(wf, "ImageCompositeMasked", {"destination": wf["9"]["inputs"]["images"], "source": [original, 0],
                                                 "x": 0, "y": 0, "resize_source": False, "mask": [keep, 0]},
                    "Overlay Original")
        wf["9"]["inputs"]["images"] = [comp, 0]


def preview_version(wf: dict[str, Any]) -> dict[str, Any]:
    """The workflow the worker runs: SaveImage becomes PreviewImage (the server writes the final files itself)."""
    run = copy.deepcopy(wf)
    run["9"] = {"inputs": {"images": wf["9"]["inputs"]["images"]}, "class_type": "PreviewImage",
                "_meta": {"title": "Preview Image"}}
    return run


def _validate(ctx: SdapiContext, wf: dict[str, Any]) -> None:
    from ..graph import validate_prompt

    result = validate_prompt(ctx.nodes, wf)
    if result.ok:
        return
    details = []
    for nid, info in result.node_errors.items():
        for err in info.get("errors", []):
            details.append(f"{info.get('class_type', nid)}: {err.get('message')}: {err.get('details')}")
    err = result.error or {}
    raise SdapiError(400, f"{err.get('message', 'invalid request')}" + (f" ({'; '.join(details)})" if details else ""))


@dataclass
class SdapiJob:
    """A translated request, ready to queue."""

    payload: dict[str, Any]
    listing_prompt: dict[str, Any]


def build_job(req: ProcessingBase, ctx: SdapiContext) -> SdapiJob:
    """Check and translate an A1111 txt2img/img2img request into per-image workflows (raises SdapiError)."""
    from ..conditioning.prompt_parser import extract_extra_networks
    from ..engine.params import GenerationParams, HiresParams
    from ..metadata.workflow import workflow_from_params

    mode = "img2img" if isinstance(req, Img2ImgRequest) else "txt2img"
    if req.infotext:
        req = apply_infotext(req)
    check_supported(req)
    check_limits(req, ctx.limits)
    script = None
    if req.script_name and isinstance(req, Img2ImgRequest):  # issue #7: SD upscale
        from .sdapi_scripts import parse_script, sd_upscale_workflows

        script = parse_script(req, ctx)
    opts = ctx.options.current()
    overrides = dict(req.override_settings or {})
    ckpt = resolve_model(ctx.models, "checkpoints", overrides.get("sd_model_checkpoint")
                         or opts.get("sd_model_checkpoint"), "sd_model_checkpoint")
    vae_value = overrides.get("sd_vae", opts.get("sd_vae", "Automatic"))
    vae = None if vae_value in (None, "", "Automatic", "None") else resolve_model(ctx.models, "vae", vae_value,
                                                                                   "sd_vae")
    try:
        clip_skip = int(overrides.get("CLIP_stop_at_last_layers", opts.get("CLIP_stop_at_last_layers", 1)))
    except (TypeError, ValueError):
        raise _bad("CLIP_stop_at_last_layers must be an integer", "override_settings") from None
    if not 1 <= clip_skip <= 12:
        raise _bad(f"CLIP_stop_at_last_layers must be between 1 and 12 (got {clip_skip})", "override_settings")
    sampler, scheduler = resolve_sampler(req)
    try:
        prompt, negative = ctx.styles.apply(req.prompt, req.negative_prompt, req.styles or [])
    except KeyError as ex:
        raise _bad(str(ex.args[0]), "styles") from None
    if req.disable_extra_networks:
        prompt = extract_extra_networks(prompt)[0]
    lora_files: dict[str, str] = {}
    for net in extract_extra_networks(prompt)[1]:
        if net.kind != "lora":
            raise _bad(f"{net.label}: only <lora:…> extra networks are supported", "prompt")
        lora_files[net.name] = resolve_model(ctx.models, "loras", net.name, "prompt")

    hires = None
    upscale_file = None  # hires fix with an upscale model: its file, as UpscaleModelLoader names it
    if mode == "txt2img" and req.enable_hr:  # type: ignore[union-attr]
        up = req.hr_upscaler or "Latent"  # type: ignore[union-attr]
        if up not in LATENT_UPSCALERS + IMAGE_UPSCALERS:
            from .sdapi_extras import listing_names, resolve_upscaler

            try:
                model_up = resolve_upscaler(ctx.models, up, "hr_upscaler")
            except SdapiError:
                model_up = None
            if model_up is None or model_up.model is None:
                names = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS, *listing_names(ctx.models))
                raise _bad(f"unknown hr_upscaler {up!r}; available: {', '.join(names)}", "hr_upscaler")
            up, upscale_file = model_up.label, model_up.model
        rx, ry = req.hr_resize_x, req.hr_resize_y  # type: ignore[union-attr]
        if rx and not ry:
            ry = rx * req.height // req.width // 8 * 8
        elif ry and not rx:
            rx = ry * req.width // req.height // 8 * 8
        hires = HiresParams(scale=req.hr_scale, upscaler="Lanczos" if up == "None" else up,  # type: ignore
                            steps=req.hr_second_pass_steps, denoise=float(req.denoising_strength or 0.0),  # type: ignore
                            width=rx or None, height=ry or None)
        tw, th = (rx, ry) if rx else (int(req.width * req.hr_scale) // 8 * 8, int(req.height * req.hr_scale) // 8 * 8)  # type: ignore
        if tw > ctx.limits.max_width or th > ctx.limits.max_height:
            raise _bad(f"the hires size {tw}x{th} is beyond the limit {ctx.limits.max_width}x"
                       f"{ctx.limits.max_height}", "hr_scale")
        if not 0.0 < hires.denoise <= 1.0:
            raise _bad("denoising_strength must be in (0, 1] for hires fix", "denoising_strength")

    refiner, switch = req.refiner_checkpoint, req.refiner_switch_at
    for key, entry in req.alwayson_scripts.items():
        if key.lower() == "refiner":
            args = (entry or {}).get("args", []) if isinstance(entry, dict) else []
            if len(args) >= 3 and args[0]:
                refiner, switch = args[1], args[2]
    refiner_name = None
    if refiner not in (None, "", "None"):
        refiner_name = resolve_model(ctx.models, "checkpoints", refiner, "refiner_checkpoint")
        switch = 0.8 if switch is None else float(switch)
        if not 0.0 < switch < 1.0:
            raise _bad(f"refiner_switch_at must be between 0 and 1 (got {switch})", "refiner_switch_at")

    n = req.n_iter if script is not None else req.batch_size * req.n_iter  # SD upscale: one image per n_iter
    seed = random_seed() if req.seed == -1 else req.seed
    subseed = random_seed() if req.subseed == -1 else req.subseed
    seeds = [seed + i for i in range(n)]
    denoise = 1.0
    prep = Prepared()
    if isinstance(req, Img2ImgRequest):
        denoise = float(req.denoising_strength if req.denoising_strength is not None else 0.75)
        if not 0.0 < denoise <= 1.0:
            raise _bad(f"denoising_strength must be in (0, 1] (got {denoise})", "denoising_strength")
        prep = prepare_img2img(req, n, ctx.folders, ctx.limits)
        if script is not None:
            prep.extra.update(script.extra())
    controlnets: list[Any] = []
    if any(key.lower() == "controlnet" for key in req.alwayson_scripts):  # issue #7: ControlNet units
        from .sdapi_controlnet import controlnet_units

        controlnets, cn_extra = controlnet_units(req, ctx, init_names=prep.init_names, mask_name=prep.mask_name)
        prep.extra.update(cn_extra)
    params = GenerationParams(
        prompt=prompt, negative_prompt=negative, model=ckpt, vae=vae, sampler=sampler, scheduler=scheduler,
        steps=req.steps, cfg=float(req.cfg_scale), seed=seed, width=req.width, height=req.height, batch_size=1,
        clip_skip=clip_skip, denoise=denoise, hires=hires, refiner=refiner_name,
        refiner_switch=switch if refiner_name else 0.8, prompt_style="a1111", tiling=bool(req.tiling),
        controlnets=controlnets,
    )
    try:
        embedding_names = list(ctx.embeddings.names()) if ctx.embeddings is not None else []
    except Exception:
        embedding_names = []
    a1111_text = needs_a1111_text(extract_extra_networks(prompt)[0], negative, is_sdxl=_is_sdxl(ctx.models, ckpt),
                                  embedding_names=embedding_names)
    workflows = []
    for i, s in enumerate(seeds):
        init = prep.init_names[i] if prep.init_names else None
        p = replace(params, seed=s, init_image=Path(init) if init else None)
        wf = workflow_from_params(p, seed=s, ckpt_name=ckpt, lora_files=lora_files, init_image_name=init,
                                  refiner_ckpt_name=refiner_name, upscale_model_name=upscale_file,
                                  filename_prefix="darkroom", a1111_text=a1111_text)
        if init and isinstance(req, Img2ImgRequest):
            if prep.mask_name:
                add_inpaint_nodes(wf, prep, i)
            elif req.resize_mode == 1:
                scale_id = wf["5"]["inputs"]["pixels"][0]
                wf[scale_id]["inputs"]["crop"] = "center"
        workflows.append(wf)
    if script is not None:
        workflows = sd_upscale_workflows(script, workflows, prep.init_names, ctx)
    seen: set[str] = set()
    for wf in workflows:  # images differ by seed and input file: validate each distinct graph shape once
        key = repr(sorted((k, v["class_type"], str(v["inputs"].get("image", ""))) for k, v in wf.items()))
        if key not in seen:
            seen.add(key)
            _validate(ctx, wf)
    request = req.model_dump()
    if mode == "img2img" and not getattr(req, "include_init_images", False):
        request["init_images"] = None
        request["mask"] = None
    payload = {
        "mode": mode, "params": params_to_dict(params), "seeds": seeds,
        "subseeds": [subseed + i for i in range(n)], "workflows": workflows,
        "run_workflows": [preview_version(wf) for wf in workflows], "checkpoint": ckpt, "lora_files": lora_files,
        "save_images": bool(req.save_images), "send_images": bool(req.send_images),
        "grid": n > 1 and not req.do_not_save_grid and bool(opts.get("return_grid", True))
        and script is None,  # A1111's SD upscale returns its results without a grid
        "batch_size": req.batch_size, "styles": req.styles or [], "request": request, "extra": prep.extra,
        "paste": prep.paste, "init_names": prep.init_names, "outdir": opts.get(f"outdir_{mode}_samples") or f"{mode}-images",
        "sampler_label": req.sampler_name or req.sampler_index, "subseed_strength": req.subseed_strength,
    }
    return SdapiJob(payload=payload, listing_prompt=payload["run_workflows"][0])
