"""Control beyond prompting: ControlNets and T2I-Adapters, their preprocessors, and applying them while sampling.

    model = load_control_model("models/controlnet/control_v11p_sd15_canny.safetensors")
    hint = prepare_hint(images, "canny", resolution=512, width=768, height=512)  # IMAGE (B, 512, 768, 3)
    positive, negative = apply_control(positive, negative, model, hint, strength=0.8, end_percent=0.6)

`loader` detects and loads files (every layout people download), `convert` renames their keys, `model` wraps the
diffusers modules, `apply` attaches units to conditioning and computes residuals for the denoiser, `preprocess` /
`openpose` / `annotators` make hint images, `units` is the request-level unit (A1111's ControlNet API), `graph`
turns units into workflow nodes, `names` lists and finds control models by A1111 titles.
Names are imported lazily: importing the package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AppliedControl": ".apply",
    "apply_control": ".apply",
    "ControlNetUnit": ".units",
    "ControlUnitError": ".units",
    "attach_units": ".units",
    "parse_a1111_unit": ".units",
    "fit_to_size": ".preprocess",
    "get_preprocessor": ".preprocess",
    "prepare_hint": ".preprocess",
    "preprocess": ".preprocess",
    "preprocessor_names": ".preprocess",
    "render_pose": ".openpose",
    "AnnotatorMissingError": ".annotators",
    "find_control_model": ".names",
    "control_model_titles": ".names",
    "ControlFileInfo": ".loader",
    "describe_control_file": ".loader",
    "detect_control": ".loader",
    "load_control_model": ".loader",
    "ControlModel": ".model",
    "ControlModelError": ".model",
    "ControlNet": ".model",
    "T2IAdapter": ".model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
