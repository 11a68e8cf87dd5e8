"""Names shared by requests and nodes: A1111's control modes and resize modes (no heavy imports)."""

from __future__ import annotations

from typing import Any

#: Control modes: ComfyUI's plain application, and A1111's two soft variants.
CONTROL_MODES = ("balanced", "prompt", "control")
#: A1111's labels → darkroom's names.
A1111_CONTROL_MODES = {"Balanced": "balanced", "My prompt is more important": "prompt",
                       "ControlNet is more important": "control"}
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
_RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                   "Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill",
                   "Just Resize (Latent upscale)": "Just Resize"}


def control_mode(value: Any) -> str:
    """'balanced' / 'prompt' / 'control' from darkroom names, A1111 labels or A1111's 0/1/2."""
    if isinstance(value, bool):
        raise ValueError(f"control mode must be a name or 0/1/2, not {value!r}")
    if isinstance(value, int) and 0 <= value < len(CONTROL_MODES):
        return CONTROL_MODES[value]
    text = str(value).strip()
    if text.lower() in CONTROL_MODES:
        return text.lower()
    if text in A1111_CONTROL_MODES:
        return A1111_CONTROL_MODES[text]
    if text.isdigit() and int(text) < len(CONTROL_MODES):
        return CONTROL_MODES[int(text)]
    raise ValueError(f"unknown control mode {value!r}; use one of: {', '.join(A1111_CONTROL_MODES)} "
                     f"(or {', '.join(CONTROL_MODES)})")


def resize_mode(value: Any) -> str:
    """A1111's resize mode label from a label, an alias or 0/1/2 (3, latent upscale, counts as Just Resize)."""
    from .preprocess import PreprocessorError

    if isinstance(value, bool):
        raise PreprocessorError(f"unknown resize mode {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        if i == 3:
            return "Just Resize"
        if 0 <= i < len(RESIZE_MODES):
            return RESIZE_MODES[i]
        raise PreprocessorError(f"unknown resize mode {value!r}; use 0, 1, 2 or one of {', '.join(RESIZE_MODES)}")
    text = _RESIZE_ALIASES.get(str(value).strip(), str(value).strip())
    for mode in RESIZE_MODES:
        if text.lower() == mode.lower():
            return mode
    raise PreprocessorError(f"unknown resize mode {value!r}; use one of: {', '.join(RESIZE_MODES)}")
