"""A1111 answers from finished jobs: the per-image results of `sdapi.build_job`'s workflows become base64 PNGs
(a grid first when there are several, as A1111 returns) and `info`, a JSON string with `infotexts`, `all_seeds`…

Images are saved (A1111 numbering, infotext and workflow embedded) when the request asked for it, or when nobody
waits for the answer any more (a job that ran after a restart), so no work is lost.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from . import sdapi_images as imgs
from .files import Folders, encode_png
from .sdapi import params_from_dict
from .store import Job

# -- results --------------------------------------------------------------------------------------------------------

def _final_image(result: Any, run_wf: dict[str, Any]) -> Image.Image:
    from ..engine.vae import tensor_to_pil

    src, index = run_wf["9"]["inputs"]["images"]
    tensor = result.node_outputs[str(src)][int(index)]
    return tensor_to_pil(tensor[:1])[0]


def _paste(image: Image.Image, plan: dict[str, Any], folders: Folders) -> Image.Image:
    with Image.open(folders.input / plan["original"]) as o, Image.open(folders.input / plan["mask"]) as m:
        over = imgs.overlay(o.convert("RGB"), m.convert("L"))
    return imgs.paste_back(image, tuple(plan["box"]), over)


def assemble(job: Job, results: list[tuple[int, Any]], *, engine: Any, folders: Folders, waited: bool) -> dict[str, Any]:
    """Build A1111's answer from the per-image runs; writes output files when asked to (or nobody waits)."""
    from ..metadata.infotext import infotext_for, model_display_name
    from ..metadata.naming import next_free_path
    from ..metadata.png import write_png

    p = job.payload or {}
    if p.get("mode") == "extras":  # /extra-single-image, /extra-batch-images
        from .sdapi_extras import assemble_extras

        return assemble_extras(job, results, folders=folders, waited=waited)
    params = params_from_dict(p["params"])
    models = engine.registry
    try:
        model_hash = models.hashes.model_hash(models.find("checkpoints", p["checkpoint"]))
    except Exception:
        model_hash = None
    lora_hashes = {}
    for name, file in (p.get("lora_files") or {}).items():
        try:
            lora_hashes[name] = models.hashes.lora_hash(models.find("loras", file))
        except Exception:
            pass
    extra = {k: v for k, v in (p.get("extra") or {}).items() if v is not None}
    if lora_hashes:
        from ..metadata.infotext import hashes_text

        extra["Lora hashes"] = hashes_text(lora_hashes)
    save = bool(p.get("save_images")) or not waited
    folder = folders.output / p.get("outdir", "images")
    images: list[Image.Image] = []
    infotexts: list[str] = []
    saved: list[dict[str, str]] = []
    seeds_done: list[int] = []
    for i, result in results:
        image = _final_image(result, p["run_workflows"][i])
        if p.get("paste"):
            image = _paste(image, p["paste"][i], folders)
        seed = p["seeds"][i]
        init = Path(p["init_names"][i]) if p.get("init_names") else None  # img2img: infotext has denoising
        single = replace(params, seed=seed, init_image=init)
        text = infotext_for(single, seed=seed, model_name=p["checkpoint"], model_hash=model_hash, extra=extra)
        images.append(image)
        infotexts.append(text)
        seeds_done.append(seed)
        if save:
            folder.mkdir(parents=True, exist_ok=True)
            path = write_png(image, next_free_path(folder, seed=seed), parameters=text, prompt=p["workflows"][i],
                             on_exists="next")
            saved.append({"filename": path.name, "subfolder": path.parent.relative_to(folders.output).as_posix(),
                          "type": "output"})
        else:
            saved.extend((result.outputs.get("9") or {}).get("images", []))
    job.outputs = {"9": {"images": saved}} if saved else {}
    job.meta = {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}} if saved else {}
    out_images = list(images)
    out_texts = list(infotexts)
    first = 0
    if p.get("grid") and len(images) > 1:
        out_images.insert(0, imgs.image_grid(images))
        out_texts.insert(0, infotexts[0])
        first = 1
    encoded = []
    if p.get("send_images", True):
        for image, text in zip(out_images, out_texts):
            encoded.append(base64.b64encode(encode_png(image, parameters=text)).decode("ascii"))
    n = len(p["seeds"])
    info = {
        "prompt": params.prompt, "all_prompts": [params.prompt] * n,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * n,
        "seed": p["seeds"][0], "all_seeds": p["seeds"], "subseed": p["subseeds"][0], "all_subseeds": p["subseeds"],
        "subseed_strength": p.get("subseed_strength", 0), "width": params.width, "height": params.height,
        "sampler_name": p.get("sampler_label"), "cfg_scale": params.cfg, "steps": params.steps,
        "batch_size": p.get("batch_size", 1), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model_display_name(p["checkpoint"]), "sd_model_hash": model_hash,
        "sd_vae_name": params.vae, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": params.denoise if p["mode"] == "img2img" else (
            params.hires.denoise if params.hires else None),
        "extra_generation_params": extra, "index_of_first_image": first, "infotexts": out_texts,
        "styles": p.get("styles", []), "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "clip_skip": params.clip_skip, "is_using_inpainting_conditioning": False,
        "version": f"darkroom {_version()}",
    }
    return {"images": encoded, "info": json.dumps(info, ensure_ascii=False), "count": len(images),
            "seeds_done": seeds_done}


def _version() -> str:
    from .. import __version__

    return __version__
