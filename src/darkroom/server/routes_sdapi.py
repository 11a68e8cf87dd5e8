"""A1111's `/sdapi/v1` API (modules/api/api.py, 1.10): generation through the shared queue, plus the listings.

txt2img/img2img translate the request (sdapi.build_job), queue one job and await its answer without blocking the
event loop; the worker runs it like any other job. Errors use A1111's body `{error, detail, body, errors}`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image

from .sdapi import SdapiError, build_job
from .sdapi_models import (ErrorResponse, ExtrasBaseRequest, ExtrasBatchImagesRequest, ExtrasBatchImagesResponse,
                           ExtrasSingleImageRequest, ExtrasSingleImageResponse, GenerationResponse, Img2ImgRequest,
                           PngInfoRequest, PngInfoResponse, ProgressResponse, SamplerItem, SchedulerItem, SdModel,
                           Txt2ImgRequest, UpscalerItem)
from .sdapi_options import OptionError, cached_sha256, checkpoint_title
from .state import ServerState, state_of
from .store import Job

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
_ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}


def a1111_error(status: int, message: str, kind: str = "HTTPException") -> JSONResponse:
    """A1111's error body."""
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status)


async def _generate(request: Request, req: Txt2ImgRequest | Img2ImgRequest) -> Any:
    st = state_of(request)
    try:
        translated = await run_in_threadpool(build_job, req, st.sdapi_context())
    except SdapiError as ex:
        return a1111_error(ex.status, ex.message, "BadRequest" if ex.status == 400 else "HTTPException")
    prompt_id = req.force_task_id or str(uuid.uuid4())
    future = st.worker.wait_for(prompt_id, asyncio.get_running_loop())  # before queueing: never miss the end
    try:
        st.queue.submit(translated.listing_prompt, extra_data={}, outputs_to_execute=["9"], kind="sdapi",
                        payload=translated.payload, prompt_id=prompt_id)
    except ValueError as ex:
        st.worker.forget(prompt_id, future)
        return a1111_error(400, str(ex), "BadRequest")
    done, answer = await future
    parameters = translated.payload["request"]
    if answer is None:
        return a1111_error(409 if done.status == "cancelled" else 500, done.error or "generation failed",
                           "RuntimeError")
    if done.status == "error" and not answer.get("count"):
        return a1111_error(500, done.error or "generation failed", "RuntimeError")
    return {"images": answer["images"], "parameters": parameters, "info": answer["info"]}


@router.post("/txt2img", response_model=GenerationResponse, responses=_ERRORS, summary="Text to image")
async def txt2img(request: Request, req: Txt2ImgRequest) -> Any:
    return await _generate(request, req)


@router.post("/img2img", response_model=GenerationResponse, responses=_ERRORS,
             summary="Image to image, inpainting with a mask")
async def img2img(request: Request, req: Img2ImgRequest) -> Any:
    return await _generate(request, req)


# -- settings and models --------------------------------------------------------------------------------------

@router.get("/options", summary="Settings")
def get_options(request: Request) -> dict[str, Any]:
    return state_of(request).options.public()


@router.post("/options", responses=_ERRORS, summary="Change settings (sd_model_checkpoint switches the model)")
def set_options(request: Request, changes: dict[str, Any]) -> Any:
    try:
        state_of(request).options.update(changes)
    except OptionError as ex:
        return a1111_error(400, str(ex), "BadRequest")
    return None


@router.get("/cmd-flags", summary="Command line flags (darkroom's server settings)")
def cmd_flags(request: Request) -> dict[str, Any]:
    cfg = state_of(request).config
    return {"listen": not cfg.loopback, "port": cfg.port, "api": True, "nowebui": False,
            "data_dir": str(cfg.data_dir), "api_auth": bool(cfg.token)}


@router.get("/sd-models", response_model=list[SdModel], summary="Installed checkpoints")
def sd_models(request: Request) -> list[dict[str, Any]]:
    reg = state_of(request).engine.registry
    out = []
    for name, path in reg.entries("checkpoints").items():
        sha = cached_sha256(reg, path)
        out.append({"title": checkpoint_title(reg, name), "model_name": name.rsplit(".", 1)[0].replace("/", "_"),
                    "hash": sha[:10] if sha else None, "sha256": sha, "filename": str(path), "config": None})
    return out


@router.get("/sd-vae", summary="Installed VAE files")
def sd_vae(request: Request) -> list[dict[str, Any]]:
    reg = state_of(request).engine.registry
    return [{"model_name": name, "filename": str(path)} for name, path in reg.entries("vae").items()]


@router.post("/refresh-checkpoints", summary="Rescan checkpoints (darkroom always reads the folders)")
def refresh_checkpoints() -> None:
    return None


@router.post("/refresh-vae", summary="Rescan VAEs")
def refresh_vae() -> None:
    return None


@router.post("/refresh-loras", summary="Rescan LoRAs")
def refresh_loras() -> None:
    return None


@router.post("/refresh-embeddings", summary="Rescan embeddings")
def refresh_embeddings(request: Request) -> None:
    try:
        state_of(request).engine.embeddings().refresh(force=True)
    except Exception:
        pass
    return None


@router.post("/unload-checkpoint", summary="Unload models after the current job")
def unload_checkpoint(request: Request) -> None:
    state_of(request).worker.request_free(unload_models=True, free_memory=True)
    return None


@router.post("/reload-checkpoint", summary="Models load again on the next job")
def reload_checkpoint() -> None:
    return None


@router.get("/samplers", response_model=list[SamplerItem], summary="Samplers (A1111 labels)")
def samplers() -> list[dict[str, Any]]:
    from ..sampling import A1111_SAMPLERS, SAMPLER_NAMES

    return [{"name": s.label, "aliases": list(s.aliases),
             "options": {"scheduler": s.automatic} if s.writes_automatic else {}}
            for s in A1111_SAMPLERS if s.sampler in SAMPLER_NAMES]


@router.get("/schedulers", response_model=list[SchedulerItem], summary="Schedule types")
def schedulers() -> list[dict[str, Any]]:
    from ..sampling import A1111_SCHEDULES

    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None, "default_rho": -1,
             "need_inner_model": False} for s in A1111_SCHEDULES]


@router.get("/upscalers", response_model=list[UpscalerItem],
            summary="Image upscalers (extras and hires fix): None, Lanczos, Nearest and the upscale model files")
def upscalers(request: Request) -> list[dict[str, Any]]:
    from .sdapi_extras import upscaler_rows

    return upscaler_rows(state_of(request).engine.registry)


@router.get("/latent-upscale-modes", summary="Latent upscale modes for hires fix")
def latent_upscale_modes() -> list[dict[str, str]]:
    from .sdapi import LATENT_UPSCALERS

    return [{"name": n} for n in LATENT_UPSCALERS]


@router.get("/loras", summary="Installed LoRAs")
def loras(request: Request) -> list[dict[str, Any]]:
    from .routes_comfy import read_safetensors_metadata

    reg = state_of(request).engine.registry
    out = []
    for name, path in reg.entries("loras").items():
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        meta = None
        if str(path).endswith(".safetensors"):
            try:
                meta = read_safetensors_metadata(path)
            except OSError:
                meta = None
        out.append({"name": stem, "alias": (meta or {}).get("ss_output_name", stem), "path": str(path),
                    "metadata": meta or {}})
    return out


@router.get("/embeddings", summary="Textual-inversion embeddings")
def embeddings(request: Request) -> dict[str, Any]:
    lib = state_of(request).engine.embeddings()
    loaded: dict[str, Any] = {}
    for name in lib.names():
        try:
            emb = lib.get(name)
        except Exception:
            emb = None
        if emb is None:
            continue
        vectors = int(getattr(emb, "num_vectors", 0) or 0)
        loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                        "vectors": vectors}
    return {"loaded": loaded, "skipped": {}}


@router.get("/hypernetworks", summary="Hypernetworks (not supported: empty)")
def hypernetworks() -> list[Any]:
    return []


@router.get("/face-restorers", summary="Face restorers (none)")
def face_restorers() -> list[Any]:
    return []


@router.get("/realesrgan-models", summary="Real-ESRGAN models installed under A1111's names (R-ESRGAN 4x+ …)")
def realesrgan_models(request: Request) -> list[dict[str, Any]]:
    from .sdapi_extras import upscaler_rows

    return [{"name": r["name"], "path": r["model_path"], "scale": r["scale"]}
            for r in upscaler_rows(state_of(request).engine.registry) if r["name"].startswith("R-ESRGAN")]


@router.get("/prompt-styles", summary="Styles from styles.csv in the data folder")
def prompt_styles(request: Request) -> list[dict[str, str]]:
    return state_of(request).styles.all()


@router.get("/scripts", summary="Scripts: selectable 'sd upscale' (img2img); alwayson: refiner, controlnet")
def scripts() -> dict[str, list[str]]:
    from .sdapi_scripts import script_names  # issue #7: SD upscale

    return {mode: [*script_names(mode), "refiner", "controlnet"] for mode in ("txt2img", "img2img")}


@router.get("/script-info", summary="Script arguments")
def script_info(request: Request) -> list[dict[str, Any]]:
    from .sdapi_scripts import script_info as selectable

    args = [{"label": "Refiner", "value": False}, {"label": "Checkpoint", "value": ""},
            {"label": "Switch at", "value": 0.8, "minimum": 0.01, "maximum": 1.0, "step": 0.01}]
    return [*selectable(state_of(request).engine.registry),
            *({"name": "refiner", "is_alwayson": True, "is_img2img": flag, "args": args} for flag in (False, True))]


@router.get("/extensions", summary="Installed extensions (none)")
def extensions() -> list[Any]:
    return []


@router.get("/memory", summary="RAM and accelerator memory")
def memory(request: Request) -> dict[str, Any]:
    from .routes_comfy import _memory

    total, free = _memory()
    out: dict[str, Any] = {"ram": {"free": free, "used": total - free, "total": total}}
    try:
        import torch

        device = state_of(request).engine.device
        if device.type == "cuda":
            f, t = torch.cuda.mem_get_info(device)
            stats = torch.cuda.memory_stats(device)
            out["cuda"] = {
                "system": {"free": f, "used": t - f, "total": t},
                "active": {"current": stats.get("active_bytes.all.current", 0),
                           "peak": stats.get("active_bytes.all.peak", 0)},
                "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                              "peak": stats.get("allocated_bytes.all.peak", 0)},
                "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                             "peak": stats.get("reserved_bytes.all.peak", 0)},
                "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                             "peak": stats.get("inactive_split_bytes.all.peak", 0)},
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
        else:
            out["cuda"] = {"error": f"the device is {device.type}, not CUDA"}
    except Exception as ex:
        out["cuda"] = {"error": str(ex)}
    return out


# -- progress and control -----------------------------------------------------------------------------------

def progress_body(st: ServerState, skip_current_image: bool) -> dict[str, Any]:
    """A1111's /progress for the job running now (all zeros when idle)."""
    p = st.worker.progress
    job = p.job
    fraction = p.fraction()
    elapsed = time.time() - p.started if job is not None else 0.0
    eta = (elapsed / fraction - elapsed) if fraction > 0 else 0.0
    image = None
    if job is not None and not skip_current_image and p.preview is not None:
        buf = io.BytesIO()
        p.preview.save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "progress": round(fraction, 4), "eta_relative": round(max(eta, 0.0), 3),
        "state": {"skipped": p.skipped, "interrupted": p.interrupted, "stopping_generation": False,
                  "job": job.prompt_id if job is not None else "",
                  "job_count": (p.image_count or 1) if job is not None else 0,
                  "job_timestamp": p.job_timestamp or "0", "job_no": p.image_index if job is not None else 0,
                  "sampling_step": p.step, "sampling_steps": p.steps},
        "current_image": image, "textinfo": None,
        "current_task": job.prompt_id if job is not None else None,
    }


@router.get("/progress", response_model=ProgressResponse, summary="Progress of the running job, with a live preview")
def progress(request: Request, skip_current_image: bool = Query(False)) -> dict[str, Any]:
    return progress_body(state_of(request), skip_current_image)


@router.post("/interrupt", summary="Stop the running job")
def interrupt(request: Request) -> None:
    state_of(request).worker.interrupt(None)
    return None


@router.post("/skip", summary="Skip the current image of the running job")
def skip(request: Request) -> None:
    state_of(request).worker.skip()
    return None


@router.post("/png-info", response_model=PngInfoResponse, responses=_ERRORS,
             summary="Generation parameters stored in an image")
def png_info(request: Request, req: PngInfoRequest) -> Any:
    from ..metadata.png import ImageMetadataError, read_image_metadata
    from .files import FileRequestError, decode_base64

    st = state_of(request)
    if not req.image:
        return a1111_error(404, "Image not found")
    try:
        data = decode_base64(req.image, what="image", max_bytes=st.config.limits.max_body_bytes)
        with Image.open(io.BytesIO(data)) as probe:  # header only: refuse bombs before anything decodes
            w, h = probe.size
        if w * h > st.config.limits.max_image_pixels:
            return a1111_error(400, f"image is too large ({w}x{h} pixels)", "BadRequest")
        meta = read_image_metadata(data)
    except FileRequestError as ex:
        return a1111_error(ex.status, ex.message, "BadRequest")
    except (ImageMetadataError, OSError, ValueError) as ex:
        return a1111_error(400, f"image is not readable: {ex}", "BadRequest")
    info = meta.parameters or ""
    items = {k: v for k, v in meta.text.items() if k != "parameters"}
    return {"info": info, "items": items, "parameters": dict(meta.infotext) if info else {}}


async def _extras(request: Request, req: ExtrasBaseRequest, images: list[str]) -> Any:
    """Translate, queue on the worker and await an extras job; answers {images, html_info} or A1111's error."""
    from .sdapi_extras import assemble_extras, build_extras_job

    st = state_of(request)
    try:
        translated = await run_in_threadpool(build_extras_job, req, images, st.sdapi_context())
    except SdapiError as ex:
        return a1111_error(ex.status, ex.message, "BadRequest" if ex.status == 400 else "HTTPException")
    prompt_id = str(uuid.uuid4())
    if not translated.payload["run_workflows"]:  # upscaler_1 "None": the images come back as they are
        job = Job(prompt_id=prompt_id, number=0, prompt={}, kind="sdapi", payload=translated.payload)
        return await run_in_threadpool(assemble_extras, job, [], folders=st.folders)
    outputs = [nid for plan in translated.payload["images"] for nid in plan["outputs"]]
    future = st.worker.wait_for(prompt_id, asyncio.get_running_loop())
    try:
        st.queue.submit(translated.listing_prompt, extra_data={}, outputs_to_execute=sorted(set(outputs)),
                        kind="sdapi", payload=translated.payload, prompt_id=prompt_id)
    except ValueError as ex:
        st.worker.forget(prompt_id, future)
        return a1111_error(400, str(ex), "BadRequest")
    done, answer = await future
    if answer is None or done.status == "error" or not answer.get("count"):
        status = 409 if done.status in ("cancelled", "interrupted") else 500
        return a1111_error(status, done.error or "upscaling failed", "RuntimeError")
    return answer


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse, responses=_ERRORS,
             summary="Upscale one image (upscaler_1, optionally blended with upscaler_2)")
async def extra_single_image(request: Request, req: ExtrasSingleImageRequest) -> Any:
    answer = await _extras(request, req, [req.image])
    if isinstance(answer, JSONResponse):
        return answer
    return {"html_info": answer["html_info"], "image": answer["images"][0]}


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse, responses=_ERRORS,
             summary="Upscale several images with the same settings")
async def extra_batch_images(request: Request, req: ExtrasBatchImagesRequest) -> Any:
    answer = await _extras(request, req, [f.data for f in req.imageList])
    if isinstance(answer, JSONResponse):
        return answer
    return {"html_info": answer["html_info"], "images": answer["images"]}


@router.post("/interrogate", responses={501: {"model": ErrorResponse}}, summary="Caption an image (not available)")
def interrogate() -> Any:
    return a1111_error(501, "interrogate (CLIP/DeepDanbooru captions) is not available in darkroom", "NotImplemented")
