"""ComfyUI's HTTP API (server.py, 0.3.x): every route here is served both plain and under `/api`.

Handlers never touch the model: POST /prompt validates and queues, everything else reads the store, the model
folders or files. Bodies and answers follow ComfyUI's shapes (see shared/reference/comfyui-protocol.md §1).
"""

from __future__ import annotations

import json
import mimetypes
import os
import platform
import re
import struct
import sys
import time
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image

from ..settings import MODEL_FOLDERS
from .config import Limits
from .files import (FileRequestError, channel_bytes, encode_png, open_image, preview_bytes, resolve, save_upload,
                    split_annotation)
from .state import ServerState, state_of

router = APIRouter(tags=["comfyui"])

#: ComfyUI release whose protocol this server speaks (reported in /system_stats).
COMFYUI_PROTOCOL_VERSION = "0.3.64"
REQUIRED_FRONTEND_VERSION = "1.27.10"

_PROMPT_BODY = {
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["prompt"],
        "properties": {
            "prompt": {"type": "object", "additionalProperties": {"type": "object"},
                       "description": "API-format workflow {node_id: {class_type, inputs}}"},
            "client_id": {"type": "string"}, "prompt_id": {"type": "string"},
            "extra_data": {"type": "object"}, "front": {"type": "boolean"}, "number": {"type": "number"},
            "partial_execution_targets": {"type": "array", "items": {"type": "string"}},
        }}}},
    "required": True,
}
_ERROR_400 = {400: {"description": "ComfyUI error body: {error: {type, message, details, extra_info}, node_errors}"}}


def comfy_error(kind: str, message: str, details: str = "", node_errors: dict[str, Any] | None = None,
                status: int = 400, extra_info: dict[str, Any] | None = None) -> JSONResponse:
    """ComfyUI's `{"error": {...}, "node_errors": {...}}` answer."""
    return JSONResponse({"error": {"type": kind, "message": message, "details": details,
                                   "extra_info": extra_info or {}}, "node_errors": node_errors or {}},
                        status_code=status)


def _escapes(prefix: str) -> bool:
    """A SaveImage prefix that is absolute or climbs out with '..' (refused before queueing)."""
    p = prefix.replace("\\", "/")
    return p.startswith("/") or bool(re.match(r"^[A-Za-z]:", p)) or ".." in p.split("/") or "\0" in p


def limit_errors(prompt: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Server limits on a workflow's sizes, steps, batches and texts, as ComfyUI `node_errors`."""
    bounds = {"width": limits.max_width, "height": limits.max_height, "steps": limits.max_steps,
              "batch_size": limits.max_batch_size, "amount": limits.max_batch_size}
    errors: dict[str, Any] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        found = []
        for name, value in node["inputs"].items():
            if isinstance(value, str) and len(value) > limits.max_prompt_chars:
                found.append({"type": "value_too_long", "message": "Value is longer than the server allows",
                              "details": f"{name}: {len(value)} characters > {limits.max_prompt_chars}",
                              "extra_info": {"input_name": name, "received_value": f"<{len(value)} characters>"}})
            elif name == "filename_prefix" and isinstance(value, str) and _escapes(value):
                found.append({"type": "value_not_allowed", "message": "File name prefix leaves the output folder",
                              "details": f"{name}: {value!r}",
                              "extra_info": {"input_name": name, "received_value": value}})
            elif (name in bounds and isinstance(value, (int, float)) and not isinstance(value, bool)
                  and value > bounds[name]):
                found.append({"type": "value_bigger_than_max", "message": "Value bigger than the server's limit",
                              "details": f"{name} {value} > {bounds[name]}",
                              "extra_info": {"input_name": name, "input_config": {"max": bounds[name]},
                                             "received_value": value}})
        if found:
            errors[str(node_id)] = {"errors": found, "dependent_outputs": [], "class_type": node.get("class_type")}
    return errors


# -- queueing ----------------------------------------------------------------------------------------------------

@router.get("/prompt", summary="Queue length")
def get_prompt(request: Request) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": state_of(request).queue.remaining()}}


@router.post("/prompt", summary="Validate and queue an API-format workflow", openapi_extra={"requestBody": _PROMPT_BODY},
             responses=_ERROR_400)
async def post_prompt(request: Request) -> Any:
    st = state_of(request)
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as ex:
        return comfy_error("invalid_prompt", "Invalid JSON in the request body", str(ex))
    if not isinstance(body, dict):
        return comfy_error("invalid_prompt", "The request body must be a JSON object", type(body).__name__)
    if "prompt" not in body:
        return comfy_error("no_prompt", "No prompt provided", "No prompt provided")
    prompt = body["prompt"]
    if isinstance(prompt, dict) and len(prompt) > st.config.limits.max_nodes:
        return comfy_error("invalid_prompt", "Workflow too large", f"{len(prompt)} nodes > {st.config.limits.max_nodes}")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        return comfy_error("invalid_prompt", "extra_data must be an object", type(extra_data).__name__)
    targets = body.get("partial_execution_targets")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, (str, int)) for t in targets)):
        return comfy_error("invalid_prompt", "partial_execution_targets must be a list of node ids", str(targets))
    from ..graph import validate_prompt

    result = await run_in_threadpool(validate_prompt, st.node_registry, prompt, targets)
    if not result.ok:
        return JSONResponse(result.response_body(), status_code=400)
    over = limit_errors(prompt, st.config.limits)
    if over:
        return comfy_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                           "; ".join(e["details"] for ne in over.values() for e in ne["errors"]), over)
    number = body.get("number")
    if number is not None:
        try:
            number = float(number)
        except (TypeError, ValueError):
            return comfy_error("invalid_prompt", "number must be a number", str(number))
    client_id = body.get("client_id")
    if client_id is not None:
        extra_data = {**extra_data, "client_id": str(client_id)}
    prompt_id = body.get("prompt_id")
    if prompt_id is not None and (not isinstance(prompt_id, str) or not prompt_id.strip() or len(prompt_id) > 200):
        return comfy_error("invalid_prompt", "prompt_id must be a non-empty string", str(prompt_id))
    try:
        job = st.queue.submit(prompt, extra_data=extra_data, outputs_to_execute=result.outputs,
                              front=bool(body.get("front")), number=number, prompt_id=prompt_id)
    except ValueError as ex:
        return comfy_error("invalid_prompt", str(ex), str(prompt_id))
    from .store import plain_number

    return {"prompt_id": job.prompt_id, "number": plain_number(job.number), "node_errors": result.node_errors}


@router.get("/queue", summary="Running and pending jobs")
def get_queue(request: Request) -> dict[str, Any]:
    st = state_of(request)
    running = st.queue.running
    return {"queue_running": [running.queue_item()] if running is not None else [],
            "queue_pending": [j.queue_item() for j in st.queue.pending()]}


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FileRequestError(400, "invalid JSON body") from None
    if not isinstance(data, dict):
        raise FileRequestError(400, "the JSON body must be an object")
    return data


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise FileRequestError(400, "'delete' must be a list of prompt ids")
    return [str(v) for v in value]


@router.post("/queue", summary="Clear the queue or delete pending jobs ({clear: true} / {delete: [ids]})")
async def post_queue(request: Request) -> Response:
    st = state_of(request)
    data = await _json_body(request)
    removed: list[str] = []
    if data.get("clear"):
        removed += st.queue.delete(None)
    if "delete" in data:
        removed += st.queue.delete(_ids(data["delete"]))
    for prompt_id in removed:
        st.worker.abandon(prompt_id, "the job was removed from the queue before it ran")
    return Response(status_code=200)


@router.post("/interrupt", summary="Interrupt the running job (all, or only the given prompt_id)")
async def post_interrupt(request: Request) -> Response:
    st = state_of(request)
    data = await _json_body(request)
    prompt_id = data.get("prompt_id")
    st.worker.interrupt(str(prompt_id) if prompt_id else None)
    return Response(status_code=200)


@router.post("/free", summary="Unload models and/or free cached results after the current job")
async def post_free(request: Request) -> Response:
    st = state_of(request)
    data = await _json_body(request)
    st.worker.request_free(bool(data.get("unload_models")), bool(data.get("free_memory")))
    return Response(status_code=200)


# -- history -----------------------------------------------------------------------------------------------------

@router.get("/history", summary="Finished jobs, oldest first ({prompt_id: entry})")
def get_history(request: Request, max_items: int | None = Query(None, ge=0),
                offset: int = Query(-1)) -> dict[str, Any]:
    st = state_of(request)
    return {j.prompt_id: j.history_entry() for j in st.store.history(max_items, offset)}


@router.get("/history/{prompt_id}", summary="One finished job ({} if unknown or not finished)")
def get_history_item(request: Request, prompt_id: str) -> dict[str, Any]:
    job = state_of(request).store.get(prompt_id)
    if job is None or job.status in ("pending", "running"):
        return {}
    return {job.prompt_id: job.history_entry()}


@router.post("/history", summary="Clear the history or delete entries ({clear: true} / {delete: [ids]})")
async def post_history(request: Request) -> Response:
    st = state_of(request)
    data = await _json_body(request)
    if data.get("clear"):
        st.store.delete_history(None)
    if "delete" in data:
        st.store.delete_history(_ids(data["delete"]))
    return Response(status_code=200)


# -- files -------------------------------------------------------------------------------------------------------

@router.get("/view", summary="An image from output/, input/ or temp/ (optionally re-encoded or one channel)",
            responses={200: {"content": {"image/png": {}}}, 400: {}, 403: {}, 404: {}})
def view(request: Request, filename: str = Query(...), type: str = Query("output"),  # noqa: A002
         subfolder: str = Query(""), preview: str | None = Query(None), channel: str | None = Query(None)) -> Any:
    st = state_of(request)
    name, annotated = split_annotation(filename)
    kind = annotated or type or "output"
    path = resolve(st.folders, kind, subfolder, name)
    if not path.is_file():
        return JSONResponse({"error": f"file not found: {filename}"}, status_code=404)
    if preview:
        data, media = preview_bytes(path, preview)
        return Response(data, media_type=media)
    if channel in ("rgb", "a"):
        return Response(channel_bytes(path, channel), media_type="image/png",
                        headers={"Content-Disposition": f'filename="{name}"'})
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Content-Disposition": f'filename="{name}"'})


def _store_upload(st: ServerState, data: bytes, kind: str, subfolder: str, filename: str,
                  overwrite: bool) -> dict[str, str]:
    folder = st.folders.of(kind)
    name, sub = save_upload(data, folder, subfolder, filename, overwrite=overwrite and kind != "output")
    return {"name": name, "subfolder": sub, "type": kind}


@router.post("/upload/image", summary="Upload an image into input/ (or temp/, output/)", responses=_ERROR_400)
async def upload_image(request: Request, image: UploadFile = File(...), kind: str = Form("input", alias="type"),
                       subfolder: str = Form(""), overwrite: str = Form("false")) -> dict[str, str]:
    st = state_of(request)
    data = await image.read()
    if len(data) > st.config.limits.max_upload_bytes:
        raise FileRequestError(413, f"upload larger than {st.config.limits.max_upload_bytes} bytes")
    await run_in_threadpool(open_image, data, max_pixels=st.config.limits.max_image_pixels, what="upload")
    return await run_in_threadpool(_store_upload, st, data, kind or "input", subfolder, image.filename or "",
                                   overwrite.lower() in ("true", "1"))


def _mask_onto_original(st: ServerState, mask_data: bytes, ref: dict[str, Any]) -> bytes:
    """ComfyUI's /upload/mask: the upload's alpha becomes the original's alpha; text chunks are kept."""
    filename, annotated = split_annotation(str(ref.get("filename", "")))
    kind = ref.get("type") or annotated or "output"
    path = resolve(st.folders, kind, str(ref.get("subfolder", "") or ""), filename)
    if not path.is_file():
        raise FileRequestError(404, f"original image not found: {filename}")
    with open(path, "rb") as f:
        original = open_image(f.read(), max_pixels=st.config.limits.max_image_pixels, what="original image")
    mask = open_image(mask_data, max_pixels=st.config.limits.max_image_pixels, what="mask")
    texts = {k: v for k, v in getattr(original, "text", {}).items() if isinstance(v, str)}
    out = original.convert("RGBA")
    alpha = mask.convert("RGBA").resize(out.size, Image.LANCZOS).getchannel("A")
    out.putalpha(alpha)
    return encode_png(out, **texts)


@router.post("/upload/mask", summary="Upload a mask: its alpha is applied to original_ref and saved as a new image",
             responses=_ERROR_400)
async def upload_mask(request: Request, image: UploadFile = File(...), original_ref: str = Form(...),
                      kind: str = Form("input", alias="type"), subfolder: str = Form(""),
                      overwrite: str = Form("false")) -> dict[str, str]:
    st = state_of(request)
    try:
        ref = json.loads(original_ref)
    except json.JSONDecodeError:
        raise FileRequestError(400, "original_ref must be JSON {filename, subfolder, type}") from None
    if not isinstance(ref, dict) or not ref.get("filename"):
        raise FileRequestError(400, "original_ref must name a filename")
    data = await image.read()
    merged = await run_in_threadpool(_mask_onto_original, st, data, ref)
    return await run_in_threadpool(_store_upload, st, merged, kind or "input", subfolder, image.filename or "",
                                   overwrite.lower() in ("true", "1"))


# -- nodes, models, system ----------------------------------------------------------------------------------------

@router.get("/object_info", summary="Every node class (ComfyUI V1 NodeInfo)")
def get_object_info(request: Request) -> dict[str, Any]:
    from ..graph import object_info

    return object_info(state_of(request).node_registry)


@router.get("/object_info/{node_class}", summary="One node class ({} if unknown)")
def get_object_info_one(request: Request, node_class: str) -> dict[str, Any]:
    from ..graph import object_info

    return object_info(state_of(request).node_registry, node_class)


@router.get("/embeddings", summary="Textual-inversion names (file stems)")
def get_embeddings(request: Request) -> list[str]:
    try:
        return list(state_of(request).engine.embeddings().names())
    except Exception:
        return []


@router.get("/models", summary="Model folder kinds")
def get_model_folders() -> list[str]:
    return list(MODEL_FOLDERS)


@router.get("/models/{folder}", summary="Model files of one kind (relative names)", responses={404: {}})
def get_models(request: Request, folder: str) -> Any:
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    return state_of(request).engine.registry.list(folder)


def read_safetensors_metadata(path: os.PathLike[str] | str) -> dict[str, Any] | None:
    """The `__metadata__` object of a safetensors header (None when the file has none or is not safetensors)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > 100 * 1024 * 1024:
            return None
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


@router.get("/view_metadata/{folder}", summary="A safetensors file's __metadata__", responses={404: {}})
def view_metadata(request: Request, folder: str, filename: str = Query(...)) -> Any:
    st = state_of(request)
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    registry = st.engine.registry
    try:
        path = registry.find(folder, filename)
    except Exception:
        return JSONResponse({"error": "model not found"}, status_code=404)
    if registry.name_of(folder, path) is None or not str(path).endswith(".safetensors"):
        return JSONResponse({"error": "model not found"}, status_code=404)
    meta = read_safetensors_metadata(path)
    if meta is None:
        return JSONResponse({"error": "no metadata"}, status_code=404)
    return meta


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    total = free = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        total, free = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    return total, free


def device_stats(engine: Any) -> list[dict[str, Any]]:
    """ComfyUI's /system_stats devices list for the engine's device."""
    import torch

    device = engine.device
    total, free = _memory()
    entry = {"name": str(device), "type": device.type, "index": device.index, "vram_total": total,
             "vram_free": free, "torch_vram_total": 0, "torch_vram_free": 0}
    if device.type == "cuda":
        free_b, total_b = torch.cuda.mem_get_info(device)
        entry.update(name=f"{device} {torch.cuda.get_device_name(device)}", vram_total=total_b, vram_free=free_b,
                     torch_vram_total=torch.cuda.memory_reserved(device),
                     torch_vram_free=torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return [entry]


@router.get("/system_stats", summary="System and device information")
def system_stats(request: Request) -> dict[str, Any]:
    import torch

    from .. import __version__

    st = state_of(request)
    total, free = _memory()
    return {
        "system": {"os": platform.system().lower() if os.name != "nt" else "nt", "ram_total": total, "ram_free": free,
                   "comfyui_version": COMFYUI_PROTOCOL_VERSION, "darkroom_version": __version__,
                   "required_frontend_version": REQUIRED_FRONTEND_VERSION, "installed_templates_version": None,
                   "required_templates_version": None, "python_version": sys.version,
                   "pytorch_version": torch.__version__, "embedded_python": False, "argv": sys.argv,
                   "uptime_s": round(time.time() - st.started, 1)},
        "devices": device_stats(st.engine),
    }


@router.get("/features", summary="Server feature flags")
def features(request: Request) -> dict[str, Any]:
    return state_of(request).server_feature_flags()


@router.get("/extensions", summary="Frontend extension scripts (none)")
def extensions() -> list[str]:
    return []
