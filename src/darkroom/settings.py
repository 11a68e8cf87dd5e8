"""One settings object for the whole process: CLI flags > environment (DARKROOM_*) > config file > defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The field's model-folder layout (ComfyUI's names); each kind also accepts A1111's folder names.
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "loras": ("loras", "Lora", "LyCORIS"),
    "vae": ("vae", "VAE"),
    "embeddings": ("embeddings",),
    "controlnet": ("controlnet", "ControlNet"),
    "upscale_models": ("upscale_models", "ESRGAN", "RealESRGAN", "SwinIR"),
    "clip_vision": ("clip_vision",),
    "ipadapter": ("ipadapter",),
    "annotators": ("annotators",),
}

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "fp32", "fp16", "bf16"]


class Settings(BaseSettings):
    """Everything a run needs to know about where things live and what hardware to use."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", extra="ignore")

    models_dir: Path = Field(default=Path("models"), description="root holding checkpoints/, loras/, vae/ …")
    output_dir: Path | None = Field(default=None, description="where generated images are written "
                                    "(default <data_dir>/output, shared by the CLI and the server)")
    data_dir: Path = Field(default=Path("data"), description="server state: queue, history, inputs, outputs")
    extra_model_paths: list[Path] = Field(
        default_factory=list,
        description="other model roots, e.g. an A1111 install's models/ or a ComfyUI install's models/",
    )
    device: Device = "auto"
    dtype: DType = "auto"
    allow_unsafe_pickle: bool = Field(
        default=False, description="load .ckpt/.pt/.bin files (torch.load with weights_only=True)"
    )
    cache_dir: Path | None = Field(default=None, description="hash cache and derived files; default <data_dir>/cache")

    @field_validator("extra_model_paths", mode="before")
    @classmethod
    def _split_paths(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.split(os.pathsep) if p]
        return v

    @property
    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else self.data_dir / "output"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "cache"

    def model_roots(self) -> list[Path]:
        """The main models root first, then the extra search roots."""
        return [self.models_dir, *self.extra_model_paths]

    def model_dirs(self, kind: str) -> list[Path]:
        """Every existing folder that may hold models of `kind` (e.g. 'checkpoints'), in search order."""
        names = MODEL_FOLDERS[kind]
        found: list[Path] = []
        for root in self.model_roots():
            for name in names:
                p = root / name
                if p.is_dir() and p not in found:
                    found.append(p)
        return found


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: explicit overrides (CLI flags) win over DARKROOM_* variables, which win over the file.

    The config file is JSON with the same field names (`DARKROOM_CONFIG` names it when no path is given).
    """
    file_values: dict[str, Any] = {}
    path = config_file or (Path(os.environ["DARKROOM_CONFIG"]) if os.environ.get("DARKROOM_CONFIG") else None)
    if path is not None:
        try:
            file_values = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ValueError(f"config file not found: {path}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from e
        if not isinstance(file_values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
    env_set = {name for name in Settings.model_fields if f"DARKROOM_{name.upper()}" in os.environ}
    values = {k: v for k, v in file_values.items() if k not in env_set}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
