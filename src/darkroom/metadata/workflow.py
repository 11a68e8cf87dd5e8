"""Our request as the equivalent ComfyUI API-format workflow (the `prompt` chunk), so every image reopens as a graph.

Node class names, input names and value conventions are ComfyUI's (`nodes.py`, 0.3.x). The plain txt2img graph
uses the node ids of ComfyUI's `basic_api_example.py` (3 KSampler, 4 checkpoint, 5 latent, 6/7 prompts, 8 decode,
9 save); further nodes are numbered from 10. The graph mirrors what `darkroom.engine` runs for the same request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.params import GenerationParams

Link = list  # [node_id: str, output_index: int]
MAX_SEED = 2**64 - 1


class _Graph:
    """A tiny builder for API-format prompts."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self._next = 10

    def add(self, class_type: str, inputs: dict[str, Any], *, title: str | None = None,
            node_id: str | None = None) -> str:
        nid = node_id if node_id is not None else str(self._next)
        if node_id is None:
            self._next += 1
        self.nodes[nid] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or class_type}}
        return nid

    def ordered(self) -> dict[str, dict[str, Any]]:
        return {k: self.nodes[k] for k in sorted(self.nodes, key=int)}


def _loras(params: GenerationParams) -> tuple[str, list[tuple[str, float, float]]]:
    """Prompt without extra-network tags, and the LoRAs (name, te, unet): params.loras plus any tags not in it."""
    from ..conditioning.prompt_parser import extract_extra_networks

    clean, nets = extract_extra_networks(params.prompt)
    loras = [(lo.name, float(lo.te_weight), float(lo.unet_weight)) for lo in params.loras]
    for n in nets:
        if n.kind == "lora":
            ref = (n.name, n.te_weight, n.unet_weight)
            if ref not in loras:
                loras.append(ref)
    return clean, loras


def _latent_method(upscaler: str) -> str | None:
    """ComfyUI latent upscale method for an A1111 "Latent …" hires upscaler (as the engine maps it), else None."""
    u = upscaler.lower()
    if not u.startswith("latent"):
        return None
    return "nearest-exact" if "nearest" in u else "bicubic" if "bicubic" in u else "bilinear"


def _hires_size(params: GenerationParams) -> tuple[int, int]:
    """Hires target size in pixels, as the engine computes it."""
    h = params.hires
    assert h is not None
    return (h.width or int(params.width * h.scale) // 8 * 8, h.height or int(params.height * h.scale) // 8 * 8)


def workflow_from_params(params: GenerationParams, *, seed: int, model_name: str | None = None,
                         ckpt_name: str | None = None, lora_files: Mapping[str, str] | None = None,
                         init_image_name: str | None = None, refiner_ckpt_name: str | None = None,
                         upscale_model_name: str | None = None,
                         filename_prefix: str = "darkroom",
                         a1111_text: bool = False) -> dict[str, dict[str, Any]]:
    """The ComfyUI API prompt equivalent to our request for one `seed`.

    ckpt_name: the checkpoint file as ComfyUI names it (default params.model, else model_name);
    lora_files: LoRA name → file name (default `<name>.safetensors`); init_image_name: the LoadImage file name
    (default the init image's file name); refiner_ckpt_name: default params.refiner; upscale_model_name: the file for
    a non-latent hires upscaler (default the upscaler's name); a1111_text: encode the prompts with darkroom's
    `CLIPTextEncodeA1111` node (A1111 weighting) instead of ComfyUI's `CLIPTextEncode` — needed only when the two
    would differ, since ComfyUI itself lacks that node.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..2^64-1 for a ComfyUI workflow (got {seed})")
    ckpt = ckpt_name or params.model or model_name
    if not ckpt:
        raise ValueError("workflow_from_params needs a checkpoint name (ckpt_name, params.model or model_name)")
    g = _Graph()
    g.add("CheckpointLoaderSimple", {"ckpt_name": ckpt}, title="Load Checkpoint", node_id="4")
    model: Link = ["4", 0]
    clip: Link = ["4", 1]
    vae: Link = ["4", 2]
    if params.vae:
        vae = [g.add("VAELoader", {"vae_name": params.vae}, title="Load VAE"), 0]
    text, loras = _loras(params)
    for name, te, unet in loras:
        file = (lora_files or {}).get(name, f"{name}.safetensors")
        nid = g.add("LoraLoader", {"model": model, "clip": clip, "lora_name": file, "strength_model": unet,
                                   "strength_clip": te}, title="Load LoRA")
        model, clip = [nid, 0], [nid, 1]
    if params.tiling:  # seamless texture: circular padding in the UNet and VAE
        tiled = g.add("SeamlessTiling", {"model": model, "vae": vae, "enabled": True}, title="Seamless Tiling")
        model, vae = [tiled, 0], [tiled, 1]
    if params.clip_skip > 1:
        clip = [g.add("CLIPSetLastLayer", {"clip": clip, "stop_at_clip_layer": -params.clip_skip},
                      title="CLIP Set Last Layer"), 0]
    encoder = "CLIPTextEncodeA1111" if a1111_text else "CLIPTextEncode"
    neg_extra = {"is_negative": True} if a1111_text else {}
    g.add(encoder, {"text": text, "clip": clip}, title="CLIP Text Encode (Positive)", node_id="6")
    g.add(encoder, {"text": params.negative_prompt, "clip": clip, **neg_extra}, title="CLIP Text Encode (Negative)",
          node_id="7")
    positive: Link = ["6", 0]
    negative: Link = ["7", 0]

    denoise = 1.0
    if params.init_image is not None:
        image_name = init_image_name or PurePath(str(params.init_image)).name
        load = g.add("LoadImage", {"image": image_name}, title="Load Image")
        scaled = g.add("ImageScale", {"image": [load, 0], "upscale_method": "lanczos", "width": params.width,
                                      "height": params.height, "crop": "disabled"}, title="Upscale Image")
        g.add("VAEEncode", {"pixels": [scaled, 0], "vae": vae}, title="VAE Encode", node_id="5")
        latent: Link = ["5", 0]
        if params.batch_size > 1:
            latent = [g.add("RepeatLatentBatch", {"samples": latent, "amount": params.batch_size},
                            title="Repeat Latent Batch"), 0]
        denoise = params.denoise
    else:
        g.add("EmptyLatentImage", {"width": params.width, "height": params.height,
                                   "batch_size": params.batch_size}, title="Empty Latent Image", node_id="5")
        latent = ["5", 0]

    hires_pos, hires_neg = positive, negative
    hires_model = model
    if params.controlnets:  # issue #7: ControlNet units between the prompts and the samplers
        from dataclasses import replace

        from ..control.graph import add_controlnet_nodes
        from ..ipadapter.units import add_ipadapter_nodes

        control = replace(params, controlnets=[u for u in params.controlnets if not u.is_ipadapter])
        if control.controlnets:
            positive, negative, hires_pos, hires_neg = add_controlnet_nodes(g, control, model, positive, negative)
        model, hires_model = add_ipadapter_nodes(g, params, model)  # reference images: IPAdapterAdvanced on MODEL

    common = {"cfg": params.cfg, "sampler_name": params.sampler, "scheduler": params.scheduler}
    final_model, final_vae, final_pos, final_neg = hires_model, vae, hires_pos, hires_neg
    if not params.refiner:
        g.add("KSampler", {"seed": seed, "steps": params.steps, **common, "denoise": denoise, "model": model,
                           "positive": positive, "negative": negative, "latent_image": latent},
              title="KSampler", node_id="3")
        latent = ["3", 0]
    else:
        latent, final_model, final_vae, final_pos, final_neg = _refiner_passes(
            g, params, seed, denoise, common, model, positive, negative, latent,
            refiner_ckpt_name or params.refiner)

    if params.hires is not None and params.init_image is None:
        latent = _hires_pass(g, params, seed, common, final_model, final_vae, final_pos, final_neg, latent,
                             upscale_model_name)
    g.add("VAEDecode", {"samples": latent, "vae": final_vae}, title="VAE Decode", node_id="8")
    g.add("SaveImage", {"filename_prefix": filename_prefix, "images": ["8", 0]}, title="Save Image", node_id="9")
    return g.ordered()


def _refiner_passes(g: _Graph, params: GenerationParams, seed: int, denoise: float, common: dict[str, Any],
                    model: Link, positive: Link, negative: Link, latent: Link, refiner: str | None
                    ) -> tuple[Link, Link, Link, Link, Link]:
    """SDXL refiner: base KSamplerAdvanced to the switch step with leftover noise, refiner from there on.

    KSampler's `denoise` d over n steps is the tail of an int(n/d)-step schedule, so img2img maps exactly onto
    KSamplerAdvanced's start/end steps.
    """
    steps = params.steps
    total = int(steps / denoise) if denoise < 1.0 else steps
    offset = total - steps
    switch = max(1, min(steps, round(steps * params.refiner_switch)))
    g.add("KSamplerAdvanced", {"add_noise": "enable", "noise_seed": seed, "steps": total, **common,
                               "model": model, "positive": positive, "negative": negative, "latent_image": latent,
                               "start_at_step": offset, "end_at_step": offset + switch,
                               "return_with_leftover_noise": "enable" if switch < steps else "disable"},
          title="KSampler (Advanced) Base", node_id="3")
    latent = ["3", 0]
    rid = g.add("CheckpointLoaderSimple", {"ckpt_name": refiner}, title="Load Refiner Checkpoint")
    r_model: Link = [rid, 0]
    r_vae: Link = [rid, 2]
    if params.tiling:
        tiled = g.add("SeamlessTiling", {"model": r_model, "vae": r_vae, "enabled": True},
                      title="Seamless Tiling (Refiner)")
        r_model, r_vae = [tiled, 0], [tiled, 1]
    encoder = g.nodes["6"]["class_type"]
    neg_extra = {"is_negative": True} if encoder == "CLIPTextEncodeA1111" else {}
    r_pos = g.add(encoder, {"text": g.nodes["6"]["inputs"]["text"], "clip": [rid, 1]},
                  title="Refiner Prompt (Positive)")
    r_neg = g.add(encoder, {"text": params.negative_prompt, "clip": [rid, 1], **neg_extra},
                  title="Refiner Prompt (Negative)")
    if switch < steps:
        nid = g.add("KSamplerAdvanced", {"add_noise": "disable", "noise_seed": seed, "steps": total, **common,
                                         "model": r_model, "positive": [r_pos, 0], "negative": [r_neg, 0],
                                         "latent_image": latent, "start_at_step": offset + switch,
                                         "end_at_step": 10000, "return_with_leftover_noise": "disable"},
                    title="KSampler (Advanced) Refiner")
        latent = [nid, 0]
    return latent, r_model, r_vae, [r_pos, 0], [r_neg, 0]


def _hires_pass(g: _Graph, params: GenerationParams, seed: int, common: dict[str, Any], model: Link, vae: Link,
                positive: Link, negative: Link, latent: Link, upscale_model_name: str | None) -> Link:
    """A1111 hires fix: upscale the first pass (latent, or decoded image), then KSampler at the hires denoise."""
    h = params.hires
    assert h is not None
    tw, th = _hires_size(params)
    method = _latent_method(h.upscaler)
    if method is not None:
        w8, h8 = params.width // 8, params.height // 8
        by_scale = (h.width is None and h.height is None and round(w8 * h.scale) * 8 == tw
                    and round(h8 * h.scale) * 8 == th)
        if by_scale:  # LatentUpscaleBy rounds latent size × scale, which here equals the engine's target
            up = g.add("LatentUpscaleBy", {"samples": latent, "upscale_method": method, "scale_by": h.scale},
                       title="Upscale Latent By")
        else:
            up = g.add("LatentUpscale", {"samples": latent, "upscale_method": method, "width": tw, "height": th,
                                         "crop": "disabled"}, title="Upscale Latent")
        latent = [up, 0]
    else:
        image: Link = [g.add("VAEDecode", {"samples": latent, "vae": vae}, title="VAE Decode (first pass)"), 0]
        simple = {"lanczos": "lanczos", "nearest": "nearest-exact"}.get(h.upscaler.lower())
        if simple is None:
            loader = g.add("UpscaleModelLoader", {"model_name": upscale_model_name or h.upscaler},
                           title="Load Upscale Model")
            image = [g.add("ImageUpscaleWithModel", {"upscale_model": [loader, 0], "image": image},
                           title="Upscale Image (using Model)"), 0]
            simple = "lanczos"
        image = [g.add("ImageScale", {"image": image, "upscale_method": simple, "width": tw, "height": th,
                                      "crop": "disabled"}, title="Upscale Image"), 0]
        latent = [g.add("VAEEncode", {"pixels": image, "vae": vae}, title="VAE Encode (hires)"), 0]
    nid = g.add("KSampler", {"seed": seed, "steps": h.steps or params.steps, **common, "denoise": h.denoise,
                             "model": model, "positive": positive, "negative": negative, "latent_image": latent},
                title="KSampler (hires)")
    return [nid, 0]
