"""The engine façade: typed requests in, images and their reproducible metadata out. CLI and servers are clients."""

from __future__ import annotations

import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ..devices import pick_device, pick_dtype
from ..models.bundle import Checkpoint
from ..settings import Settings
from . import pipeline
from .vae import pil_to_tensor, tensor_to_pil
from .params import GenerationParams, HiresParams, LoraRef
from .tiling import circular_padding

MAX_SEED = 2**32 - 1


def _resize_image(images: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """(B, H, W, 3) → (B, height, width, 3) with ComfyUI's ImageScale arithmetic (lanczos goes through 8 bits)."""
    from .resize import common_upscale

    return common_upscale(images.movedim(-1, 1), width, height, method).movedim(1, -1)


def _model_display_name(registry_name: str) -> str:
    """A1111's `Model:` value: the file name without folder or extension."""
    stem = registry_name.rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".pt", ".bin", ".pth"):
        if stem.lower().endswith(ext):
            return stem[: -len(ext)]
    return stem


class RequestError(ValueError):
    """A request that cannot run as given (bad size, unknown sampler …); the message says what to change."""


@dataclass
class GenerationResult:
    """The images of one request, each with its seed, A1111 infotext and the equivalent ComfyUI API workflow."""

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    workflows: list[dict]
    params: GenerationParams
    model_name: str
    model_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[int, int], None]


class Engine:
    """Owns the model registry and a small cache of loaded checkpoints; runs generation requests one at a time."""

    def __init__(self, settings: Settings, *, registry=None, device: str | None = None, dtype: str | None = None):
        from ..models.registry import ModelRegistry

        self.settings = settings
        self.registry = registry or ModelRegistry(settings)
        self.device = pick_device(device or settings.device)
        self.dtype = pick_dtype(self.device, dtype or settings.dtype)
        self._loaded: dict[tuple, Checkpoint] = {}
        self._patchers: dict[int, Any] = {}
        self._embeddings = None
        self._aux: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()

    # -- models -----------------------------------------------------------------------------------------
    def checkpoint_path(self, name: str | None) -> Path:
        """Resolve a checkpoint name (None: the first installed one, else the built-in default model)."""
        if name:
            return self.registry.find("checkpoints", name)
        names = self.registry.checkpoints()
        if not names:
            raise RequestError("no checkpoint is installed and the built-in default model is missing")
        return self.registry.find("checkpoints", names[0])

    def load(self, name: str | None, *, vae: str | None = None) -> Checkpoint:
        """Load (or reuse) a checkpoint with an optional separate VAE. Keeps at most two models in memory."""
        from ..models.loader import load_checkpoint

        path = self.checkpoint_path(name)
        vae_path = self.registry.find("vae", vae) if vae else None
        key = (str(path), str(vae_path), self.dtype, str(self.device))
        with self._lock:
            ckpt = self._loaded.pop(key, None)
            if ckpt is None:
                ckpt = load_checkpoint(path, dtype=self.dtype, device=self.device, vae_path=vae_path,
                                       allow_unsafe_pickle=self.settings.allow_unsafe_pickle)
            self._loaded[key] = ckpt
            while len(self._loaded) > 2:
                old = self._loaded.pop(next(iter(self._loaded)))
                patcher = self._patchers.pop(id(old), None)
                if patcher is not None:  # a workflow cache may still hold this model: leave it clean
                    patcher.restore()
            return ckpt

    def unload_all(self) -> None:
        """Forget every loaded model (LoRA patches restored first), e.g. for ComfyUI's /free."""
        with self._lock:
            for patcher in self._patchers.values():
                patcher.restore()
            self._patchers.clear()
            self._loaded.clear()
            self._aux.clear()
            self._upscaler = None

    def aux_model(self, kind: str, path: Path, build: Callable[[], Any], max_items: int = 4) -> Any:
        """A model beside the checkpoint (ControlNet, CLIP vision encoder, IP-Adapter) loaded by `build()` on the
        engine's device and dtype, reused while its file is unchanged; the `max_items` most recently used are kept.

        Only for models that runs do not change (LoRA patches act on the checkpoint, not on these).
        """
        st = Path(path).stat()
        key = (kind, str(Path(path).resolve()), st.st_size, st.st_mtime_ns, str(self.device), self.dtype)
        with self._lock:
            model = self._aux.pop(key, None)
            if model is None:
                model = build()
            self._aux[key] = model
            while len(self._aux) > max_items:
                self._aux.popitem(last=False)
            return model

    def native_size(self, name: str | None) -> tuple[int, int]:
        """The model's training resolution (width, height): 512 for SD1.x, 768 for SD2-v, 1024 for SDXL …"""
        ckpt = self.load(name)
        px = int(ckpt.unet.config.sample_size) * ckpt.vae_downscale
        return px, px

    def embeddings(self):
        """The textual-inversion library over the embeddings folders (scanned lazily)."""
        if self._embeddings is None:
            from ..conditioning.embeddings import EmbeddingLibrary

            self._embeddings = EmbeddingLibrary(self.settings.model_dirs("embeddings"))
        return self._embeddings

    def apply_loras(self, ckpt: Checkpoint, loras: list[LoraRef]) -> dict[str, str]:
        """Patch the checkpoint with exactly these LoRAs (restoring any others); returns name → short hash."""
        from ..models.lora import load_lora_file

        patcher = self.patcher(ckpt)
        entries, hashes = [], {}
        for ref in loras:
            path = self.registry.find("loras", ref.name)
            entries.append((load_lora_file(path), ref.te_weight, ref.unet_weight))
            hashes[ref.name] = self.registry.hashes.lora_hash(path)
        patcher.apply(entries)
        return hashes

    def patcher(self, ckpt: Checkpoint):
        """The one LoRA patcher of a loaded checkpoint (patches are applied per generation, restored exactly)."""
        from ..models.lora import LoraPatcher

        with self._lock:
            patcher = self._patchers.get(id(ckpt))
            if patcher is None:
                patcher = self._patchers[id(ckpt)] = LoraPatcher.for_checkpoint(ckpt)
            return patcher

    def upscaler(self, name: str):
        """A hires-fix upscale model from `upscale_models` (A1111 names too), float32 (the last one is cached)."""
        from ..models.errors import ModelFileError
        from ..upscale import find_upscaler, load_upscaler_by_name

        try:
            path = find_upscaler(self.registry, name)
        except ModelFileError as e:
            raise RequestError(f"unknown hires upscaler {name!r}: use Latent, Latent (nearest-exact), Latent "
                               f"(bicubic), Lanczos, Nearest or an upscale model file ({e})") from None
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = getattr(self, "_upscaler", None)
            if cached is None or cached[0] != key:
                cached = (key, load_upscaler_by_name(self.registry, str(path), dtype=torch.float32,
                                                     allow_unsafe_pickle=self.settings.allow_unsafe_pickle))
                self._upscaler = cached
            return cached[1]

    def _upscaler_file(self, p: GenerationParams) -> str | None:
        """The registry name of the hires upscale model (what UpscaleModelLoader lists), if one is used."""
        up = p.hires.upscaler if p.hires is not None and p.init_image is None else "latent"
        if up.lower().startswith("latent") or up.lower() in ("lanczos", "nearest"):
            return None
        from ..upscale import find_upscaler

        return self.registry.name_of("upscale_models", find_upscaler(self.registry, up))

    def model_hash(self, path: Path) -> str | None:
        """A1111's short hash of a checkpoint file (cached); None for diffusers folders."""
        return None if path.is_dir() else self.registry.hashes.model_hash(path)

    # -- generation -------------------------------------------------------------------------------------
    def validate(self, p: GenerationParams) -> None:
        """Reject requests that cannot run, with a message naming the problem."""
        from ..sampling import SAMPLER_NAMES, SCHEDULER_NAMES

        if p.steps < 1:
            raise RequestError(f"steps must be at least 1 (got {p.steps})")
        if p.steps > 1000:
            raise RequestError(f"steps must be at most 1000 (got {p.steps})")
        for label, v in (("width", p.width), ("height", p.height)):
            if v < 8 or v % 8:
                raise RequestError(f"{label} must be a positive multiple of 8 (got {v})")
            if v > 8192:
                raise RequestError(f"{label} must be at most 8192 (got {v})")
        if p.batch_size < 1 or p.batch_size > 64:
            raise RequestError(f"batch size must be between 1 and 64 (got {p.batch_size})")
        if not 0.0 < p.denoise <= 1.0:
            raise RequestError(f"denoise must be in (0, 1] (got {p.denoise})")
        if p.sampler not in SAMPLER_NAMES:
            raise RequestError(f"unknown sampler {p.sampler!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
        if p.scheduler not in SCHEDULER_NAMES:
            raise RequestError(f"unknown scheduler {p.scheduler!r}; choose one of: {', '.join(SCHEDULER_NAMES)}")
        if p.clip_skip < 1 or p.clip_skip > 12:
            raise RequestError(f"clip skip must be between 1 and 12 (got {p.clip_skip})")
        if p.seed < -1 or p.seed > MAX_SEED:
            raise RequestError(f"seed must be -1 (random) or between 0 and {MAX_SEED} (got {p.seed})")
        if p.init_image is not None and not Path(p.init_image).is_file():
            raise RequestError(f"init image not found: {p.init_image}")
        if not 0.0 < p.refiner_switch <= 1.0:
            raise RequestError(f"refiner switch must be in (0, 1] (got {p.refiner_switch})")
        up = p.hires.upscaler if p.hires is not None and p.init_image is None else "Latent"
        if not up.lower().startswith("latent") and up.lower() not in ("lanczos", "nearest"):
            self.upscaler(up)  # a missing or unreadable upscale model fails before the first pass, not after it

    def generate(self, params: GenerationParams, *, progress: ProgressCallback | None = None,
                 cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        """Run a txt2img / img2img request (with optional hires fix and refiner). Image i uses seed + i."""
        from ..conditioning.prompt_parser import extract_loras

        self.validate(params)
        clean_prompt, tag_loras = extract_loras(params.prompt)
        p = replace(params, loras=[*params.loras, *tag_loras])
        seed = p.seed if p.seed != -1 else random.randrange(MAX_SEED)
        with self._lock:
            ckpt = self.load(p.model, vae=p.vae)
            model_path = self.checkpoint_path(p.model)
            lora_hashes = self.apply_loras(ckpt, p.loras)
            used_ti: dict[str, Any] = {}
            if p.prompt_style == "a1111":
                positive = pipeline.encode_prompt_schedule(ckpt, clean_prompt, p.steps, clip_skip=p.clip_skip,
                                                           embeddings=self.embeddings(), used_embeddings=used_ti)
            else:
                positive = pipeline.encode_text(ckpt, clean_prompt, style=p.prompt_style, clip_skip=p.clip_skip,
                                                embeddings=self.embeddings(), used_embeddings=used_ti)
            negative = pipeline.encode_text(ckpt, p.negative_prompt, style=p.prompt_style, clip_skip=p.clip_skip,
                                            embeddings=self.embeddings(), used_embeddings=used_ti, negative=True)
            hires_conds = None
            if p.controlnets:  # issue #7: ControlNet units, applied as the embedded workflow applies them
                p, positive, negative, hires_conds = self._controlnets(ckpt, p, positive, negative)
            init_latent = None
            if p.init_image is not None:
                init = pil_to_tensor(Image.open(p.init_image).convert("RGB"))  # (1, H, W, 3)
                init = _resize_image(init, p.width, p.height, "lanczos")  # as the workflow's ImageScale
                with circular_padding(ckpt.vae, enabled=p.tiling):
                    init_latent = pipeline.encode(ckpt, init)
            refiner = self.load(p.refiner) if p.refiner else None
            ref_conds = None
            if refiner is not None:
                ref_conds = (
                    pipeline.encode_text(refiner, clean_prompt, style=p.prompt_style),
                    pipeline.encode_text(refiner, p.negative_prompt, style=p.prompt_style, negative=True),
                )
            total_steps = self._total_steps(p)
            images, seeds = [], []
            done = [0]

            def step_progress(step: int, total: int, _preview) -> None:
                if progress is not None:
                    progress(min(done[0] + 1, total_steps), total_steps)
                done[0] += 1

            from ..ipadapter.units import reference_processors

            for i in range(p.batch_size):
                s = (seed + i) % (MAX_SEED + 1)
                final = refiner if refiner is not None else ckpt
                with circular_padding(ckpt.unet, ckpt.vae, *([refiner.unet, refiner.vae] if refiner else []),
                                      enabled=p.tiling), \
                        reference_processors(ckpt.unet, positive, negative, *(hires_conds or ())):
                    # seamless textures and IP-Adapter attention (reference images): restored after each image
                    latent = self._one_image(ckpt, refiner, p, s, positive, negative, ref_conds, init_latent,
                                             step_progress, cancelled, hires_conds)
                    images.extend(tensor_to_pil(pipeline.decode(final, latent)))
                seeds.append(s)
        model_name = _model_display_name(self.registry.name_of("checkpoints", model_path) or model_path.name)
        model_hash = self.model_hash(model_path)
        ckpt_name = self.registry.name_of("checkpoints", model_path) or model_path.name
        refiner_name = None
        if p.refiner:
            rp = self.registry.find("checkpoints", p.refiner)
            refiner_name = self.registry.name_of("checkpoints", rp) or rp.name
        lora_files = {r.name: self.registry.name_of("loras", self.registry.find("loras", r.name)) or r.name
                      for r in p.loras}
        a1111_text = self._needs_a1111_text(p, ckpt, clean_prompt, used_ti)
        return self._result(p, images, seeds, model_name, model_hash, lora_hashes, used_ti, ckpt_name, lora_files,
                            a1111_text, refiner_name, self._upscaler_file(p))

    def _total_steps(self, p: GenerationParams) -> int:
        first = p.steps  # img2img runs `steps` steps too (ComfyUI's denoise rule)
        hires = (p.hires.steps or p.steps) if p.hires and p.init_image is None else 0
        return (first + hires) * p.batch_size

    def _controlnets(self, ckpt, p: GenerationParams, positive, negative):
        """Units with registry model names, and the conditionings of the first pass and (per unit hr_option) of the
        hires pass with the units attached."""
        from ..control.units import ControlUnitError, attach_units, resolve_units

        try:
            units = resolve_units(self.registry, p.controlnets)  # IP-Adapter units: with their CLIP vision file
            p = replace(p, controlnets=units)
            hires = p.hires is not None and p.init_image is None
            lo = [u for u in units if not hires or u.hr_option != "High res only"]
            hi = [u for u in units if hires and u.hr_option != "Low res only"]
            first = attach_units(self, ckpt, lo, positive, negative, width=p.width, height=p.height)
            second = first if hi == lo else attach_units(self, ckpt, hi, positive, negative, width=p.width,
                                                         height=p.height)
        except ControlUnitError as e:
            raise RequestError(f"ControlNet: {e}") from None
        return p, first[0], first[1], second

    def _one_image(self, ckpt, refiner, p, seed, positive, negative, ref_conds, init_latent, progress, cancelled,
                   hires_conds=None):
        f = ckpt.vae_downscale
        if init_latent is not None:
            latent = init_latent
            denoise = p.denoise
        else:
            latent = torch.zeros((1, ckpt.latent_channels, p.height // f, p.width // f))
            denoise = 1.0
        common = dict(seed=seed, cfg=p.cfg, sampler=p.sampler, scheduler=p.scheduler, progress=progress,
                      cancelled=cancelled)
        if refiner is None:
            latent = pipeline.ksample(ckpt, latent, positive, negative, steps=p.steps, denoise=denoise, **common)
        else:
            switch = max(1, min(p.steps, round(p.steps * p.refiner_switch)))
            latent = pipeline.ksample(ckpt, latent, positive, negative, steps=p.steps, denoise=denoise,
                                      end_step=switch, force_full_denoise=False, **common)
            if switch < p.steps:
                latent = pipeline.ksample(refiner, latent, ref_conds[0], ref_conds[1], steps=p.steps,
                                          denoise=denoise, add_noise=False, start_step=switch, end_step=10000,
                                          **common)
        if p.hires is not None and init_latent is None:  # hires fix is a txt2img option, as in A1111
            if hires_conds is not None:  # ControlNet units of the hires pass
                positive, negative = hires_conds
            final_positive = positive.last() if isinstance(positive, pipeline.CondSchedule) else positive
            latent = self._hires(ckpt if refiner is None else refiner, p, p.hires, latent,
                                 final_positive if refiner is None else ref_conds[0],
                                 negative if refiner is None else ref_conds[1], common)
        return latent

    def _hires(self, ckpt, p: GenerationParams, h: HiresParams, latent, positive, negative, common):
        """Hires fix: upscale the first pass (in latent space or as an image), then re-sample at `h.denoise`."""
        tw = h.width or int(p.width * h.scale) // 8 * 8
        th = h.height or int(p.height * h.scale) // 8 * 8
        up = h.upscaler
        if up.lower().startswith("latent"):
            method = "nearest-exact" if "nearest" in up.lower() else "bicubic" if "bicubic" in up.lower() else \
                "bilinear"
            latent = pipeline.upscale_latent(latent, tw, th, method)
        else:
            method = {"nearest": "nearest-exact", "lanczos": "lanczos"}.get(up.lower())
            image = pipeline.decode(ckpt, latent)  # (1, H, W, 3)
            if method is None:  # an upscale model (ESRGAN …), then lanczos to the target size, as the workflow does
                from ..upscale import upscale_image

                image = upscale_image(self.upscaler(up).to(self.device), image)
                method = "lanczos"
            latent = pipeline.encode(ckpt, _resize_image(image, tw, th, method))
        return pipeline.ksample(ckpt, latent, positive, negative, steps=h.steps or p.steps, denoise=h.denoise,
                                **common)

    @staticmethod
    def _needs_a1111_text(p: GenerationParams, ckpt: Checkpoint, clean_prompt: str, used_ti: dict) -> bool:
        """Whether ComfyUI's CLIPTextEncode would encode these prompts differently from A1111's rules (weights,
        BREAK/AND, embeddings by name, prompts over 75 tokens, SDXL's zeroed empty negative)."""
        if p.prompt_style != "a1111":
            return False
        texts = (clean_prompt, p.negative_prompt)
        if used_ti or any(c in t for t in texts for c in "()[]\\") or any(re.search(r"\b(BREAK|AND)\b", t)
                                                                          for t in texts):
            return True
        if ckpt.kind.is_sdxl and not p.negative_prompt.strip():
            return True
        tok = ckpt.tokenizers[0]
        return any(len(tok(t, add_special_tokens=False)["input_ids"]) > 75 for t in texts)

    def _result(self, p, images, seeds, model_name, model_hash, lora_hashes, used_ti, ckpt_name,
                lora_files, a1111_text=False, refiner_name=None, upscale_file=None) -> GenerationResult:
        from ..metadata.infotext import infotext_for
        from ..metadata.workflow import workflow_from_params

        extra: dict[str, Any] = {}
        if lora_hashes:
            extra["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in lora_hashes.items())
        if used_ti:
            extra["TI hashes"] = ", ".join(f"{k}: {v}" for k, v in used_ti.items())
        for i, unit in enumerate(p.controlnets):  # issue #7: as A1111's ControlNet extension writes them
            extra[f"ControlNet {i}"] = unit.infotext(registry=self.registry)
        infotexts, workflows = [], []
        for s in seeds:
            single = replace(p, seed=s, batch_size=1)
            infotexts.append(infotext_for(single, seed=s, model_name=model_name, model_hash=model_hash, extra=extra))
            workflows.append(workflow_from_params(single, seed=s, model_name=model_name, ckpt_name=ckpt_name,
                                                  lora_files=lora_files, a1111_text=a1111_text,
                                                  refiner_ckpt_name=refiner_name,
                                                  upscale_model_name=upscale_file))
        return GenerationResult(images=images, seeds=seeds, infotexts=infotexts, workflows=workflows, params=p,
                                model_name=model_name, model_hash=model_hash, extra=extra)
