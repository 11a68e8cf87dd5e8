"""A1111's `alwayson_scripts.controlnet` units → typed `ControlNetUnit`s with their images stored in input/.

Each enabled unit's model is resolved among the installed control models (registry names, A1111 `name [hash]`
titles, bare or folder names), its image and mask are decoded and written to `input/sdapi/` under their content hash
(an img2img unit without an image uses the init image, an inpaint unit without a mask the request's mask, as the
extension does), and "pixel perfect" becomes the processor resolution it stands for. The units go into
`GenerationParams.controlnets`; the workflow builder turns them into nodes.

A unit with an IP-Adapter module (`ip-adapter_clip_sd15`, `ip-adapter-auto`, …) is a reference image: its model is
found among the IP-Adapter files (models/ipadapter, or models/controlnet as in A1111), its CLIP vision encoder in
models/clip_vision (a missing one is a 400 naming the file to install and where), and no mask or pixel-perfect
resolution applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image


def controlnet_units(req: Any, ctx: Any, *, init_names: list[str], mask_name: str | None) -> tuple[list, dict]:
    """(units, infotext extras) for a txt2img/img2img request; raises SdapiError naming the field."""
    from ..control.names import control_model_title
    from ..control.preprocess import get_preprocessor, pixel_perfect_resolution
    from ..control.units import ControlUnitError, a1111_units, resolve_units
    from ..ipadapter.units import ipadapter_title
    from .sdapi import SdapiError, _decode, _flatten, _store_input

    try:
        parsed = a1111_units(req.alwayson_scripts)
    except ControlUnitError as ex:
        raise SdapiError(400, str(ex), ex.field or "alwayson_scripts") from None
    units, extra = [], {}
    for i, item in enumerate(parsed):
        where = f"alwayson_scripts.controlnet.args[{i}]"
        try:
            (unit,) = resolve_units(ctx.models, [item.unit])
        except ControlUnitError as ex:  # IP-Adapter units: names the model or encoder file missing
            name = f"{where}.{ex.field or 'model'}"
            raise SdapiError(400, f"{name}: {ex}", name) from None
        except Exception as ex:  # noqa: BLE001 — the registry's message lists the installed models
            raise SdapiError(400, f"{where}.model: {ex}", f"{where}.model") from None
        if item.image_b64:
            image = _flatten(_decode(item.image_b64, f"{where}.image", ctx.limits))
            unit.image = Path(_store_input(image, ctx.folders, "cn"))
        elif init_names:
            unit.image = Path(init_names[0])  # A1111: a unit without an image controls with the img2img input
            with Image.open(ctx.folders.input / init_names[0]) as im:
                image = im.convert("RGB")
        else:
            raise SdapiError(400, f"{where}: ControlNet unit {i} has no image", f"{where}.image")
        if unit.is_ipadapter:  # a reference image: CLIP vision crops it itself, no mask or processor resolution
            units.append(unit)
            extra[f"ControlNet {i}"] = unit.infotext(ipadapter_title(ctx.models, unit.model))
            continue
        if item.mask_b64:
            mask = _decode(item.mask_b64, f"{where}.mask", ctx.limits).convert("L")
            unit.mask = Path(_store_input(mask, ctx.folders, "cnmask"))
        elif get_preprocessor(unit.module).needs_mask:
            if mask_name is None:
                raise SdapiError(400, f"{where}: preprocessor {unit.module!r} needs a mask (send one with the unit "
                                      f"or use img2img inpainting)", f"{where}.mask")
            unit.mask = Path(mask_name)
        if unit.pixel_perfect:
            unit.processor_res = pixel_perfect_resolution((image.height, image.width), (req.height, req.width),
                                                          unit.resize_mode)
        units.append(unit)
        extra[f"ControlNet {i}"] = unit.infotext(control_model_title(ctx.models, unit.model))
    return units, extra
