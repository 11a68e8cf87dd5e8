"""A1111 settings (`/sdapi/v1/options`), prompt styles (`styles.csv`) and model titles for the A1111 API.

Options are kept in `<data_dir>/sdapi-options.json`. `sd_model_checkpoint` picks the checkpoint later requests
use (it must name an installed model); path-like options are read-only through the API, as in A1111
(`restrict_api`). Unknown keys are ignored, as A1111 does.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

from .files import write_atomic

#: Settings A1111 clients commonly read, with A1111's defaults (darkroom's noise is made on the CPU).
OPTION_DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": None,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "samples_save": True,
    "grid_format": "png",
    "grid_save": True,
    "return_grid": True,
    "grid_only_if_multiple": True,
    "n_rows": -1,
    "enable_pnginfo": True,
    "save_images_add_number": True,
    "outdir_samples": "",
    "outdir_txt2img_samples": "txt2img-images",
    "outdir_img2img_samples": "img2img-images",
    "outdir_extras_samples": "extras-images",
    "eta_noise_seed_delta": 0,
    "randn_source": "CPU",
    "live_previews_enable": True,
    "live_preview_content": "Prompt",
    "show_progress_every_n_steps": 1,
    "sd_checkpoints_limit": 2,
    "img2img_fix_steps": False,
    "emphasis": "Original",
    "sd_vae_overrides_per_model_preferences": True,
}
#: Options the API may not change (paths; A1111's restrict_api) or that darkroom computes.
READ_ONLY = frozenset({"outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                       "sd_checkpoint_hash", "randn_source"})
_TYPES: dict[str, type | tuple[type, ...]] = {
    "CLIP_stop_at_last_layers": int, "return_grid": bool, "grid_save": bool, "samples_save": bool,
    "n_rows": int, "eta_noise_seed_delta": int, "show_progress_every_n_steps": int, "sd_vae": str,
    "sd_model_checkpoint": str, "samples_format": str, "live_previews_enable": bool,
}


class OptionError(ValueError):
    """An option value that cannot be set (unknown model, wrong type); the message names the option."""


def cached_sha256(models: Any, path: Path) -> str | None:
    """The file's SHA-256 if the hash cache already knows it (never hashes a large file on a listing)."""
    hashes = getattr(models, "hashes", None)
    if hashes is None or not path.is_file():
        return None
    return hashes.peek(path, "sha256")


def resolve_model(models: Any, kind: str, value: Any, field_name: str) -> str:
    """The registry name (e.g. `sd15/model.safetensors`) for a name, stem or A1111 title; None: the first one."""
    from .sdapi import SdapiError

    if value in (None, ""):
        names = models.list(kind)
        if not names:
            raise SdapiError(400, f"no {kind} model is installed", field_name)
        return names[0]
    try:
        path = models.find(kind, str(value))
    except Exception as ex:
        raise SdapiError(400, f"{field_name}: {ex}", field_name) from None
    name = models.name_of(kind, path)
    if name is None:
        raise SdapiError(400, f"{field_name}: {value!r} is not one of the installed {kind} models", field_name)
    return name


def checkpoint_title(models: Any, name: str) -> str:
    """A1111's title: `name [short hash]` when the hash is known, else the name."""
    try:
        sha = cached_sha256(models, models.find("checkpoints", name))
    except Exception:
        sha = None
    return f"{name} [{sha[:10]}]" if sha else name


class OptionsStore:
    """The A1111 settings of this server, persisted as JSON."""

    def __init__(self, path: Path, models: Any) -> None:
        self.path = Path(path)
        self.models = models
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._values = data
            except (OSError, json.JSONDecodeError):
                self._values = {}

    def current(self) -> dict[str, Any]:
        """Stored values over the defaults (raw; sd_model_checkpoint may be None)."""
        with self._lock:
            return {**OPTION_DEFAULTS, **self._values}

    def public(self) -> dict[str, Any]:
        """GET /options: with the checkpoint in use as its A1111 title, and its hash when known."""
        values = self.current()
        try:
            from .sdapi import SdapiError

            name = resolve_model(self.models, "checkpoints", values.get("sd_model_checkpoint"), "sd_model_checkpoint")
        except SdapiError:
            name = None
        if name is not None:
            values["sd_model_checkpoint"] = checkpoint_title(self.models, name)
            sha = None
            try:
                sha = cached_sha256(self.models, self.models.find("checkpoints", name))
            except Exception:
                pass
            values["sd_checkpoint_hash"] = sha
        return values

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Set options (checked); returns the keys ignored (unknown or read-only)."""
        from .sdapi import SdapiError

        accepted: dict[str, Any] = {}
        ignored: list[str] = []
        for key, value in changes.items():
            if key not in OPTION_DEFAULTS or key in READ_ONLY:
                ignored.append(key)
                continue
            want = _TYPES.get(key)
            if want is not None and value is not None and not (
                    isinstance(value, want) and not (want is int and isinstance(value, bool))):
                raise OptionError(f"option {key} must be of type {getattr(want, '__name__', want)} "
                                  f"(got {type(value).__name__})")
            if key == "sd_model_checkpoint":
                try:
                    value = resolve_model(self.models, "checkpoints", value, key)
                except SdapiError as ex:
                    raise OptionError(ex.message) from None
            elif key == "sd_vae" and value not in (None, "Automatic", "None"):
                try:
                    value = resolve_model(self.models, "vae", value, key)
                except SdapiError as ex:
                    raise OptionError(ex.message) from None
            elif key == "CLIP_stop_at_last_layers" and not 1 <= int(value) <= 12:
                raise OptionError(f"option CLIP_stop_at_last_layers must be between 1 and 12 (got {value})")
            accepted[key] = value
        with self._lock:
            self._values.update(accepted)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self._values, indent=1).encode("utf-8"), replace=True)
        return ignored


class StyleBook:
    """Prompt styles from an A1111 `styles.csv` (name, prompt, negative_prompt)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def all(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
        return [{"name": r.get("name") or "", "prompt": r.get("prompt") or "",
                 "negative_prompt": r.get("negative_prompt") or ""} for r in rows if r.get("name")]

    @staticmethod
    def _merge(style: str, text: str) -> str:
        if "{prompt}" in style:
            return style.replace("{prompt}", text)
        if not style:
            return text
        return f"{text}, {style}" if text else style

    def apply(self, prompt: str, negative: str, names: list[str]) -> tuple[str, str]:
        """Apply styles in order (A1111: `{prompt}` is replaced, else the style is appended with ', ')."""
        if not names:
            return prompt, negative
        styles = {s["name"]: s for s in self.all()}
        for name in names:
            style = styles.get(name)
            if style is None:
                known = ", ".join(styles) or "none (add them to styles.csv in the data folder)"
                raise KeyError(f"unknown style {name!r}; available: {known}")
            prompt = self._merge(style["prompt"], prompt)
            negative = self._merge(style["negative_prompt"], negative)
        return prompt, negative

