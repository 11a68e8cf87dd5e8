"""ControlNet units of a typed request (`GenerationParams.controlnets`) and A1111's ControlNet-extension units.

A `ControlNetUnit` is plain data: which model, which control image file, which preprocessor with which settings,
weight, guidance window, control mode, resize mode and hires option. Both consumers honour it the same way:
- `darkroom.metadata.workflow.workflow_from_params` adds, per unit, LoadImage (+ LoadImageMask) →
  ControlNetPreprocessor → DiffControlNetLoader → ControlNetApplyAdvanced (ControlNetApplyA1111 for A1111's soft
  control modes) between the prompts and the samplers;
- `Engine.generate` runs the same steps through `attach_units` (same preprocessing, same loader, same apply).

`parse_a1111_unit` reads one entry of A1111's `alwayson_scripts.controlnet.args` (sd-webui-controlnet's unit fields
and their aliases) without touching images or files; the server decodes the images and resolves the model name.

A unit whose module is an IP-Adapter preprocessor (`ip-adapter_clip_sd15`, `ip-adapter-auto`, …) is a reference
image instead (`darkroom.ipadapter.units`): its model is an IP-Adapter file, `weight_type` picks IPAdapterAdvanced's
weighting ("style transfer" = style only, "composition" = composition only) and `clip_vision` the image encoder;
its control_mode, resize_mode and preprocessor settings are recorded only (the extension hides them for IP-Adapter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

from .modes import A1111_CONTROL_MODES, CONTROL_MODES, control_mode, resize_mode

HR_OPTIONS = ("Both", "Low res only", "High res only")
#: The most units a request may carry (A1111's "Multi-ControlNet: max models" setting goes up to 10).
MAX_UNITS = 10
_MODE_LABELS = {v: k for k, v in A1111_CONTROL_MODES.items()}


class ControlUnitError(ValueError):
    """A ControlNet unit that cannot run as given; `field` names the offending field."""

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class ControlNetUnit:
    """One ControlNet / T2I-Adapter unit of a request (A1111's ControlNet extension unit, typed)."""

    model: str  # control model name under controlnet/ (as the registry lists it)
    image: Path | None = None  # control image file; a relative path is a name in the input folder
    module: str = "none"  # preprocessor (A1111 name or alias)
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "balanced"  # balanced | prompt | control (A1111's three modes)
    resize_mode: str = "Crop and Resize"
    processor_res: int = -1  # -1: the preprocessor's default
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    mask: Path | None = None  # for the inpaint preprocessors: white = repaint
    pixel_perfect: bool = False  # recorded; the resolution is computed when the unit is made
    hr_option: str = "Both"  # which passes of a hires-fix request it controls
    extra: dict[str, Any] = field(default_factory=dict)
    #: IP-Adapter units: IPAdapterAdvanced's weight type — "linear", "style transfer" (style only), "composition"
    #: (composition only), "strong style transfer", "ease in", … (darkroom.ipadapter.attention.SUPPORTED_WEIGHT_TYPES)
    weight_type: str = "linear"
    #: IP-Adapter units: the clip_vision file (None: the one the module implies, found when the request is resolved)
    clip_vision: str | None = None

    @property
    def is_ipadapter(self) -> bool:
        """Whether this unit is a reference image through an IP-Adapter (its module is an ip-adapter one)."""
        from ..ipadapter.units import is_ipadapter_module

        return is_ipadapter_module(self.module)

    def validate(self) -> None:
        """Check names and ranges (raises ControlUnitError naming the field)."""
        if not self.model or self.model in ("None", "none"):
            raise ControlUnitError("a ControlNet unit needs a model", "model")
        from .preprocess import PreprocessorError, get_preprocessor

        try:
            self.resize_mode = resize_mode(self.resize_mode)
        except PreprocessorError as ex:
            raise ControlUnitError(str(ex), "resize_mode") from None
        if self.is_ipadapter:
            self._validate_ipadapter()
        else:
            try:
                get_preprocessor(self.module)
            except PreprocessorError as ex:
                raise ControlUnitError(str(ex), "module") from None
            if self.weight_type != "linear":
                raise ControlUnitError(f"weight_type {self.weight_type!r} applies to IP-Adapter units only (module "
                                       f"{self.module!r} is a ControlNet preprocessor)", "weight_type")
            if not 0.0 <= self.weight <= 10.0:
                raise ControlUnitError(f"weight must be between 0 and 10 (got {self.weight})", "weight")
        try:
            self.control_mode = control_mode(self.control_mode)
        except ValueError as ex:
            raise ControlUnitError(str(ex), "control_mode") from None
        for name in ("guidance_start", "guidance_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ControlUnitError(f"{name} must be between 0 and 1 (got {v})", name)
        if self.guidance_start > self.guidance_end:
            raise ControlUnitError(f"guidance_start ({self.guidance_start}) is after guidance_end "
                                   f"({self.guidance_end})", "guidance_start")
        if self.hr_option not in HR_OPTIONS:
            raise ControlUnitError(f"hr_option must be one of {', '.join(HR_OPTIONS)} (got {self.hr_option!r})",
                                   "hr_option")
        if self.processor_res > 16384:
            raise ControlUnitError(f"processor_res must be at most 16384 (got {self.processor_res})",
                                   "processor_res")

    def _validate_ipadapter(self) -> None:
        from ..ipadapter.attention import check_weight_type
        from ..ipadapter.units import WEIGHT_RANGE, canonical_module

        try:
            canonical_module(self.module)
        except ValueError as ex:
            raise ControlUnitError(str(ex), "module") from None
        try:
            check_weight_type(self.weight_type)
        except ValueError as ex:
            raise ControlUnitError(str(ex), "weight_type") from None
        lo, hi = WEIGHT_RANGE
        if not lo <= self.weight <= hi:
            raise ControlUnitError(f"weight must be between {lo:g} and {hi:g} for an IP-Adapter unit (got "
                                   f"{self.weight})", "weight")

    @property
    def preprocessor(self) -> str:
        """The preprocessor's internal name."""
        if self.is_ipadapter:
            from ..ipadapter.units import canonical_module

            return canonical_module(self.module)
        from .preprocess import get_preprocessor

        return get_preprocessor(self.module).name

    @property
    def mode_label(self) -> str:
        """A1111's label of the control mode."""
        return _MODE_LABELS[control_mode(self.control_mode)]

    def input_name(self, path: Path | None) -> str | None:
        """How a workflow's LoadImage names a file: relative paths as given, absolute ones by file name."""
        if path is None:
            return None
        p = PurePath(str(path))
        return p.name if p.is_absolute() else p.as_posix()

    def infotext(self, model_title: str | None = None, *, registry: Any = None) -> str:
        """The value A1111 writes as `ControlNet N` in the infotext (model as `name [hash]` given the registry)."""
        from .preprocess import get_preprocessor

        if model_title is None and registry is not None:
            if self.is_ipadapter:
                from ..ipadapter.units import ipadapter_title

                model_title = ipadapter_title(registry, self.model)
            else:
                from .names import control_model_title

                model_title = control_model_title(registry, self.model)
        if self.is_ipadapter:  # no sliders: the extension's hidden defaults
            name, defaults = self.preprocessor, (512, 0.5, 0.5)
        else:
            pre = get_preprocessor(self.module)
            name, defaults = pre.name, (pre.default(0), pre.default(1), pre.default(2))
        parts = [f"Module: {name}", f"Model: {model_title or self.model}", f"Weight: {self.weight:g}",
                 f"Resize Mode: {resize_mode(self.resize_mode)}",
                 f"Processor Res: {int(self.processor_res if self.processor_res > 0 else defaults[0])}",
                 f"Threshold A: {self.threshold_a if self.threshold_a >= 0 else defaults[1]:g}",
                 f"Threshold B: {self.threshold_b if self.threshold_b >= 0 else defaults[2]:g}",
                 f"Guidance Start: {self.guidance_start:g}", f"Guidance End: {self.guidance_end:g}",
                 f"Pixel Perfect: {self.pixel_perfect}", f"Control Mode: {self.mode_label}"]
        if self.hr_option != "Both":
            parts.append(f"Hr Option: {self.hr_option}")
        if self.weight_type != "linear":  # darkroom's IP-Adapter weighting (not an sd-webui-controlnet field)
            parts.append(f"Weight Type: {self.weight_type}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        d = asdict(self)
        for key in ("image", "mask"):
            if d[key] is not None:
                d[key] = str(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlNetUnit:
        """The inverse of `to_dict` (unknown keys are refused)."""
        d = dict(d)
        for key in ("image", "mask"):
            if d.get(key) is not None:
                d[key] = Path(d[key])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------
# A1111 units


@dataclass
class A1111Unit:
    """One parsed A1111 unit: the typed fields, plus the base64 images still to decode and store."""

    unit: ControlNetUnit
    image_b64: str | None
    mask_b64: str | None


_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask",
            "guessmode": "guess_mode"}
_IGNORED = {"low_vram", "save_detected_map", "inpaint_crop_input_image", "effective_region_mask",
            "advanced_weighting", "pulid_mode", "union_control_type", "ipadapter_input", "is_ui", "input_mode",
            "batch_images", "output_dir", "loopback", "use_preview_as_input", "batch_image_dir",
            "batch_input_gallery", "batch_mask_dir", "batch_mask_gallery", "generated_image", "mask_image_fg",
            "hr_option_index", "animatediff_batch", "batch_modifiers", "batch_keyframe_idx", "guess_mode",
            "image_fg"}
_FIELDS = {"enabled", "module", "model", "weight", "image", "mask", "resize_mode", "processor_res", "threshold_a",
           "threshold_b", "guidance_start", "guidance_end", "control_mode", "pixel_perfect", "hr_option",
           "weight_type"}  # weight_type: darkroom's IP-Adapter weighting ("style transfer", "composition", …)


def _image_parts(value: Any, where: str) -> tuple[str | None, str | None]:
    """(image, mask) base64 strings from A1111's image forms: a string, {image, mask}, or [image, mask]."""
    if value in (None, ""):
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping):
        img, mask = value.get("image"), value.get("mask")
        if img is not None and not isinstance(img, str) or mask is not None and not isinstance(mask, str):
            raise ControlUnitError(f"{where}: image and mask must be base64 strings", where)
        return img or None, mask or None
    if isinstance(value, (list, tuple)) and 1 <= len(value) <= 2 and all(isinstance(v, str) for v in value):
        return value[0] or None, (value[1] or None) if len(value) > 1 else None
    raise ControlUnitError(f"{where}: expected a base64 image or {{'image': …, 'mask': …}}", where)


def _number(value: Any, name: str, where: str, kind: type = float) -> Any:
    if isinstance(value, bool):
        raise ControlUnitError(f"{where}.{name} must be a number", f"{where}.{name}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ControlUnitError(f"{where}.{name} must be a number (got {value!r})", f"{where}.{name}") from None


def parse_a1111_unit(raw: Any, index: int = 0) -> A1111Unit | None:
    """One entry of `alwayson_scripts.controlnet.args` → A1111Unit, or None for a disabled or model-less unit."""
    where = f"alwayson_scripts.controlnet.args[{index}]"
    if raw is None or raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ControlUnitError(f"{where} must be a unit object (module, model, weight, image, …); darkroom does not "
                               f"accept positional ControlNet arguments", where)
    d = {_ALIASES.get(k, k): v for k, v in raw.items()}
    unknown = sorted(set(d) - _FIELDS - _IGNORED)
    if unknown:
        raise ControlUnitError(f"{where}: unknown ControlNet unit field(s) {', '.join(unknown)}", where)
    if not d.get("enabled", True):
        return None
    model = d.get("model")
    if model in (None, "", "None", "none"):
        return None
    if not isinstance(model, str):
        raise ControlUnitError(f"{where}.model must be a model name", f"{where}.model")
    image_b64, mask_b64 = _image_parts(d.get("image"), f"{where}.image")
    if d.get("mask") not in (None, ""):
        if not isinstance(d["mask"], str):
            raise ControlUnitError(f"{where}.mask must be a base64 image", f"{where}.mask")
        mask_b64 = d["mask"]
    mode = d.get("control_mode", "Balanced")
    try:
        mode = control_mode(mode)
    except ValueError as ex:
        raise ControlUnitError(f"{where}.control_mode: {ex}", f"{where}.control_mode") from None
    try:
        rmode = resize_mode(d.get("resize_mode", "Crop and Resize"))
    except ValueError as ex:
        raise ControlUnitError(f"{where}.resize_mode: {ex}", f"{where}.resize_mode") from None
    unit = ControlNetUnit(
        model=model, module=str(d.get("module") or "none"),
        weight=_number(d.get("weight", 1.0), "weight", where),
        guidance_start=_number(d.get("guidance_start", 0.0), "guidance_start", where),
        guidance_end=_number(d.get("guidance_end", 1.0), "guidance_end", where),
        control_mode=mode, resize_mode=rmode,
        processor_res=_number(d.get("processor_res", -1), "processor_res", where, int),
        threshold_a=_number(d.get("threshold_a", -1), "threshold_a", where),
        threshold_b=_number(d.get("threshold_b", -1), "threshold_b", where),
        pixel_perfect=bool(d.get("pixel_perfect", False)), hr_option=str(d.get("hr_option") or "Both"),
        weight_type=str(d.get("weight_type") or "linear"),
    )
    try:
        unit.validate()
    except ControlUnitError as ex:
        name = f"{where}.{ex.field}" if ex.field else where
        raise ControlUnitError(f"{name}: {ex}", name) from None
    return A1111Unit(unit, image_b64, mask_b64)


def a1111_units(alwayson_scripts: Mapping[str, Any]) -> list[A1111Unit]:
    """Every enabled unit of a request's `alwayson_scripts` ("controlnet" in any letter case)."""
    units: list[A1111Unit] = []
    for key, entry in (alwayson_scripts or {}).items():
        if key.lower() != "controlnet":
            continue
        args = entry.get("args", []) if isinstance(entry, Mapping) else entry
        if not isinstance(args, (list, tuple)):
            raise ControlUnitError("alwayson_scripts.controlnet.args must be a list of units", "alwayson_scripts")
        for i, raw in enumerate(args):
            parsed = parse_a1111_unit(raw, i)
            if parsed is not None:
                units.append(parsed)
    if len(units) > MAX_UNITS:
        raise ControlUnitError(f"at most {MAX_UNITS} ControlNet units per request (got {len(units)})",
                               "alwayson_scripts")
    return units


# ---------------------------------------------------------------------------------------------------------------
# the engine's side: the same steps the workflow nodes run


def resolve_units(registry: Any, units: list[ControlNetUnit]) -> list[ControlNetUnit]:
    """Units naming installed files: ControlNets as the registry names them (its ModelNotFoundError otherwise),
    IP-Adapter units with their adapter and CLIP vision files (ControlUnitError naming what to install)."""
    from .names import find_control_model

    out = []
    for i, unit in enumerate(units):
        if unit.is_ipadapter:
            from ..ipadapter.units import resolve_ipadapter_unit

            out.append(resolve_ipadapter_unit(registry, unit, i))
            continue
        name = find_control_model(registry, unit.model)
        from ..ipadapter.units import adapter_info

        path = registry.find("controlnet", name)
        if adapter_info(path, allow_unsafe_pickle=registry.settings.allow_unsafe_pickle) is not None:
            raise ControlUnitError(f"{name} is an IP-Adapter: use an ip-adapter module (ip-adapter-auto) with it, "
                                   f"not {unit.module!r}", "module")
        out.append(replace(unit, model=name))
    return out


def attach_units(engine: Any, ckpt: Any, units: list[ControlNetUnit], positive: Any, negative: Any, *,
                 width: int, height: int) -> tuple[Any, Any]:
    """Load, preprocess and apply every unit (as LoadImage → ControlNetPreprocessor → DiffControlNetLoader →
    ControlNetApplyAdvanced do in the request's workflow); positive may be an A1111 prompt schedule. IP-Adapter units
    (resolved) mark the conditioning with their uses, as IPAdapterAdvanced's MODEL does for its KSampler; sample
    inside `darkroom.ipadapter.units.reference_processors`."""
    import numpy as np
    import torch
    from PIL import Image

    from .apply import AppliedControl, map_conditioning
    from .loader import describe_control_file, load_control_model
    from .preprocess import prepare_hint

    settings = engine.settings
    dirs, home = list(settings.model_dirs("annotators")), settings.models_dir / "annotators"
    for i, unit in enumerate(units):
        unit.validate()
        if unit.is_ipadapter:
            continue
        if unit.image is None:
            raise ControlUnitError(f"ControlNet unit {i} has no image", "image")
        from .names import find_control_model

        path = engine.registry.find("controlnet", find_control_model(engine.registry, unit.model))

        def build(path: Path = path) -> Any:
            return load_control_model(path, dtype=engine.dtype, device=engine.device, base_unet=ckpt.unet,
                                      allow_unsafe_pickle=settings.allow_unsafe_pickle)

        # a diff ControlNet is made from the checkpoint's UNet as it is now (LoRAs included): never reused
        diff = describe_control_file(path, allow_unsafe_pickle=settings.allow_unsafe_pickle).diff
        model = build() if diff else engine.aux_model("controlnet", path, build)
        with Image.open(unit.image) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
        masks = None
        if unit.mask is not None:
            with Image.open(unit.mask) as im:
                masks = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)[:, :, 0] / 255.0)[None]
        hint = prepare_hint(image, unit.module, resolution=unit.processor_res, threshold_a=unit.threshold_a,
                            threshold_b=unit.threshold_b, masks=masks, width=width, height=height,
                            mode=unit.resize_mode, annotator_dirs=dirs, annotator_home=home, device=engine.device)
        if unit.weight == 0:  # ControlNetApplyAdvanced returns the conditioning unchanged
            continue
        shared = AppliedControl(model, hint, unit.weight, unit.guidance_start, unit.guidance_end,
                                control_mode(unit.control_mode))  # one unit object for both sides, as the node

        def attach(items: list, shared: AppliedControl = shared) -> list:
            return [item.with_(extra={**item.extra, "control": [*item.extra.get("control", ()), shared]})
                    for item in items]

        positive = map_conditioning(positive, attach)
        negative = map_conditioning(negative, attach)
    references = [u for u in units if u.is_ipadapter]
    if references:  # issue #7: reference images, in unit order (as the IPAdapterAdvanced chain)
        from ..engine.pipeline import model_sampling_for
        from ..ipadapter.attention import attach as attach_references
        from ..ipadapter.units import reference_uses

        uses, ms = reference_uses(engine, ckpt, references), model_sampling_for(ckpt)
        positive = map_conditioning(positive, lambda items: attach_references(items, uses, ms))
        negative = map_conditioning(negative, lambda items: attach_references(items, uses, ms))
    return positive, negative


__all__ = ["A1111Unit", "ControlNetUnit", "ControlUnitError", "HR_OPTIONS", "MAX_UNITS", "CONTROL_MODES",
           "a1111_units", "attach_units", "parse_a1111_unit", "resolve_units"]
