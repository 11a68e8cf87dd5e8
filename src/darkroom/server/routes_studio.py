"""JSON routes of the studio page (`/studio/...`): options, generate, gallery, image parameters, PNG info.

Generating takes the page's typed settings, translates them with the A1111 API's own translation
(`sdapi.build_job`: the same per-image ComfyUI workflows, inpainting rules and seeds) and queues one job on the
shared queue with the page's websocket client id, so progress, step previews and `executing: null` reach that
page. Images are written to output/ with A1111 infotext and the equivalent workflow. Nothing here waits for the
worker: the page follows the job over `/ws` and reads its result from `/history/{prompt_id}`.
"""

from __future__ import annotations

import binascii
import base64
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .files import FileRequestError, resolve
from .state import ServerState, state_of
from .studio_gallery import Gallery, history_jobs_with
from .studio_upscale import UpscaleRequest, run_upscale

router = APIRouter(prefix="/studio", tags=["studio"])

#: Width × height presets the page offers (SD1.5 at 512, SDXL at its trained ~1 megapixel buckets).
SIZE_PRESETS: dict[str, list[list[int]]] = {
    "SD1.5": [[512, 512], [512, 768], [768, 512], [640, 448], [448, 640]],
    "SDXL": [[1024, 1024], [896, 1152], [1152, 896], [832, 1216], [1216, 832], [768, 1344], [1344, 768]],
}


ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
ResizeMode = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]
#: The preprocessor of reference-image (IP-Adapter) units, as A1111's ControlNet extension names it.
REFERENCE_MODULE = "ip-adapter-auto"


class StudioControlUnit(BaseModel):
    """One ControlNet unit of the page's control panel (an A1111 ControlNet-extension unit, typed)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    model: str = ""  # a title from /controlnet/model_list ("name [hash]") or a registry name
    module: str = "none"  # preprocessor (a drawn pose or a ready map: "none")
    image: str | None = None  # data URL or base64 (img2img: none = the init image)
    weight: float = Field(1.0, ge=0.0, le=10.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: ControlMode = "Balanced"
    resize_mode: ResizeMode = "Crop and Resize"
    processor_res: int = Field(-1, ge=-1, le=16384)  # -1: the preprocessor's default
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    pixel_perfect: bool = False


class StudioReference(BaseModel):
    """One reference image of the page's reference panel (an IP-Adapter unit)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    model: str = ""  # an IP-Adapter model title from /controlnet/model_list
    image: str | None = None  # data URL or base64 (needed when enabled)
    weight: float = Field(1.0, ge=0.0, le=10.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)


class StudioSdUpscale(BaseModel):
    """A1111's "SD upscale" img2img script: upscale, then redraw in overlapping tiles of width × height."""

    model_config = ConfigDict(extra="forbid")

    upscaler: str = "Lanczos"  # a name from /sdapi/v1/upscalers
    scale: float = Field(2.0, ge=1.0, le=8.0)
    overlap: int = Field(64, ge=0, le=256)


class StudioParams(BaseModel):
    """What the studio page sends to generate (or to open as a workflow)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None  # checkpoint name (None: the server's default)
    sampler: str = "euler"  # ComfyUI sampler name (A1111 labels work too)
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1  # -1: random
    batch_size: int = 1
    clip_skip: int = 1
    mode: Literal["txt2img", "img2img", "inpaint"] = "txt2img"
    init_image: str | None = None  # data URL or base64 of the canvas picture (img2img / inpaint)
    mask: str | None = None  # data URL or base64: white = repaint (inpaint)
    denoise: float = Field(0.75, description="img2img / inpaint denoising strength")
    mask_blur: int = 4
    inpaint_area: Literal["whole", "masked"] = "whole"  # A1111's "Inpaint area"
    masked_content: Literal["original", "fill"] = "original"  # A1111's "Masked content"
    padding: int = 32  # only-masked padding in pixels
    controlnet: list[StudioControlUnit] = Field(default_factory=list)  # the control panel's units
    references: list[StudioReference] = Field(default_factory=list)  # reference images (IP-Adapter units)
    sd_upscale: StudioSdUpscale | None = None  # img2img only: run A1111's "SD upscale" script
    client_id: str | None = None  # the page's websocket clientId (events go there)


class StudioError(Exception):
    """A studio request that cannot be run; answered 400 with the message (and the field when known)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


def _error(message: str, field: str | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _base64(text: str) -> str:
    """Plain base64 of a data URL (A1111 units carry base64 PNG)."""
    return text.split(",", 1)[1] if text.startswith("data:") else text


def control_args(p: StudioParams) -> tuple[list[dict[str, Any]], list[str]]:
    """(A1111 `alwayson_scripts.controlnet.args`, the page's field of each arg) for the enabled units and references."""
    args: list[dict[str, Any]] = []
    where: list[str] = []
    for i, u in enumerate(p.controlnet):
        if not u.enabled:
            continue
        if u.model.strip() in ("", "None", "none"):  # A1111 would skip the unit silently
            raise StudioError(f"ControlNet unit {i + 1}: pick a model (ControlNet files go in models/controlnet)",
                              f"controlnet.{i}.model")
        unit = u.model_dump(exclude={"enabled", "image"})
        if u.image:
            unit["image"] = _base64(u.image)
        args.append({"enabled": True, **unit})
        where.append(f"controlnet.{i}")
    for i, r in enumerate(p.references):
        if not r.enabled:
            continue
        if r.model.strip() in ("", "None", "none"):
            raise StudioError(f"reference image {i + 1}: pick an IP-Adapter model (files go in models/ipadapter)",
                              f"references.{i}.model")
        if not r.image:
            raise StudioError(f"reference image {i + 1}: choose its picture first", f"references.{i}.image")
        args.append({"module": REFERENCE_MODULE, "model": r.model, "image": _base64(r.image), "weight": r.weight,
                     "guidance_start": r.guidance_start, "guidance_end": r.guidance_end})
        where.append(f"references.{i}")
    return args, where


def a1111_request(p: StudioParams, upscalers: list[str] | None = None) -> Any:
    """The A1111 txt2img/img2img request equivalent to the page's settings (`upscalers`: /upscalers names, in
    order, for SD upscale's upscaler index)."""
    from .sdapi_models import Img2ImgRequest, Txt2ImgRequest

    common: dict[str, Any] = {
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": p.seed, "sampler_name": p.sampler,
        "scheduler": p.scheduler, "steps": p.steps, "cfg_scale": p.cfg, "width": p.width, "height": p.height,
        "batch_size": p.batch_size, "n_iter": 1, "save_images": True, "send_images": False,
        "override_settings": {"CLIP_stop_at_last_layers": p.clip_skip,
                              **({"sd_model_checkpoint": p.model} if p.model else {})},
    }
    args, _ = control_args(p)
    if args:
        common["alwayson_scripts"] = {"controlnet": {"args": args}}
    if p.sd_upscale is not None and p.mode != "img2img":
        raise StudioError("SD upscale redraws a picture: use it with image to image", "sd_upscale")
    if p.mode == "txt2img":
        return Txt2ImgRequest(**common)
    if not p.init_image:
        raise StudioError("load or drop an image first (img2img and inpaint start from a picture)", "init_image")
    extra: dict[str, Any] = {"init_images": [p.init_image], "denoising_strength": p.denoise, "resize_mode": 0}
    if p.mode == "inpaint":
        if not p.mask:
            raise StudioError("paint a mask over the part to change first", "mask")
        extra.update(mask=p.mask, mask_blur=max(0, p.mask_blur), inpainting_fill=1 if p.masked_content ==
                     "original" else 0, inpaint_full_res=p.inpaint_area == "masked",
                     inpaint_full_res_padding=max(0, p.padding), inpainting_mask_invert=0)
    if p.sd_upscale is not None:  # A1111's script_args: [info, overlap, upscaler index, scale factor]
        names = list(upscalers or [])
        if p.sd_upscale.upscaler not in names:
            raise StudioError(f"no upscaler named {p.sd_upscale.upscaler!r}; available: {', '.join(names)}",
                              "sd_upscale.upscaler")
        extra.update(script_name="SD upscale", script_args=["", p.sd_upscale.overlap,
                                                            names.index(p.sd_upscale.upscaler), p.sd_upscale.scale])
    return Img2ImgRequest(**common, **extra)


def listed_checkpoint(registry: Any, name: str) -> Path | None:
    """The file of an installed checkpoint (by name, stem or A1111 title); None for anything else, paths included."""
    try:
        path = registry.find("checkpoints", name)
    except Exception:
        return None
    builtin = {p.resolve() for p in registry.builtin_checkpoints if p.exists()}
    if registry.name_of("checkpoints", path) is None and path.resolve() not in builtin:
        return None
    return path


def translate(st: ServerState, p: StudioParams) -> Any:
    """Check and translate the settings into an A1111-kind job payload (raises StudioError)."""
    from .sdapi import SdapiError, build_job

    if p.model and listed_checkpoint(st.engine.registry, p.model) is None:
        raise StudioError(f"no checkpoint named {p.model!r} is installed; pick one from the list", "model")
    upscalers = None
    if p.sd_upscale is not None:
        from .sdapi_extras import upscaler_rows

        upscalers = [row["name"] for row in upscaler_rows(st.engine.registry)]
    req = a1111_request(p, upscalers)
    try:
        return build_job(req, st.sdapi_context())
    except SdapiError as ex:
        where = control_args(p)[1]
        raise StudioError(_unit_message(ex.message, where), _field_name(ex.field, where), ex.status) from None


_ARG = re.compile(r"alwayson_scripts\.controlnet\.args\[(\d+)\](?:\.(\w+))?")
_NO_IMAGE = re.compile(r": ControlNet unit \d+ has no image")


def _unit_label(field: str) -> str:
    """'ControlNet unit 2' / 'reference image 1' for the page field 'controlnet.1' / 'references.0'."""
    kind, index = field.split(".")[:2]
    return f"{'ControlNet unit' if kind == 'controlnet' else 'reference image'} {int(index) + 1}"


def _unit_message(message: str, where: list[str]) -> str:
    """An A1111 error about `alwayson_scripts.controlnet.args[i]` told with the page's names for its units."""
    def label(m: re.Match[str]) -> str:
        i = int(m.group(1))
        if i >= len(where):
            return m.group(0)
        return _unit_label(where[i]) + (f" ({m.group(2)})" if m.group(2) else "")

    return _NO_IMAGE.sub(": upload or draw its control image", _ARG.sub(label, message))



def _field_name(a1111_field: str | None, control_fields: list[str] | None = None) -> str | None:
    """The page's name for an A1111 field in an error (`control_fields`: the page's field of each ControlNet arg)."""
    names = {"cfg_scale": "cfg", "sampler_name": "sampler", "denoising_strength": "denoise",
             "sd_model_checkpoint": "model", "override_settings": "clip_skip", "init_images": "init_image",
             "script_name": "sd_upscale", "script_args": "sd_upscale"}
    if a1111_field is None:
        return None
    m = _ARG.match(a1111_field)
    if m and control_fields is not None and int(m.group(1)) < len(control_fields):
        unit = control_fields[int(m.group(1))]
        return f"{unit}.{m.group(2)}" if m.group(2) else unit
    if a1111_field == "alwayson_scripts" and control_fields:
        return control_fields[0].split(".")[0]
    base = a1111_field.split("[")[0]
    return names.get(base, base)


@router.post("/generate", summary="Queue images from the page's settings; follow them over /ws")
async def generate(request: Request, params: StudioParams) -> Any:
    st = state_of(request)
    try:
        job = await run_in_threadpool(translate, st, params)
    except StudioError as ex:
        return _error(ex.message, ex.field, ex.status)
    extra = {"studio": True, **({"client_id": params.client_id} if params.client_id else {})}
    queued = st.queue.submit(job.listing_prompt, extra_data=extra, outputs_to_execute=["9"], kind="sdapi",
                             payload=job.payload)
    from .store import plain_number

    return {"prompt_id": queued.prompt_id, "number": plain_number(queued.number), "seeds": job.payload["seeds"],
            "count": len(job.payload["seeds"])}


@router.post("/workflow", summary="The ComfyUI API workflow of the page's settings (for the node editor)")
async def workflow(request: Request, params: StudioParams) -> Any:
    st = state_of(request)
    try:
        job = await run_in_threadpool(translate, st, params)
    except StudioError as ex:
        return _error(ex.message, ex.field, ex.status)
    return {"workflow": job.payload["workflows"][0], "seed": job.payload["seeds"][0]}


# -- options -----------------------------------------------------------------------------------------------------

_KIND_CACHE: dict[tuple[str, int], tuple[str, str | None]] = {}


def checkpoint_kind(path: Path) -> tuple[str, str | None]:
    """(label, family) of a checkpoint from its header, cached by (path, mtime)."""
    from ..models.detect import detect_file

    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return "missing", None
    if key not in _KIND_CACHE:
        try:
            kind = detect_file(path)
            _KIND_CACHE[key] = (kind.label, kind.family.value)
        except Exception as ex:  # unsupported or unreadable: shown, not fatal
            _KIND_CACHE[key] = (f"unsupported ({str(ex)[:80]})", None)
    return _KIND_CACHE[key]


def _options(st: ServerState) -> dict[str, Any]:
    from .. import default_model
    from ..sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

    registry = st.engine.registry
    builtin = {p.resolve() for p in registry.builtin_checkpoints if p.exists()}
    checkpoints = []
    for name, path in registry.entries("checkpoints").items():
        label, family = checkpoint_kind(path)
        is_builtin = path.resolve() in builtin
        checkpoints.append({"name": name, "label": label, "family": family, "builtin": is_builtin,
                            "native_size": default_model.NATIVE_SIZE if is_builtin and
                            path.name == default_model.FILE_NAME else None})
    try:
        embeddings = sorted(st.engine.embeddings().names())
    except Exception:
        embeddings = []
    default = st.options.current().get("sd_model_checkpoint")
    names = [c["name"] for c in checkpoints]
    if default not in names:
        default = names[0] if names else None
    limits = st.config.limits
    return {"checkpoints": checkpoints, "default_model": default, "loras": registry.list("loras"),
            "embeddings": embeddings, "samplers": list(SAMPLER_NAMES), "schedulers": list(SCHEDULER_NAMES),
            "size_presets": SIZE_PRESETS,
            "limits": {"max_width": limits.max_width, "max_height": limits.max_height, "max_steps": limits.max_steps,
                       "max_batch_size": limits.max_batch_size}}


@router.get("/options", summary="Models (with family), LoRAs, embeddings, samplers, schedulers, size presets")
async def options(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_options, state_of(request))


@router.get("/model-hash", summary="A checkpoint's A1111 short hash (computed once, then cached)")
async def model_hash(request: Request, name: str = Query(...)) -> Any:
    registry = state_of(request).engine.registry
    path = listed_checkpoint(registry, name)
    if path is None:
        return _error(f"no checkpoint named {name!r} is installed", "model", 404)
    if path.is_dir():
        return {"name": name, "hash": None}
    return {"name": name, "hash": await run_in_threadpool(registry.hashes.model_hash, path)}


# -- image parameters ----------------------------------------------------------------------------------------------

def image_details(meta: Any, registry: Any) -> dict[str, Any]:
    """What the page shows for an image (all its parameters) and the settings 'use these settings' applies."""
    from ..metadata.infotext import InfotextError, split_infotext
    from ..metadata.reading import params_from_metadata

    fields: list[list[str]] = []
    prompt = negative = ""
    if meta.parameters:
        prompt, negative, raw = split_infotext(meta.parameters)
        fields = [[k, str(v)] for k, v in raw.items()]
    elif meta.comfy.get("samplers"):
        c = meta.comfy
        prompt, negative = c.get("positive", ""), c.get("negative", "")
        for label, key in (("Checkpoint", "checkpoint"), ("Seed", "seed"), ("Steps", "steps"), ("CFG", "cfg"),
                           ("Sampler", "sampler_name"), ("Scheduler", "scheduler"), ("Denoise", "denoise"),
                           ("Init image", "init_image"), ("Samplers in the graph", "samplers")):
            if c.get(key) is not None:
                fields.append([label, str(c[key])])
        if c.get("width"):
            fields.append(["Size", f"{c['width']}x{c['height']}"])
        for lo in c.get("loras", []):
            fields.append(["LoRA", f"{lo.get('name')} (model {lo.get('strength_model')}, clip "
                                   f"{lo.get('strength_clip')})"])
    settings = None
    warnings = list(meta.warnings)
    try:
        found = params_from_metadata(meta)
    except (InfotextError, ValueError) as ex:
        found = None
        warnings.append(f"parameters not understood: {ex}")
    if found is not None:
        params, _ = found
        text = params.prompt
        if meta.parameters is None:  # ComfyUI graphs carry LoRAs as nodes: write them as prompt tags
            for lo in params.loras:
                text += f" <lora:{lo.name}:{lo.unet_weight:g}>"
        model = params.model
        if model:
            try:
                model = registry.name_of("checkpoints", registry.find("checkpoints", model)) or model
            except Exception:
                warnings.append(f"the model {model!r} is not installed here")
        settings = {"prompt": text, "negative_prompt": params.negative_prompt, "model": model,
                    "sampler": params.sampler, "scheduler": params.scheduler, "steps": params.steps,
                    "cfg": params.cfg, "seed": params.seed, "width": params.width, "height": params.height,
                    "clip_skip": params.clip_skip, "denoise": params.denoise, "batch_size": 1}
    return {"source": meta.source, "width": meta.width, "height": meta.height, "parameters": meta.parameters,
            "prompt": prompt, "negative_prompt": negative, "fields": fields, "settings": settings,
            "has_workflow": meta.workflow is not None or meta.prompt is not None, "workflow": meta.prompt,
            "warnings": warnings}


def _output_file(st: ServerState, filename: str, subfolder: str) -> Path:
    path = resolve(st.folders, "output", subfolder, filename)
    if not path.is_file():
        raise FileRequestError(404, f"image not found: {filename}")
    return path


@router.get("/image", summary="All parameters of an image in output/ and the settings to reuse them")
async def image(request: Request, filename: str = Query(...), subfolder: str = Query("")) -> Any:
    from ..metadata.reading import ImageMetadataError, read_image_metadata

    st = state_of(request)
    path = _output_file(st, filename, subfolder)
    try:
        meta = await run_in_threadpool(read_image_metadata, path)
    except ImageMetadataError as ex:
        return _error(str(ex))
    return {"filename": filename, "subfolder": subfolder, **image_details(meta, st.engine.registry)}


@router.post("/png-info", summary="Parameters of a dropped image (darkroom, A1111, ComfyUI, NovelAI)")
async def png_info(request: Request) -> Any:
    from ..metadata.reading import ImageMetadataError, read_image_metadata

    st = state_of(request)
    data = await request.body()
    if data[:5] == b"data:" or data[:4] == b"iVBO":  # a data URL or base64 text instead of raw bytes
        try:
            data = base64.b64decode(data.split(b",", 1)[-1], validate=False)
        except (binascii.Error, ValueError):
            return _error("the image is not valid base64")
    if not data:
        return _error("no image in the request body")
    try:
        meta = await run_in_threadpool(read_image_metadata, data)
    except ImageMetadataError as ex:
        return _error(str(ex))
    if meta.width * meta.height > st.config.limits.max_image_pixels:
        return _error("the image is too large")
    return image_details(meta, st.engine.registry)


# -- gallery ---------------------------------------------------------------------------------------------------------

def gallery_of(request: Request) -> Gallery:
    st = state_of(request)
    gallery = getattr(request.app.state, "darkroom_gallery", None)
    if gallery is None or gallery.root != st.folders.output:
        gallery = Gallery(st.folders.output)
        request.app.state.darkroom_gallery = gallery
    return gallery


@router.get("/gallery", summary="Images in output/, newest first; q searches prompt text")
async def gallery(request: Request, q: str = Query(""), offset: int = Query(0, ge=0),
                  limit: int = Query(60, ge=1, le=500)) -> dict[str, Any]:
    g = gallery_of(request)
    total, items = await run_in_threadpool(g.search, q, offset, limit)
    return {"total": total, "offset": offset, "items": [it.public() for it in items]}


@router.get("/thumb", summary="A small WebP of an image in output/")
async def thumb(request: Request, filename: str = Query(...), subfolder: str = Query(""),
                size: int = Query(256, ge=32, le=1024)) -> Response:
    path = _output_file(state_of(request), filename, subfolder)
    data = await run_in_threadpool(gallery_of(request).thumbnail, path, size)
    return Response(data, media_type="image/webp", headers={"Cache-Control": "max-age=3600"})


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str
    subfolder: str = ""


def _delete(st: ServerState, g: Gallery, filename: str, subfolder: str) -> list[str]:
    path = _output_file(st, filename, subfolder)
    path.unlink()
    g.forget(path)
    gone = []
    for prompt_id, others in history_jobs_with(st.store, filename, subfolder):
        alive = [o for o in others if (st.folders.output / (o.get("subfolder") or "") / o.get("filename", "")).is_file()]
        if not alive:
            gone.append(prompt_id)
    if gone:
        st.store.delete_history(gone)
    return gone


@router.post("/delete", summary="Delete an image from output/ (and its history entry once it has no images left)")
async def delete(request: Request, req: DeleteRequest) -> dict[str, Any]:
    st = state_of(request)
    gone = await run_in_threadpool(_delete, st, gallery_of(request), req.filename, req.subfolder)
    return {"deleted": True, "history_removed": gone}


# -- upscale -----------------------------------------------------------------------------------------------------------

@router.post("/upscale", summary="Upscale an image of output/ on the worker into a new image (extras infotext)")
async def upscale(request: Request, req: UpscaleRequest) -> Any:
    try:
        return await run_upscale(state_of(request), req)
    except StudioError as ex:
        return _error(ex.message, ex.field, ex.status)
