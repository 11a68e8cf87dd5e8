"""A1111 ControlNet extension routes (sd-webui-controlnet `scripts/api.py`, API version 2).

GET /controlnet/version, /model_list, /module_list, /control_types, /settings; POST /controlnet/detect (run a
preprocessor on images) and /controlnet/render_openpose_json. Errors answer 422 with `{"detail": …}` as the
extension does. Generation with ControlNet units goes through /sdapi/v1/txt2img|img2img `alwayson_scripts`.
IP-Adapters (reference images) are listed with the control models (model_list) and their preprocessors with the
others (module_list, control type "IP-Adapter"), as the extension lists them.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .files import FileRequestError, decode_base64, encode_png, open_image
from .state import state_of

router = APIRouter(prefix="/controlnet", tags=["controlnet"])
API_VERSION = 2


def _error(message: str, status: int = 422) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


@router.get("/version", summary="ControlNet extension API version")
def version() -> dict[str, int]:
    return {"version": API_VERSION}


def _model_titles(registry: Any) -> list[str]:
    """Control models (controlnet folders, IP-Adapter files there included) and models/ipadapter's IP-Adapters."""
    from ..control.names import control_model_titles
    from ..ipadapter.units import ipadapter_titles

    titles = {**control_model_titles(registry), **ipadapter_titles(registry)}
    return sorted(titles, key=str.lower)


def _ip_modules(alias_names: bool) -> list[str]:
    from ..ipadapter.units import LABELS, MODULES

    return [LABELS.get(m, m) if alias_names else m for m in MODULES]


@router.get("/model_list", summary="Installed ControlNets, T2I-Adapters and IP-Adapters as 'name [hash]'")
def model_list(request: Request, update: bool = True) -> dict[str, list[str]]:
    return {"model_list": _model_titles(state_of(request).engine.registry)}


@router.get("/module_list", summary="Preprocessors (internal names, or UI aliases) and their sliders")
def module_list(alias_names: bool = False) -> dict[str, Any]:
    from ..control.preprocess import PREPROCESSORS

    names, detail = [], {}
    for pre in PREPROCESSORS.values():
        name = (pre.alias or pre.name) if alias_names else pre.name
        names.append(name)
        detail[name] = {"model_free": False, "sliders": [s for s in pre.sliders],
                        "builtin": pre.builtin}  # builtin: runs without annotator weights (darkroom)
    for name in _ip_modules(alias_names):  # reference images: need an IP-Adapter and a clip_vision encoder
        names.append(name)
        detail[name] = {"model_free": False, "sliders": [], "builtin": False}
    return {"module_list": names, "module_detail": detail}


@router.get("/control_types", summary="Preprocessors and models grouped by control type")
def control_types(request: Request) -> dict[str, Any]:
    from ..control.preprocess import PREPROCESSORS
    from ..ipadapter.units import ipadapter_files

    registry = state_of(request).engine.registry
    models = ["None", *_model_titles(registry)]
    stems = {n.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower() for n in ipadapter_files(registry)}
    types = ["All", "Canny", "Depth", "NormalMap", "OpenPose", "MLSD", "Lineart", "SoftEdge", "Scribble/Sketch",
             "Segmentation", "Shuffle", "Tile/Blur", "Inpaint", "Recolor", "T2I-Adapter", "IP-Adapter"]
    out = {}
    for kind in types:
        key = kind.lower().split("/")[0]
        if kind == "All":
            mods = [p.alias or p.name for p in PREPROCESSORS.values()] + _ip_modules(True)
            fitting = models
        elif kind == "IP-Adapter":
            mods = ["none", *_ip_modules(True)]
            fitting = ["None"] + [m for m in models[1:] if m.rsplit(" [", 1)[0].lower() in stems]
        else:
            mods = ["none"] + [p.alias or p.name for p in PREPROCESSORS.values() if kind in p.tags]
            fitting = ["None"] + [m for m in models[1:] if key in m.lower() or kind.lower() in m.lower()]
        out[kind] = {"module_list": mods, "model_list": fitting, "default_option": mods[1] if len(mods) > 1 else "none",
                     "default_model": fitting[1] if len(fitting) > 1 else "None"}
    return {"control_types": out}


@router.get("/settings", summary="Most units per request")
def settings() -> dict[str, int]:
    from ..control.units import MAX_UNITS

    return {"control_net_unit_count": MAX_UNITS}


def _decode(st: Any, text: str, what: str):
    limits = st.config.limits
    return open_image(decode_base64(text, what=what, max_bytes=limits.max_body_bytes),
                      max_pixels=limits.max_image_pixels, what=what)


def _detect(st: Any, module: str, images: list[str], masks: list[str], res: int, a: float, b: float) -> dict:
    import numpy as np

    from ..control.preprocess import get_preprocessor, preprocess

    pre = get_preprocessor(module)
    if pre.needs_mask and len(masks) != len(images):
        raise ValueError(f"preprocessor {module} needs `controlnet_masks`, one per image")
    settings = st.engine.settings
    out = []
    for i, text in enumerate(images):
        img = np.asarray(_decode(st, text, f"controlnet_input_images[{i}]").convert("RGB"))
        mask = None
        if i < len(masks) and masks[i]:
            mask = np.asarray(_decode(st, masks[i], f"controlnet_masks[{i}]").convert("L"))
        hint = preprocess(module, img, resolution=res, threshold_a=a, threshold_b=b, mask=mask,
                          annotator_dirs=settings.model_dirs("annotators"),
                          annotator_home=settings.models_dir / "annotators", device=st.engine.device)
        from PIL import Image

        shown = (np.clip(hint, 0, 1) * 255.0 + 0.5).astype(np.uint8)  # inpaint's -1 pixels show black
        out.append(base64.b64encode(encode_png(Image.fromarray(shown))).decode("ascii"))
    return {"images": out, "info": "Success"}


@router.post("/detect", summary="Run a preprocessor on base64 images; answers the control maps as base64 PNG")
async def detect(
    request: Request,
    controlnet_module: str = Body("none"),
    controlnet_input_images: list[str] = Body([]),
    controlnet_images: list[str] = Body([], description="alias of controlnet_input_images (webuiapi)"),
    controlnet_processor_res: int = Body(-1),
    controlnet_threshold_a: float = Body(-1),
    controlnet_threshold_b: float = Body(-1),
    controlnet_masks: list[str] = Body([]),
    low_vram: bool = Body(False),
) -> Any:
    from ..control.annotators import AnnotatorMissingError, AnnotatorUnavailableError
    from ..control.preprocess import PreprocessorError, get_preprocessor

    images = controlnet_input_images or controlnet_images
    from ..ipadapter.units import is_ipadapter_module

    if is_ipadapter_module(controlnet_module):
        return _error(f"Module not available: {controlnet_module} makes CLIP image embeddings for an IP-Adapter, "
                      f"not a control map to detect")
    try:
        get_preprocessor(controlnet_module)
    except PreprocessorError as ex:
        return _error(f"Module not available: {ex}")
    if not images:
        return _error("No image selected")
    st = state_of(request)
    try:
        return await run_in_threadpool(_detect, st, controlnet_module, images, controlnet_masks,
                                       controlnet_processor_res, controlnet_threshold_a, controlnet_threshold_b)
    except FileRequestError as ex:
        return _error(ex.message, ex.status)
    except (AnnotatorMissingError, AnnotatorUnavailableError, PreprocessorError, ValueError) as ex:
        return _error(str(ex))


@router.post("/render_openpose_json", summary="Draw OpenPose JSON poses as ControlNet pose images")
async def render_openpose_json(pose_data: list[dict[str, Any]] = Body([])) -> Any:
    from PIL import Image

    from ..control.openpose import PoseFormatError, render_pose

    if not pose_data:
        return {"info": "No pose data detected."}
    try:
        images = [base64.b64encode(encode_png(Image.fromarray(render_pose(p)))).decode("ascii") for p in pose_data]
    except PoseFormatError as ex:
        return _error(str(ex))
    return {"images": images, "info": "Success"}
