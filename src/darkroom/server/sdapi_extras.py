"""A1111's extras API (`/sdapi/v1/extra-single-image`, `extra-batch-images`, `upscalers`): upscaling on the worker.

What A1111 1.10 does (`modules/postprocessing.py`, `scripts/postprocessing_upscale.py`, `modules/upscaler.py`):

- resize_mode 0 scales by `upscaling_resize`; 1 scales by max(w_target / w, h_target / h) and, with
  `upscaling_crop`, pastes the result centred on a black w_target × h_target canvas (a centre crop when larger);
- an upscaler aims at int(side · scale) // 8 · 8: a model runs up to three times while the image is smaller than
  that (at least once unless the scale is 1 and it is already big enough), Lanczos/Nearest resize by the scale once,
  and a final Lanczos resize hits the target exactly;
- upscaler 2 with visibility v > 0 upscales the original the same way and is blended in: Image.blend(first, second, v);
- upscaler 1 "None" returns the image unchanged; face restoration (GFPGAN/CodeFormer) is not available here.

Each image becomes one ComfyUI workflow — LoadImage → UpscaleModelLoader → ImageUpscaleWithModel × passes →
ImageScale, one branch per upscaler — queued as an A1111 job, so the model work runs on the device's worker
through the same executor (and model cache) as every workflow; `assemble_extras` (called by the worker) crops,
blends and encodes. The number of model passes is planned from the model's scale, read from the file's header.
"""

from __future__ import annotations

import base64
import html
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .files import FileRequestError, Folders, decode_base64, encode_png, open_image, write_atomic
from .sdapi import SdapiContext, SdapiError, SdapiJob, _store_input, _validate
from .sdapi_models import ExtrasBaseRequest
from .store import Job

#: A1111's non-model upscalers → ComfyUI ImageScale methods ("None" is handled apart).
BUILTIN_UPSCALERS = {"Lanczos": "lanczos", "Nearest": "nearest-exact"}
MAX_PASSES = 3  # A1111's Upscaler.upscale loop
_SCALE_IN_NAME = re.compile(r"(\d)[xX]|[xX](\d)")


# -- the upscaler listing ----------------------------------------------------------------------------------------

def _strip_ext(name: str) -> str:
    for ext in (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def listing_names(registry: Any) -> dict[str, str]:
    """{A1111 name: registry file name} of the installed upscale models.

    A1111 names a model file by its stem; the files of its built-in Real-ESRGAN entries by their labels
    ("RealESRGAN_x4plus" → "R-ESRGAN 4x+"). A stem shared by two files falls back to the full file names.
    """
    from ..upscale.loader import A1111_UPSCALER_FILES

    aliases = {stem: label for label, stem in A1111_UPSCALER_FILES.items()}
    files = list(registry.entries("upscale_models"))
    stems = [_strip_ext(f) for f in files]
    out: dict[str, str] = {}
    for file, stem in zip(files, stems):
        base = stem.rsplit("/", 1)[-1]
        name = aliases.get(base, stem) if "/" not in stem else stem
        if stems.count(stem) > 1 or name in out or name in BUILTIN_UPSCALERS or name == "None":
            name = file
        out[name] = file
    return out


_SCALES: dict[tuple[str, int, int], int | None] = {}
_SCALES_LOCK = threading.Lock()


def native_scale(path: Path) -> int | None:
    """A model's upscale factor from its tensor shapes (safetensors header only, nothing loaded); None if unknown.

    Pickle files cannot be read without unpickling them, and architectures darkroom has no loader for (spandrel's)
    are not sized here: callers fall back to `guess_scale`.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _SCALES_LOCK:
        if key in _SCALES:
            return _SCALES[key]
    scale = _header_scale(path)
    with _SCALES_LOCK:
        _SCALES[key] = scale
    return scale


def _header_scale(path: Path) -> int | None:
    import torch

    from ..models.files import read_safetensors_header
    from ..upscale.loader import build_compact, build_rrdbnet, detect_architecture, normalise_state_dict

    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        header, _ = read_safetensors_header(path)
        meta = {k: torch.empty(v["shape"], device="meta") for k, v in header.items()}
        sd = normalise_state_dict(meta, path.name)
        arch = detect_architecture(sd)
        with torch.device("meta"):
            if arch == "esrgan":
                return int(build_rrdbnet(sd, path.name)[0].scale)
            if arch == "compact":
                return int(build_compact(sd, path.name).scale)
    except Exception:  # noqa: BLE001 — a listing never fails on one odd file; loading it reports the problem
        return None
    return None


def guess_scale(name: str) -> int:
    """The factor a name announces ("4x-UltraSharp", "RealESRGAN_x2plus"), else 4 (A1111's default)."""
    m = _SCALE_IN_NAME.search(name)
    return int(m.group(1) or m.group(2)) if m else 4


def upscaler_rows(registry: Any) -> list[dict[str, Any]]:
    """A1111's `/upscalers`: None, Lanczos, Nearest, then every file in the upscale model folders."""
    rows: list[dict[str, Any]] = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                                  for n in ("None", "Lanczos", "Nearest")]
    entries = registry.entries("upscale_models")
    for name, file in listing_names(registry).items():
        path = entries[file]
        rows.append({"name": name, "model_name": file, "model_path": str(path), "model_url": None,
                     "scale": native_scale(path) or guess_scale(Path(file).name)})
    return rows


# -- resolving and planning --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upscaler:
    """An upscaler a request named: a built-in resize or an installed model file."""

    label: str  # A1111's name (what the infotext says)
    method: str | None = None  # ImageScale method of a built-in
    model: str | None = None  # registry file name (UpscaleModelLoader's model_name)
    scale: int = 4  # a model's own factor (plans the number of passes)


def resolve_upscaler(registry: Any, name: str | None, field_name: str) -> Upscaler | None:
    """The upscaler `name` means (None for "None"); SdapiError 400 naming it and the choices if unknown."""
    from ..upscale import find_upscaler

    if name is None or name == "None":
        return None
    for label, method in BUILTIN_UPSCALERS.items():
        if name.lower() == label.lower():
            return Upscaler(label, method=method)
    listed = listing_names(registry)
    file = listed.get(name)
    if file is None:
        try:
            file = registry.name_of("upscale_models", find_upscaler(registry, name))
        except Exception:  # noqa: BLE001 — ModelNotFoundError and odd names alike
            file = None
    if file is None:
        choices = ", ".join(["None", *BUILTIN_UPSCALERS, *listed])
        raise SdapiError(400, f"{field_name}: could not find upscaler named {name!r}; available: {choices}",
                         field_name)
    label = next((n for n, f in listed.items() if f == file), file)
    path = registry.entries("upscale_models")[file]
    return Upscaler(label, model=file, scale=native_scale(path) or guess_scale(Path(file).name))


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's upscaler target: int(side · scale) // 8 · 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def plan_steps(width: int, height: int, scale: float, up: Upscaler) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The sizes after each upscaler run (A1111's loop: up to three, until the target is reached) and the target."""
    dest = target_size(width, height, scale)
    size = (width, height)
    steps: list[tuple[int, int]] = []
    for i in range(MAX_PASSES):
        if size[0] >= dest[0] and size[1] >= dest[1] and (i > 0 or scale != 1):
            break
        if up.method is not None:
            new = (int(size[0] * scale), int(size[1] * scale))
        else:
            new = (size[0] * up.scale, size[1] * up.scale)
        steps.append(new)
        if new == size:
            break
        size = new
    return steps, dest


# -- translating a request ---------------------------------------------------------------------------------------

def _bad(message: str, field_name: str | None = None) -> SdapiError:
    return SdapiError(400, message, field_name)


def _check_supported(req: ExtrasBaseRequest) -> None:
    if req.gfpgan_visibility > 0:
        raise _bad("gfpgan_visibility: GFPGAN face restoration is not available in darkroom (use 0)",
                   "gfpgan_visibility")
    if req.codeformer_visibility > 0:
        raise _bad("codeformer_visibility: CodeFormer face restoration is not available in darkroom (use 0)",
                   "codeformer_visibility")


def _text_items(img: Image.Image) -> dict[str, str]:
    """The image's text chunks (A1111 keeps them, `parameters` included, in the upscaled PNG)."""
    return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}


def _branch(wf: dict[str, Any], load: str, up: Upscaler, steps: list[tuple[int, int]], dest: tuple[int, int],
            width: int, height: int) -> str:
    """Add one upscaler's nodes after `load`; returns the id of its PreviewImage."""
    def add(class_type: str, inputs: dict[str, Any], title: str) -> str:
        nid = str(len(wf) + 1)
        wf[nid] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
        return nid

    image = [load, 0]
    size = (width, height)
    if up.model is not None and steps:
        loader = add("UpscaleModelLoader", {"model_name": up.model}, "Load Upscale Model")
        for _ in steps:
            image = [add("ImageUpscaleWithModel", {"upscale_model": [loader, 0], "image": image},
                         "Upscale Image (using Model)"), 0]
        size = steps[-1]
    elif up.method is not None and steps:
        size = steps[-1]
        if size != (width, height):
            image = [add("ImageScale", {"image": image, "upscale_method": up.method, "width": size[0],
                                        "height": size[1], "crop": "disabled"}, f"Upscale Image ({up.label})"), 0]
    if size != dest:
        image = [add("ImageScale", {"image": image, "upscale_method": "lanczos", "width": dest[0],
                                    "height": dest[1], "crop": "disabled"}, "Upscale Image (to target)"), 0]
    return add("PreviewImage", {"images": image}, f"Preview Image ({up.label})")


def build_extras_job(req: ExtrasBaseRequest, images: list[str], ctx: SdapiContext) -> SdapiJob:
    """Check an extras request and translate it into one upscaling workflow per image (raises SdapiError)."""
    _check_supported(req)
    up1 = resolve_upscaler(ctx.models, req.upscaler_1, "upscaler_1")
    # A1111: no first upscaler, no upscaling at all (the second one is not even looked up)
    up2 = resolve_upscaler(ctx.models, req.upscaler_2, "upscaler_2") if up1 is not None else None
    visibility = float(req.extras_upscaler_2_visibility)
    if up2 is not None and visibility <= 0:
        up2 = None
    if not images:
        raise _bad("no images to process (imageList is empty)", "imageList")
    limit = ctx.limits.max_image_pixels
    plans: list[dict[str, Any]] = []
    workflows: list[dict[str, Any]] = []
    for index, text in enumerate(images):
        what = "image" if len(images) == 1 else f"imageList[{index}]"
        try:
            data = decode_base64(text, what=what, max_bytes=ctx.limits.max_body_bytes)
            img = open_image(data, max_pixels=limit, what=what)
        except FileRequestError as ex:
            raise SdapiError(ex.status, ex.message, what.split("[")[0]) from None
        items = _text_items(img)
        rgb = img.convert("RGB")
        name = _store_input(rgb, ctx.folders, "extras")
        w, h = rgb.size
        plan: dict[str, Any] = {"input": name, "text": items, "size": [w, h], "info": {}, "outputs": [],
                                "crop": None}
        if up1 is not None:
            if req.resize_mode == 1:
                tw, th = int(req.upscaling_resize_w), int(req.upscaling_resize_h)
                scale = max(tw / w, th / h)
                plan["info"]["Postprocess upscale to"] = f"{tw}x{th}"
                if req.upscaling_crop:
                    plan["crop"] = [tw, th]
                    plan["info"]["Postprocess crop to"] = f"{tw}x{th}"
            else:
                scale = float(req.upscaling_resize)
                plan["info"]["Postprocess upscale by"] = scale
            plan["info"]["Postprocess upscaler"] = up1.label
            if up2 is not None:
                plan["info"]["Postprocess upscaler 2"] = up2.label
            wf: dict[str, Any] = {"1": {"inputs": {"image": name}, "class_type": "LoadImage",
                                        "_meta": {"title": "Load Image"}}}
            for up in (up1, up2):
                if up is None:
                    continue
                steps, dest = plan_steps(w, h, scale, up)
                if min(dest) < 1:
                    raise _bad(f"{what} ({w}x{h}) is too small to upscale by {scale:g}: the result would be "
                               f"{dest[0]}x{dest[1]}", "upscaling_resize")
                for sw, sh in [*steps, dest]:
                    if sw * sh > limit:
                        field_name = "upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w"
                        raise _bad(f"upscaling {what} ({w}x{h}) would make a {sw}x{sh} image, over the limit of "
                                   f"{limit} pixels", field_name)
                plan["outputs"].append(_branch(wf, "1", up, steps, dest, w, h))
            workflows.append(wf)
        plans.append(plan)
    seen: set[str] = set()
    for wf in workflows:  # validate each distinct graph shape once
        key = repr(sorted((k, v["class_type"]) for k, v in wf.items()))
        if key not in seen:
            seen.add(key)
            _validate(ctx, wf)
    opts = ctx.options.current()
    payload = {
        "mode": "extras", "images": plans, "run_workflows": workflows,
        "visibility": visibility if up2 is not None else 0.0,
        "outdir": opts.get("outdir_extras_samples") or "extras-images",
        "request": req.model_dump(exclude={"image", "imageList"}),
    }
    listing = workflows[0] if workflows else {}
    return SdapiJob(payload=payload, listing_prompt=listing)


# -- the answer (on the worker) ----------------------------------------------------------------------------------

def plaintext_to_html(text: str) -> str:
    """A1111's `ui_common.plaintext_to_html`: escaped lines joined by `<br>`, in a paragraph."""
    return "<p>" + "<br>\n".join(html.escape(x) for x in text.split("\n")) + "</p>"


def infotext(info: dict[str, Any]) -> str:
    """A1111's postprocessing infotext: `key: value` pairs (quoted when needed), comma separated."""
    from ..metadata.infotext import quote

    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


def _crop(img: Image.Image, size: list[int] | None) -> Image.Image:
    """A1111's "crop to fit": paste centred on a black canvas of the target size."""
    if size is None:
        return img
    w, h = size
    canvas = Image.new("RGB", (w, h))
    canvas.paste(img, (w // 2 - img.width // 2, h // 2 - img.height // 2))
    return canvas


def assemble_extras(job: Job, results: list[tuple[int, Any]], *, folders: Folders, waited: bool = True,
                    **_: Any) -> dict[str, Any]:
    """A1111's extras answer from the per-image runs: cropped, blended PNGs (with the input's text chunks and a
    `postprocessing` chunk) and `html_info` of the last image. Saved under output/ only when nobody waits."""
    from ..engine.vae import tensor_to_pil

    p = job.payload or {}
    plans: list[dict[str, Any]] = p.get("images") or []
    by_index = dict(results)
    has_runs = bool(p.get("run_workflows"))
    encoded: list[str] = []
    saved: list[dict[str, str]] = []
    text = ""
    for i, plan in enumerate(plans):
        if has_runs:
            result = by_index.get(i)
            if result is None:
                continue  # failed, interrupted or skipped
            branches = [tensor_to_pil(result.node_outputs[str(_source(p, i, nid))][0][:1])[0]
                        for nid in plan["outputs"]]
            branches = [_crop(b, plan.get("crop")) for b in branches]
            image = branches[0]
            if len(branches) > 1:
                image = Image.blend(image, branches[1].convert(image.mode), float(p.get("visibility", 0.0)))
        else:
            with Image.open(folders.input / plan["input"]) as src:
                image = src.convert("RGB")
        text = infotext(plan.get("info") or {})
        chunks = {**(plan.get("text") or {}), "postprocessing": text}
        data = encode_png(image, **chunks)
        encoded.append(base64.b64encode(data).decode("ascii"))
        if not waited:
            saved.append(_save(data, folders, p.get("outdir") or "extras-images"))
        elif has_runs:
            for nid in plan["outputs"]:
                saved.extend((by_index[i].outputs.get(nid) or {}).get("images", []))
    job.outputs = {"extras": {"images": saved}} if saved else {}
    return {"images": encoded, "html_info": plaintext_to_html(text), "count": len(encoded)}


def _source(payload: dict[str, Any], index: int, preview_id: str) -> str:
    """The node feeding a branch's PreviewImage (its output is the branch's image)."""
    wf = payload["run_workflows"][index]
    return str(wf[preview_id]["inputs"]["images"][0])


def _save(data: bytes, folders: Folders, outdir: str) -> dict[str, str]:
    """Write an answer nobody waits for into output/<outdir> (A1111 numbering) so the work is not lost."""
    from ..metadata.naming import next_free_path

    folder = folders.output / outdir
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = next_free_path(folder, "{number:05d}")
        if write_atomic(path, data):
            break
    return {"filename": path.name, "subfolder": path.parent.relative_to(folders.output).as_posix(), "type": "output"}
