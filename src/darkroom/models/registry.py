"""The installed models: listing per folder kind, finding by name, describing for `darkroom models`.

Names are paths relative to their kind's folder with forward slashes and the extension, like ComfyUI
(`sdxl/juggernaut.safetensors`); `find` also accepts the name without extension, A1111 titles with a hash suffix
(`model.safetensors [abcdef1234]`), a unique file name without its sub-folder, or a path. Folders follow
`settings.model_dirs(kind)` (ComfyUI and A1111 folder names, main root then extra roots; the first root that
has a name wins).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ModelFileError, ModelNotFoundError
from .files import file_size, is_diffusers_folder, is_pickle
from .hashing import HashCache

#: File suffixes listed per kind (lower case).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "checkpoints": (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"),
    "loras": (".safetensors", ".pt", ".ckpt", ".bin"),
    "vae": (".safetensors", ".sft", ".pt", ".ckpt", ".bin", ".pth"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "controlnet": (".safetensors", ".pth", ".pt", ".ckpt", ".bin"),
    "upscale_models": (".pth", ".safetensors", ".pt"),
    "clip_vision": (".safetensors", ".bin", ".pt"),
    "ipadapter": (".safetensors", ".bin", ".pth"),
    "annotators": (".pth", ".pt", ".safetensors", ".onnx", ".bin", ".ckpt"),
}
_DEFAULT_EXT = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


def _builtin_files() -> list[Path]:
    """Every `.safetensors` file shipped in `darkroom/default_model/`."""
    try:
        root = Path(str(resources.files("darkroom") / "default_model"))
    except (ModuleNotFoundError, TypeError):
        return []
    return sorted(root.glob("*.safetensors")) if root.is_dir() else []


def _is_controlnet_file(path: Path) -> bool:
    """Whether a safetensors file holds an original-layout ControlNet (`control_model.*` keys; header only)."""
    from .files import read_safetensors_header

    try:
        header, _ = read_safetensors_header(path)
    except (ModelFileError, OSError):
        return False
    return any(k.startswith("control_model.") for k in header)


def default_builtin_checkpoints() -> list[Path]:
    """The project's own model(s) shipped in `darkroom/default_model/*.safetensors` (ControlNets excluded)."""
    return [p for p in _builtin_files() if not _is_controlnet_file(p)]


def default_builtin_controlnets() -> list[Path]:
    """The ControlNets shipped beside the built-in model (e.g. `darkroom-shapes-v3-canny.safetensors`)."""
    return [p for p in _builtin_files() if _is_controlnet_file(p)]


@dataclass
class ModelInfo:
    """One model as `darkroom models` shows it; the hash is computed only when asked for."""

    name: str
    path: Path
    kind: str  # label: "SDXL", "SD2.x (v-prediction)", "a LoRA", "unsupported: looks like Flux", …
    size: int
    folder_kind: str = "checkpoints"
    builtin: bool = False
    _hashes: HashCache | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str | None:
        """Full SHA-256 of the file (None for folders)."""
        if self.path.is_dir():
            return None
        return (self._hashes or HashCache()).sha256(self.path)

    @property
    def short_hash(self) -> str | None:
        """A1111's 10-digit model hash (None for folders)."""
        full = self.sha256
        return full[:10] if full else None


class ModelRegistry:
    """Lists and finds model files under the configured model folders."""

    def __init__(self, settings: Any, builtin_checkpoints: list[Path] | None = None,
                 hash_cache: HashCache | None = None, builtin_controlnets: list[Path] | None = None):
        self.settings = settings
        self.builtin_checkpoints = [Path(p) for p in (
            default_builtin_checkpoints() if builtin_checkpoints is None else builtin_checkpoints)]
        self.builtin_controlnets = [Path(p) for p in (
            default_builtin_controlnets() if builtin_controlnets is None else builtin_controlnets)]
        self.hashes = hash_cache or HashCache(Path(settings.resolved_cache_dir) / "hashes.json")

    # -- listing --------------------------------------------------------------------------------------------

    def _scan(self, kind: str) -> dict[str, Path]:
        exts = EXTENSIONS.get(kind, _DEFAULT_EXT)
        found: dict[str, Path] = {}
        for root in self.settings.model_dirs(kind):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                here = Path(dirpath)
                rel_dir = here.relative_to(root)
                keep = []
                for d in sorted(dirnames):
                    if d.startswith("."):
                        continue
                    sub = here / d
                    if is_diffusers_folder(sub):
                        if kind == "checkpoints":
                            found.setdefault((rel_dir / d).as_posix(), sub)
                        continue
                    keep.append(d)
                dirnames[:] = keep
                for fname in filenames:
                    if fname.startswith(".") or not fname.lower().endswith(exts):
                        continue
                    found.setdefault((rel_dir / fname).as_posix(), here / fname)
        return found

    def entries(self, kind: str) -> dict[str, Path]:
        """{name: path} of the models of a kind, sorted by name (built-ins only when nothing else is installed)."""
        if kind not in EXTENSIONS:
            raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(EXTENSIONS)}")
        found = self._scan(kind)
        if kind in ("checkpoints", "controlnet") and not found:
            found = {p.name: p for p in self._builtins(kind) if p.exists()}
        return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))

    def list(self, kind: str) -> list[str]:
        """Names of the models of a kind."""
        return list(self.entries(kind))

    def checkpoints(self) -> list[str]:
        """Checkpoint names (single files and diffusers folders)."""
        return self.list("checkpoints")

    # -- finding --------------------------------------------------------------------------------------------

    def find(self, kind: str, name: str | Path) -> Path:
        """The path of a model given its name (with or without extension), an A1111 title, or a path."""
        entries = self.entries(kind)
        for p in self._builtins(kind):
            entries.setdefault(p.name, p)
        raw = str(name).strip()
        p = Path(raw).expanduser()
        text = _TITLE_HASH.sub("", raw).replace("\\", "/")
        if text in entries:
            return entries[text]
        stemmed = {self._stem(n): n for n in entries}
        if text in stemmed:
            return entries[stemmed[text]]
        base = [n for n in entries if n.rsplit("/", 1)[-1] in (text, text.rsplit("/", 1)[-1])]
        base = base or [n for n in entries if self._stem(n.rsplit("/", 1)[-1]) == text]
        if len(base) == 1:
            return entries[base[0]]
        if p.exists():
            return p
        listed = ", ".join(entries) if entries else "(none installed)"
        folders = ", ".join(str(d) for d in self.settings.model_dirs(kind)) or "no folder exists yet"
        raise ModelNotFoundError(
            f"no {kind} model named {raw!r}" + (f" (several match: {', '.join(base)})" if len(base) > 1 else "")
            + f". Available: {listed}. Searched: {folders}"
        )

    def _builtins(self, kind: str) -> list[Path]:
        """The shipped models of a kind (the built-in checkpoint and its ControlNets)."""
        return {"checkpoints": self.builtin_checkpoints, "controlnet": self.builtin_controlnets}.get(kind, [])

    @staticmethod
    def _stem(name: str) -> str:
        for ext in _DEFAULT_EXT + (".onnx",):
            if name.lower().endswith(ext):
                return name[: -len(ext)]
        return name

    def name_of(self, kind: str, path: Path | str) -> str | None:
        """The registry name of a path, if it is one of the listed models."""
        target = Path(path).resolve()
        for n, p in self.entries(kind).items():
            if p.resolve() == target:
                return n
        return None

    # -- describing -----------------------------------------------------------------------------------------

    def describe(self, path: Path | str, kind: str = "checkpoints", *, allow_unsafe_pickle: bool = False) -> ModelInfo:
        """Name, kind label, size and (lazy) hash of a model file or folder."""
        from .detect import detect_file, identify, read_header, read_metadata
        from .family import UnsupportedModelError

        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"model file not found: {path}")
        builtin = any(path.resolve() == b.resolve() for b in self._builtins(kind) if b.exists())
        name = self.name_of(kind, path) or path.name
        if is_pickle(path) and not allow_unsafe_pickle:
            label = "pickle file (not inspected)"
        else:
            try:
                if kind == "checkpoints":
                    try:
                        label = detect_file(path, allow_unsafe_pickle=allow_unsafe_pickle).label
                    except UnsupportedModelError as e:
                        label = "unsupported: looks like " + getattr(e, "looks_like", "an unknown model")
                else:
                    label = identify(read_header(path, allow_unsafe_pickle=allow_unsafe_pickle), read_metadata(path))
            except ModelFileError as e:
                label = f"unreadable ({e})"
        return ModelInfo(name=name, path=path, kind=label, size=file_size(path), folder_kind=kind, builtin=builtin,
                         _hashes=self.hashes)

    def describe_all(self, kind: str = "checkpoints") -> list[ModelInfo]:
        """`describe` for every listed model of a kind."""
        return [self.describe(p, kind) for p in self.entries(kind).values()]
