"""Control-image preprocessors (A1111 ControlNet extension names), and fitting their maps to the generation size.

Built in, no weights (numpy + OpenCV): canny, threshold, scribble_xdog, scribble_drawing (a user's dark-on-light
drawing → white scribbles), invert, lineart_standard, softedge_dog, tile_resample, blur_gaussian, shuffle, color
(T2I colour grid), inpaint / inpaint_only (masked pixels become -1, the inpaint ControlNet's convention),
recolor_luminance, recolor_intensity. Preprocessors that need downloaded networks are listed too and explain which
file to install (`annotators`). OpenPose JSON poses are rendered by `openpose.render_pose`.

Maps are made as A1111 makes them: the input is resized so its short side equals the processor resolution (cubic
up, area down), the map is computed, then `fit_to_size` brings it to the generation size with A1111's resize modes
("Just Resize", "Crop and Resize", "Resize and Fill") and its careful resize for binary and few-colour maps.
Everything works on (H, W, 3) uint8 arrays; `prepare_hint` wraps it for IMAGE tensors (B, H, W, 3) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .annotators import ANNOTATORS, run_annotator
from .modes import RESIZE_MODES, resize_mode  # noqa: F401 (re-exported)

DEFAULT_RESOLUTION = 512
_RES_SLIDER = {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}


class PreprocessorError(ValueError):
    """A preprocessor name or input that cannot be used (the message says what to change)."""


# ---------------------------------------------------------------------------------------------------------------
# image helpers


def hwc3(img: np.ndarray) -> np.ndarray:
    """Any uint8 image (H, W), (H, W, 1|3|4) → (H, W, 3); alpha is composited onto white."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        a = img[:, :, 3:4].astype(np.float32) / 255.0
        return (img[:, :, :3].astype(np.float32) * a + 255.0 * (1.0 - a)).clip(0, 255).astype(np.uint8)
    return img[:, :, :3]


def resize_short_side(img: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side equals `resolution` (cubic when enlarging, area when shrinking), as A1111."""
    import cv2

    h, w = img.shape[:2]
    k = float(resolution) / float(min(h, w))
    if abs(k - 1.0) < 1e-9:
        return img
    size = (max(1, int(round(w * k))), max(1, int(round(h * k))))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


# ---------------------------------------------------------------------------------------------------------------
# the built-in preprocessors: (img uint8 HWC3, resolution, a, b, mask) → uint8 map (or float map for inpaint)


def _canny(img, res, a, b, mask):
    import cv2

    return hwc3(cv2.Canny(resize_short_side(img, res), int(a), int(b)))


def _threshold(img, res, a, b, mask):
    img = resize_short_side(img, res)
    out = np.zeros(img.shape[:2], np.uint8)
    out[img.min(axis=2) > a] = 255
    return hwc3(out)


def _scribble_drawing(img, res, a, b, mask):
    """Dark strokes on a light background (a user's drawing) → white scribbles on black."""
    img = resize_short_side(img, res)
    out = np.zeros(img.shape[:2], np.uint8)
    out[img.min(axis=2) < a] = 255
    return hwc3(out)


def _scribble_xdog(img, res, a, b, mask):
    import cv2

    img = resize_short_side(img, res).astype(np.float32)
    g1 = cv2.GaussianBlur(img, (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img, (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros(img.shape[:2], np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > a] = 255
    return hwc3(out)


def _invert(img, res, a, b, mask):
    return 255 - img


def _lineart_standard(img, res, a, b, mask):
    import cv2

    x = resize_short_side(img, res).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return hwc3((intensity * 127).clip(0, 255).astype(np.uint8))


def _softedge_dog(img, res, a, b, mask):
    """Soft edges from a difference of Gaussians: bright, blurred bands where the picture changes."""
    import cv2

    gray = _gray(resize_short_side(img, res)).astype(np.float32) / 255.0
    dog = np.abs(cv2.GaussianBlur(gray, (0, 0), 1.0) - cv2.GaussianBlur(gray, (0, 0), 3.0))
    top = float(np.percentile(dog, 99.5))
    soft = cv2.GaussianBlur(dog / max(top, 1e-3), (0, 0), 1.5)
    return hwc3((soft.clip(0, 1) * 255).astype(np.uint8))


def _tile_resample(img, res, a, b, mask):
    import cv2

    if a < 1.1:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, int(w / a)), max(1, int(h / a))), interpolation=cv2.INTER_AREA)


def _blur_gaussian(img, res, a, b, mask):
    import cv2

    return cv2.GaussianBlur(resize_short_side(img, res), (0, 0), float(a))


def _noise_disk(h: int, w: int, f: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field in [0, 1] of size (h, w) with features about f pixels wide."""
    import cv2

    noise = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float32)
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f : f + h, f : f + w]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-8)


def _shuffle(img, res, a, b, mask):
    """Content shuffle: warp the picture by a smooth random flow (seeded by threshold_a, default 0)."""
    import cv2

    img = resize_short_side(img, res)
    h, w = img.shape[:2]
    rng = np.random.default_rng(int(a) if a >= 0 else 0)
    flow_x = _noise_disk(h, w, 256, rng) * float(w - 1)
    flow_y = _noise_disk(h, w, 256, rng) * float(h - 1)
    return cv2.remap(img, flow_x.astype(np.float32), flow_y.astype(np.float32), cv2.INTER_LINEAR)


def _color(img, res, a, b, mask):
    """T2I colour grid: the picture shrunk to 1/64 (cubic) and blown back up as flat cells."""
    import cv2

    h, w = img.shape[:2]
    if h < w:
        size = (int(round(w / h * res)), res)
    else:
        size = (res, int(round(h / w * res)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _inpaint(img, res, a, b, mask):
    if mask is None:
        raise PreprocessorError("the inpaint preprocessors need a mask (white = the part to repaint)")
    if mask.shape[:2] != img.shape[:2]:
        import cv2

        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = img.astype(np.float32) / 255.0
    out[mask > 127] = -1.0  # the inpaint ControlNet reads -1 as "to be filled"
    return out


def _recolor(channel: str):
    def run(img, res, a, b, mask):
        import cv2

        if channel == "luminance":
            v = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[:, :, 0]
        else:
            v = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[:, :, 2]
        v = (v.astype(np.float32) / 255.0) ** float(a)
        return hwc3((v * 255.0).clip(0, 255).astype(np.uint8))

    return run


# ---------------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Preprocessor:
    """One preprocessor: A1111's internal name and UI alias, its sliders, and how to run it."""

    name: str
    run: Callable[..., np.ndarray] | None = None  # None: needs weights (see `annotators`)
    alias: str | None = None
    sliders: tuple[dict | None, ...] = ()  # A1111: [resolution, threshold_a, threshold_b] (None: not used)
    needs_mask: bool = False
    resizes: bool = True  # works at the processor resolution (False: keeps the input size)
    tags: tuple[str, ...] = field(default=())

    @property
    def builtin(self) -> bool:
        return self.run is not None or self.name == "none"

    def default(self, index: int) -> float:
        """A slider's default value (index 0 resolution, 1 threshold_a, 2 threshold_b)."""
        if index < len(self.sliders) and self.sliders[index] is not None:
            return float(self.sliders[index]["value"])
        return float(DEFAULT_RESOLUTION if index == 0 else 64)


def _slider(name: str, value: float, lo: float, hi: float, step: float | None = None) -> dict:
    out = {"name": name, "value": value, "min": lo, "max": hi}
    if step is not None:
        out["step"] = step
    return out


_BUILTIN: tuple[Preprocessor, ...] = (
    Preprocessor("none", resizes=False, tags=("All",)),
    Preprocessor("invert", _invert, "invert (from white bg & black line)", resizes=False,
                 tags=("Canny", "Lineart", "Scribble/Sketch", "MLSD")),
    Preprocessor("canny", _canny, sliders=(_RES_SLIDER, _slider("Canny Low Threshold", 100, 1, 255),
                                           _slider("Canny High Threshold", 200, 1, 255)), tags=("Canny",)),
    Preprocessor("threshold", _threshold, sliders=(_RES_SLIDER, _slider("Binarization Threshold", 127, 0, 255)),
                 tags=("Scribble/Sketch",)),
    Preprocessor("scribble_drawing", _scribble_drawing,
                 sliders=(_RES_SLIDER, _slider("Stroke Threshold", 127, 1, 255)), tags=("Scribble/Sketch",)),
    Preprocessor("scribble_xdog", _scribble_xdog, sliders=(_RES_SLIDER, _slider("XDoG Threshold", 32, 1, 64)),
                 tags=("Scribble/Sketch",)),
    Preprocessor("lineart_standard", _lineart_standard, "lineart_standard (from white bg & black line)",
                 sliders=(_RES_SLIDER,), tags=("Lineart",)),
    Preprocessor("softedge_dog", _softedge_dog, sliders=(_RES_SLIDER,), tags=("SoftEdge",)),
    Preprocessor("tile_resample", _tile_resample, resizes=False,
                 sliders=(None, _slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)), tags=("Tile/Blur",)),
    Preprocessor("blur_gaussian", _blur_gaussian, sliders=(_RES_SLIDER, _slider("Sigma", 9.0, 0.01, 64.0)),
                 tags=("Tile/Blur",)),
    Preprocessor("shuffle", _shuffle, sliders=(_RES_SLIDER, _slider("Seed", 0, 0, 2**31 - 1, 1)), tags=("Shuffle",)),
    Preprocessor("color", _color, "t2ia_color_grid", sliders=(_RES_SLIDER,), tags=("T2I-Adapter",)),
    Preprocessor("inpaint", _inpaint, "inpaint_global_harmonious", needs_mask=True, resizes=False, tags=("Inpaint",)),
    Preprocessor("inpaint_only", _inpaint, needs_mask=True, resizes=False, tags=("Inpaint",)),
    Preprocessor("recolor_luminance", _recolor("luminance"), resizes=False,
                 sliders=(None, _slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)), tags=("Recolor",)),
    Preprocessor("recolor_intensity", _recolor("intensity"), resizes=False,
                 sliders=(None, _slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)), tags=("Recolor",)),
)
#: A1111 UI aliases of the weights-needing preprocessors.
_ANNOTATOR_ALIASES = {"depth": "depth_midas", "normal_map": "normal_midas", "hed": "softedge_hed",
                      "hed_safe": "softedge_hedsafe", "pidinet": "softedge_pidinet", "pidinet_safe": "softedge_pidisafe",
                      "pidinet_sketch": "t2ia_sketch_pidi", "pidinet_scribble": "scribble_pidinet",
                      "segmentation": "seg_ufade20k", "oneformer_coco": "seg_ofcoco", "oneformer_ade20k": "seg_ofade20k",
                      "lineart": "lineart_realistic"}
_ANNOTATOR_TAGS = {"depth": "Depth", "normal": "NormalMap", "openpose": "OpenPose", "hed": "SoftEdge",
                   "pidinet": "SoftEdge", "lineart": "Lineart", "mlsd": "MLSD", "segmentation": "Segmentation",
                   "oneformer": "Segmentation"}

#: Annotators with more sliders than the resolution (A1111's values).
_ANNOTATOR_SLIDERS = {"normal_map": (_RES_SLIDER, _slider("Normal Background Threshold", 0.4, 0, 1, 0.01)),
                      "mlsd": (_RES_SLIDER, _slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
                               _slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01))}
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in _BUILTIN}
for _name in ANNOTATORS:
    _tag = next((t for k, t in _ANNOTATOR_TAGS.items() if k in _name), "All")
    PREPROCESSORS[_name] = Preprocessor(_name, None, _ANNOTATOR_ALIASES.get(_name),
                                        sliders=_ANNOTATOR_SLIDERS.get(_name, (_RES_SLIDER,)), tags=(_tag,))
_BY_ALIAS = {p.alias: p for p in PREPROCESSORS.values() if p.alias}


def preprocessor_names(alias_names: bool = False) -> list[str]:
    """Every preprocessor (A1111 internal names, or the UI aliases), built-in ones first."""
    return [(p.alias or p.name) if alias_names else p.name for p in PREPROCESSORS.values()]


def get_preprocessor(name: str | None) -> Preprocessor:
    """A preprocessor by internal name or UI alias (None / '' / 'None' mean none)."""
    key = "none" if name in (None, "", "None") else str(name).strip()
    found = PREPROCESSORS.get(key) or _BY_ALIAS.get(key) or PREPROCESSORS.get(key.lower())
    if found is None:
        raise PreprocessorError(f"unknown preprocessor {name!r}; built in: "
                                f"{', '.join(p.name for p in PREPROCESSORS.values() if p.builtin)}")
    return found


# ---------------------------------------------------------------------------------------------------------------
# running


def preprocess(name: str | None, image: np.ndarray, *, resolution: float = -1, threshold_a: float = -1,
               threshold_b: float = -1, mask: np.ndarray | None = None, annotator_dirs: Iterable[Path] = (),
               annotator_home: Path | str = Path("models") / "annotators", device: Any = None) -> np.ndarray:
    """Run a preprocessor on an (H, W, C) uint8 image → (H', W', 3) float32 map in [0, 1] (-1: pixels to inpaint).

    Negative resolution/thresholds take the preprocessor's A1111 defaults. `mask` (H, W) uint8, white = repaint,
    is needed by the inpaint preprocessors. Weights-needing preprocessors look in `annotator_dirs` and otherwise
    name the file to put under `annotator_home`; their networks run on `device` (None: the automatic choice).
    """
    pre = get_preprocessor(name)
    img = hwc3(np.ascontiguousarray(image))
    if pre.name == "none":
        return img.astype(np.float32) / 255.0
    res = int(resolution) if resolution is not None and resolution > 0 else int(pre.default(0))
    if res < 1 or res > 16384:
        raise PreprocessorError(f"processor resolution must be between 1 and 16384 (got {res})")
    a = float(threshold_a) if threshold_a is not None and threshold_a >= 0 else pre.default(1)
    b = float(threshold_b) if threshold_b is not None and threshold_b >= 0 else pre.default(2)
    if pre.run is None:
        out = run_annotator(pre.name, annotator_dirs, Path(annotator_home), img, res, a, b, device=device)
        return hwc3(out).astype(np.float32) / 255.0
    if pre.needs_mask and mask is None:
        raise PreprocessorError(f"preprocessor {pre.name!r} needs a mask (white = the part to repaint)")
    out = pre.run(img, res, a, b, None if mask is None else _mask_u8(mask))
    if out.dtype == np.uint8:
        return hwc3(out).astype(np.float32) / 255.0
    return out.astype(np.float32)


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, 0]
    if m.dtype != np.uint8:
        m = (np.clip(m.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return m


def pixel_perfect_resolution(image_hw: tuple[int, int], target_hw: tuple[int, int], mode: str) -> int:
    """A1111's "pixel perfect" processor resolution: the short side the map needs to fill the target once fitted."""
    (h, w), (th, tw) = image_hw, target_hw
    k0, k1 = th / h, tw / w
    k = min(k0, k1) if resize_mode(mode) == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(h, w)))


def _hq_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """A1111's control-map resize: nearest for few-colour maps (segmentation, poses), area down / cubic up
    otherwise; two-colour (binary) maps stay binary (Otsu threshold)."""
    import cv2

    if x.shape[0] == height and x.shape[1] == width:
        return x
    colors = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
    smaller = width * height < x.shape[0] * x.shape[1]
    binary = colors == 2 and int(x.min()) < 16 and int(x.max()) > 240
    if 2 < colors < 200:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if smaller else cv2.INTER_CUBIC
    y = cv2.resize(x, (width, height), interpolation=interp)
    if y.ndim == 2:
        y = y[:, :, None]
    if binary:
        g = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, g = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([g] * 3, axis=2)
    return y


def fit_to_size(hint: np.ndarray, width: int, height: int, mode: str = "Crop and Resize") -> np.ndarray:
    """A float map (H, W, 3) → (height, width, 3) with A1111's resize mode (-1 inpaint pixels are kept)."""
    mode = resize_mode(mode)
    masked = hint.min(axis=2) < 0  # (H, W) pixels to inpaint
    rgb = (np.clip(hint, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    m = masked.astype(np.uint8)[:, :, None] * 255
    h, w = rgb.shape[:2]
    # Inpaint maps: nearest keeps the known pixels exact next to the hole (no ringing into it or from it).
    resize = _resize_mask if masked.any() else _hq_resize
    if mode == "Just Resize":
        rgb, m = resize(rgb, width, height), _resize_mask(m, width, height)
    else:
        k = max(height / h, width / w) if mode == "Crop and Resize" else min(height / h, width / w)
        nw, nh = max(1, int(np.round(w * k))), max(1, int(np.round(h * k)))
        rgb, m = resize(rgb, nw, nh), _resize_mask(m, nw, nh)
        if mode == "Crop and Resize":
            y0, x0 = (nh - height) // 2, (nw - width) // 2
            rgb, m = rgb[y0 : y0 + height, x0 : x0 + width], m[y0 : y0 + height, x0 : x0 + width]
        else:
            border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
            canvas = np.zeros((height, width, 3), np.uint8) + np.median(border, axis=0).astype(np.uint8)
            mcanvas = np.zeros((height, width, 1), np.uint8)
            y0, x0 = (height - nh) // 2, (width - nw) // 2
            canvas[y0 : y0 + nh, x0 : x0 + nw] = rgb
            mcanvas[y0 : y0 + nh, x0 : x0 + nw] = m
            rgb, m = canvas, mcanvas
    out = rgb.astype(np.float32) / 255.0
    out[m[:, :, 0] > 127] = -1.0
    return out


def _resize_mask(m: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if m.shape[0] == height and m.shape[1] == width:
        return m
    out = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    return out if out.ndim == 3 else out[:, :, None]


def prepare_hint(images: Any, name: str | None = "none", *, resolution: float = -1, threshold_a: float = -1,
                 threshold_b: float = -1, masks: Any = None, width: int = 0, height: int = 0,
                 mode: str = "Crop and Resize", annotator_dirs: Iterable[Path] = (),
                 annotator_home: Path | str = Path("models") / "annotators", device: Any = None) -> Any:
    """IMAGE (B, H, W, 3) in [0, 1] → the control IMAGE: each picture preprocessed, then fitted to width × height
    (0: keep the map's size). `masks`: MASK (B|1, H, W), 1 = repaint, for the inpaint preprocessors."""
    import torch

    if images.ndim == 3:
        images = images[None]
    out = []
    for i in range(images.shape[0]):
        arr = (images[i, :, :, :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        mask = None
        if masks is not None:
            mk = masks if masks.ndim == 3 else masks[None]
            mask = (mk[i % mk.shape[0]].float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        hint = preprocess(name, arr, resolution=resolution, threshold_a=threshold_a, threshold_b=threshold_b,
                          mask=mask, annotator_dirs=annotator_dirs, annotator_home=annotator_home, device=device)
        if width > 0 and height > 0:
            hint = fit_to_size(hint, width, height, mode)
        out.append(torch.from_numpy(np.ascontiguousarray(hint)))
    if len({tuple(t.shape) for t in out}) > 1:
        raise PreprocessorError("the control images of a batch give maps of different sizes; give a width and "
                                "height to fit them to")
    return torch.stack(out)
