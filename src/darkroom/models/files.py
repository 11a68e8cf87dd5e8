"""Reading weight files: safetensors headers without the weights, lazy safetensors state dicts, guarded pickles."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError, UnsafeModelFileError

#: Suffixes of files that torch.load unpickles (can execute code hidden in the file).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
_MAX_HEADER = 100 * 1024 * 1024


def is_pickle(path: Path) -> bool:
    """Whether the file is one torch.load would unpickle."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def unsafe_pickle_error(path: Path) -> UnsafeModelFileError:
    """The refusal for a pickle file: why it is refused and how to convert it once."""
    path = Path(path)
    target = path.with_suffix(".safetensors").name
    return UnsafeModelFileError(
        f"refusing to load {path}: '{path.suffix}' files are Python pickles, and unpickling can run arbitrary code "
        f"hidden in the file. Download the .safetensors version of this model if there is one, or (only if you trust "
        f"the source) convert it once:\n"
        f"  python -c \"import torch, safetensors.torch as st; sd = torch.load('{path.name}', map_location='cpu', "
        f"weights_only=True); sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in sd.items() "
        f"if isinstance(v, torch.Tensor)}}, '{target}')\"\n"
        f"or allow pickles with --allow-unsafe-pickle (setting allow_unsafe_pickle; loads with weights_only=True)."
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a model file: {path}")


def read_safetensors_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse a safetensors header: ({key: {dtype, shape, data_offsets}}, metadata); checks the file is complete."""
    path = Path(path)
    _check_exists(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path} is not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                raise ModelFileError(f"{path} is not a valid safetensors file (corrupt or truncated header)")
            raw = f.read(n)
    except OSError as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path} is not a valid safetensors file (corrupt header: {e})") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for key, info in header.items():
        try:
            start, stop = info["data_offsets"]
            info["shape"] = [int(d) for d in info["shape"]]
            _ = info["dtype"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path} is not a valid safetensors file (bad entry for {key!r})") from e
        end = max(end, int(stop))
    if 8 + n + end > size:
        raise ModelFileError(
            f"{path} is truncated: the header describes {8 + n + end} bytes but the file has {size} "
            f"(an interrupted download?)"
        )
    return header, {str(k): str(v) for k, v in metadata.items()}


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file."""
    return read_safetensors_header(path)[1]


def load_pickle_state_dict(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """torch.load a pickle checkpoint with weights_only=True (mmap when possible); unwrap `state_dict`."""
    path = Path(path)
    _check_exists(path)
    if not allow_unsafe_pickle:
        raise unsafe_pickle_error(path)
    obj = torch_load_weights(path)
    while isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def torch_load_weights(path: Path) -> Any:
    """What a pickle file holds, read with torch.load(weights_only=True) onto the CPU (memory-mapped when the file's
    format allows); ModelFileError when torch cannot read it that way. The caller has checked the pickle opt-in."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — anything torch.load raises means the file cannot be used
        raise ModelFileError(
            f"cannot load {path} with torch.load(weights_only=True): {e}. If it holds pickled Python objects beyond "
            f"tensors (e.g. a PyTorch Lightning training checkpoint), convert it to .safetensors with a trusted tool."
        ) from e
    return obj


def cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast floating tensors to dtype (integer buffers stay as they are)."""
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only state dict over one or more safetensors files; a tensor is read (and cast) when accessed.

    Each tensor is read straight from the file into its own freshly allocated (so 64-byte aligned) storage: one
    copy, no memory map kept, and unused keys (EMA copies, schedule buffers) are never read.
    """

    def __init__(self, paths: list[Path] | Path, dtype: torch.dtype | None = None, prefix: str = "",
                 align: bool = True):
        self.paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
        self.dtype = dtype
        self.align = align  # kept for API compatibility: reads are always aligned
        self._where: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.metadata: dict[str, str] = {}
        for p in self.paths:
            header, meta = read_safetensors_header(p)
            with open(p, "rb") as f:
                base = 8 + struct.unpack("<Q", f.read(8))[0]
            self.metadata.update(meta)
            for k, info in header.items():
                if info["dtype"] not in _DTYPES or _DTYPES[info["dtype"]] is None:
                    raise ModelFileError(f"{p}: tensor {k!r} has an unsupported dtype {info['dtype']}")
                self._where[prefix + k] = (p, base, info)
                self.shapes[prefix + k] = tuple(info["shape"])

    def raw(self, key: str) -> torch.Tensor:
        """The tensor as stored (no cast)."""
        path, base, info = self._where[key]
        start, stop = info["data_offsets"]
        t = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
        nbytes = t.numel() * t.element_size()
        if nbytes != stop - start:
            raise ModelFileError(f"{path}: tensor {key!r} has {stop - start} bytes for shape {info['shape']}")
        if nbytes:
            buf = t.reshape(-1).view(torch.uint8).numpy()
            try:
                with open(path, "rb") as f:
                    f.seek(base + start)
                    got = f.readinto(memoryview(buf))
            except OSError as e:
                raise ModelFileError(f"cannot read tensor {key!r} from {path}: {e}") from e
            if got != nbytes:
                raise ModelFileError(f"{path} is truncated (tensor {key!r})")
        return t  # safetensors is little-endian, like every host torch runs on

    def __getitem__(self, key: str) -> torch.Tensor:
        return cast(self.raw(key), self.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where


class CastingStateDict(Mapping[str, torch.Tensor]):
    """A view of an in-memory state dict that casts floating tensors to dtype when accessed."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None):
        self._sd = state_dict
        self.dtype = dtype
        self.shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        self.metadata: dict[str, str] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return cast(self._sd[key], self.dtype)

    def raw(self, key: str) -> torch.Tensor:
        """The tensor as stored (no cast)."""
        return self._sd[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sd)

    def __len__(self) -> int:
        return len(self._sd)

    def __contains__(self, key: object) -> bool:
        return key in self._sd


def open_state_dict(
    path: Path, *, dtype: torch.dtype | None = None, allow_unsafe_pickle: bool = False, align: bool = True
) -> LazyStateDict | CastingStateDict:
    """A state dict for a weight file: lazy for safetensors, loaded (weights_only) for permitted pickles."""
    path = Path(path)
    if is_pickle(path):
        return CastingStateDict(load_pickle_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle), dtype)
    _check_exists(path)
    return LazyStateDict(path, dtype, align=align)


def file_size(path: Path) -> int:
    """Size in bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return os.path.getsize(path)


# ---------------------------------------------------------------------------------------------------------------
# diffusers folders (model_index.json + one sub-folder per component)

#: Weight file names in a diffusers component folder, preferred first (non-variant before fp16 variant).
_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
)
_PICKLE_WEIGHT_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.fp16.bin",
                        "pytorch_model.fp16.bin")


def is_diffusers_folder(path: Path) -> bool:
    """A diffusers pipeline folder (has model_index.json)."""
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def component_weight_files(folder: Path) -> list[Path]:
    """The weight file(s) of one diffusers component folder (sharded checkpoints give several); [] if none."""
    folder = Path(folder)
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise ModelFileError(f"corrupt shard index {index}: {e}") from e
        return [folder / name for name in sorted(set(weight_map.values()))]
    for name in _PICKLE_WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    return []


def open_component(
    folder: Path, *, dtype: torch.dtype | None = None, allow_unsafe_pickle: bool = False, prefix: str = "",
    align: bool = True,
) -> LazyStateDict | CastingStateDict:
    """The state dict of one diffusers component folder (keys optionally prefixed, e.g. 'unet.')."""
    files = component_weight_files(folder)
    if not files:
        raise ModelFileError(f"no weights found in {folder}")
    if is_pickle(files[0]):
        sd = load_pickle_state_dict(files[0], allow_unsafe_pickle=allow_unsafe_pickle)
        return CastingStateDict({prefix + k: v for k, v in sd.items()}, dtype)
    return LazyStateDict(files, dtype, prefix=prefix, align=align)
