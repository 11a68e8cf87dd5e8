"""The studio's upscale action: a gallery image, upscaled on the worker, saved as a new image next to the others.

`POST /studio/upscale {filename, subfolder, upscaler, scale}` reads an image in output/, queues the A1111 extras
translation of it (`sdapi_extras.build_extras_job`: built-in resizes or an upscale model, A1111's /8 target and
model passes) on the shared queue, waits for the worker off the event loop, and writes the result as a new file in
`output/extras-images/` (A1111 numbering; never over an existing file). The new image keeps the source's
parameters with A1111's postprocessing fields appended (`…, Postprocess upscale by: 2, Postprocess upscaler:
Lanczos`), a `postprocessing` text chunk as A1111's extras tab writes, and the source's ComfyUI chunks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The page's name for each field of an extras request in an error.
_FIELDS = {"upscaler_1": "upscaler", "upscaling_resize": "scale", "image": "filename"}


class UpscaleRequest(BaseModel):
    """What the image viewer's Upscale action sends."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1)
    subfolder: str = ""
    upscaler: str = Field("Lanczos", description="a name from GET /sdapi/v1/upscalers (not None)")
    scale: float = Field(2.0, ge=1.0, le=8.0)


def _studio_error(message: str, field: str | None = None, status: int = 400) -> Exception:
    """The studio's error (400 naming the page's field) for an upscale that cannot run."""
    from .routes_studio import StudioError

    return StudioError(message, field, status)


def upscaled_parameters(parameters: str | None, postprocess: str) -> str:
    """The source's infotext with A1111's postprocessing fields appended to its last line (alone if it had none)."""
    if not parameters or not parameters.strip():
        return postprocess
    return f"{parameters.rstrip()}, {postprocess}"


def _prepare(st: Any, req: UpscaleRequest) -> tuple[Any, Any, Path]:
    """(extras job, source metadata, source path) — checks the file and the upscaler (raises StudioError)."""
    from ..metadata.reading import ImageMetadataError, read_image_metadata
    from .files import FileRequestError, resolve
    from .sdapi import SdapiError
    from .sdapi_extras import build_extras_job
    from .sdapi_models import ExtrasSingleImageRequest

    if req.upscaler == "None":
        raise _studio_error("pick an upscaler ('None' leaves the image as it is)", "upscaler")
    try:
        path = resolve(st.folders, "output", req.subfolder, req.filename)
    except FileRequestError as ex:
        raise _studio_error(ex.message, "filename", ex.status) from None
    if not path.is_file():
        raise _studio_error(f"image not found in output/: {req.filename}", "filename", 404)
    try:
        meta = read_image_metadata(path)
    except ImageMetadataError as ex:
        raise _studio_error(str(ex), "filename") from None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    extras = ExtrasSingleImageRequest(upscaler_1=req.upscaler, upscaling_resize=req.scale, image=data)
    try:
        job = build_extras_job(extras, [data], st.sdapi_context())
    except SdapiError as ex:
        raise _studio_error(ex.message, _FIELDS.get(ex.field or "", ex.field), ex.status) from None
    return job, meta, path


def _save(st: Any, job: Any, meta: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """Write the worker's upscaled image as a new PNG in output/<extras folder>; its gallery reference."""
    from PIL import Image

    from ..metadata.naming import next_free_path
    from ..metadata.png import write_png
    from .sdapi_extras import infotext

    with Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))) as im:
        image = im.convert("RGB")
    plan = job.payload["images"][0]
    postprocess = infotext(plan.get("info") or {})
    folder = st.folders.output / (job.payload.get("outdir") or "extras-images")
    folder.mkdir(parents=True, exist_ok=True)
    path = write_png(image, next_free_path(folder, "{number:05d}"),
                     parameters=upscaled_parameters(meta.parameters, postprocess), prompt=meta.prompt,
                     workflow=meta.workflow, extra={"postprocessing": postprocess}, on_exists="next")
    return {"filename": path.name, "subfolder": path.parent.relative_to(st.folders.output).as_posix(),
            "type": "output", "width": image.width, "height": image.height, "info": postprocess}


async def run_upscale(st: Any, req: UpscaleRequest) -> dict[str, Any]:
    """Queue the upscale, wait for the worker (the event loop stays free), save the new image; raises StudioError."""
    from fastapi.concurrency import run_in_threadpool

    job, meta, _ = await run_in_threadpool(_prepare, st, req)
    prompt_id = str(uuid.uuid4())
    outputs = sorted({nid for plan in job.payload["images"] for nid in plan["outputs"]})
    future = st.worker.wait_for(prompt_id, asyncio.get_running_loop())  # before queueing: never miss the end
    try:
        st.queue.submit(job.listing_prompt, extra_data={"studio": True}, outputs_to_execute=outputs, kind="sdapi",
                        payload=job.payload, prompt_id=prompt_id)
    except ValueError as ex:
        st.worker.forget(prompt_id, future)
        raise _studio_error(str(ex)) from None
    done, answer = await future
    if answer is None or done.status != "success" or not answer.get("count"):
        status = 409 if done.status in ("cancelled", "interrupted") else 500
        raise _studio_error(done.error or "upscaling failed", None, status)
    return await run_in_threadpool(_save, st, job, meta, answer)
