"""Textual-inversion embeddings: file loading (A1111 .pt/.safetensors, SDXL, diffusers) and a lazily scanned library.

Formats read (as A1111 `textual_inversion.py` and ComfyUI `load_embed` accept them):
- A1111 `.pt`/`.bin`: `{"string_to_param": {"*": (N, D)}, "name": …, "step": …}`;
- A1111 `.safetensors`: one key `emb_params` (N, D);
- SDXL: `{"clip_l": (N, 768), "clip_g": (N, 1280)}`;
- diffusers `learned_embeds.bin`/`.safetensors`: one `{token: (D,) | (N, D)}` entry.

Pickle files (`.pt`, `.bin`) are opened with `torch.load(weights_only=True)`, PyTorch's restricted unpickler that only
rebuilds tensors and plain containers, so an embedding file cannot run code; files that need more than that are
reported as unloadable (ComfyUI does the same). The trigger word is the file name without its extension.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = ["Embedding", "EmbeddingError", "EmbeddingLibrary", "load_embedding", "ti_hashes_infotext"]

EXTENSIONS = (".safetensors", ".pt", ".bin")
#: Folder changes are looked for at most this often (each prompt asks the library many times).
_RESCAN_INTERVAL_S = 1.0
#: Key of a single-tensor embedding (fits any one encoder of matching width).
SINGLE = "*"


class EmbeddingError(ValueError):
    """An embedding file that cannot be read or interpreted (the message names the file)."""


@dataclass
class Embedding:
    """One textual-inversion embedding: vectors per text-encoder key (`*` for a single-encoder embedding)."""

    name: str
    vectors: dict[str, torch.Tensor]  # key → (N, D) float32 on CPU
    path: Path | None = None
    _hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        counts = {v.shape[0] for v in self.vectors.values()}
        if not self.vectors or len(counts) != 1 or any(v.ndim != 2 for v in self.vectors.values()):
            raise EmbeddingError(f"embedding {self.name!r}: expected (N, D) vectors with the same N for every encoder")

    @property
    def num_vectors(self) -> int:
        """How many token slots the embedding occupies."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def shorthash(self) -> str:
        """A1111's short hash: the first 12 hex digits of the file's sha256 ('' for in-memory embeddings)."""
        if self._hash is None:
            if self.path is None:
                self._hash = ""
            else:
                h = hashlib.sha256()
                with open(self.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self._hash = h.hexdigest()[:12]
        return self._hash

    def for_encoder(self, key: str, dim: int) -> torch.Tensor | None:
        """ComfyUI rule: the vectors stored under `key`, else the single tensor; None if absent or not `dim` wide."""
        v = self.vectors.get(key, self.vectors.get(SINGLE))
        if v is None and len(self.vectors) == 1:
            v = next(iter(self.vectors.values()))
        if v is None or v.shape[1] != dim:
            return None
        return v

    def for_model(self, encoders: Sequence[tuple[str, int]]) -> list[torch.Tensor] | None:
        """A1111 rule: fits only if its total width equals the model's (SD1 768, SD2 1024, SDXL 768+1280, refiner 1280).

        A single tensor fits a one-encoder model; a keyed (SDXL) embedding needs exactly the model's encoder keys."""
        if len(self.vectors) == 1 and len(encoders) == 1:
            v = next(iter(self.vectors.values()))
            return [v] if v.shape[1] == encoders[0][1] else None
        if set(self.vectors) != {k for k, _ in encoders}:
            return None
        out = [self.vectors[k] for k, _ in encoders]
        return out if all(v.shape[1] == d for v, (_, d) in zip(out, encoders)) else None


def _as_2d(t: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise EmbeddingError(f"{what}: expected a tensor, found {type(t).__name__}")
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise EmbeddingError(f"{what}: expected (N, D) vectors, found shape {tuple(t.shape)}")
    return t


def embedding_from_data(data: object, name: str, path: Path | None = None) -> Embedding:
    """Interpret a loaded embedding dict (any of the formats in the module docstring)."""
    what = str(path or name)
    if not isinstance(data, dict):
        raise EmbeddingError(f"{what}: not an embedding (top level is {type(data).__name__}, expected a dict)")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"{what}: 'string_to_param' must hold exactly one term")
        return Embedding(name, {SINGLE: _as_2d(next(iter(params.values())), what)}, path)
    if "clip_g" in data and "clip_l" in data:
        return Embedding(name, {"clip_l": _as_2d(data["clip_l"], what), "clip_g": _as_2d(data["clip_g"], what)}, path)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1 and len(data) == 1:
        return Embedding(name, {SINGLE: _as_2d(next(iter(tensors.values())), what)}, path)
    raise EmbeddingError(f"{what}: unrecognised embedding layout (keys: {', '.join(map(str, list(data)[:6]))})")


def load_embedding(path: Path | str, name: str | None = None) -> Embedding:
    """Load one embedding file; the trigger word defaults to the file stem."""
    path = Path(path)
    name = name or path.stem
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        elif suffix in (".pt", ".bin"):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise EmbeddingError(f"{path}: not an embedding file (expected {', '.join(EXTENSIONS)})")
    except EmbeddingError:
        raise
    except Exception as e:  # noqa: BLE001 — any reader failure becomes one clear error
        raise EmbeddingError(f"{path}: cannot be loaded safely as an embedding ({type(e).__name__}: {e})") from e
    return embedding_from_data(data, name, path)


def ti_hashes_infotext(used: dict[str, str]) -> str:
    """A1111's `TI hashes` value: 'name: hash, …' (names without ':' or ','; embeddings without a hash left out)."""
    return ", ".join(f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in used.items() if h)


class EmbeddingLibrary:
    """The embeddings under some folders (recursively), scanned lazily and rescanned when a folder changes.

    Files are listed on first use; tensors are read when an embedding is first asked for. Names are file stems; when
    two files share a stem, the first folder (then sorted path order) wins. Unreadable files are logged and skipped.
    """

    def __init__(self, dirs: Iterable[Path | str] = (), embeddings: Iterable[Embedding] = (), *,
                 rescan_interval: float = _RESCAN_INTERVAL_S):
        self.dirs = [Path(d) for d in dirs]
        self.rescan_interval = rescan_interval
        self._extra = {e.name: e for e in embeddings}
        self._files: dict[str, Path] | None = None  # stem → path
        self._rel: dict[str, Path] = {}  # "sub/stem" and "sub/stem.ext" → path (ComfyUI `embedding:sub/name`)
        self._stamp: tuple = ()
        self._loaded: dict[Path, tuple[float, Embedding | None]] = {}
        self._lookups: dict[int, tuple[int, object, dict]] = {}
        self._version = 0
        self._checked = 0.0

    # -- scanning -------------------------------------------------------------------------------------------------
    def _dir_stamp(self) -> tuple:
        stamp = []
        for d in self.dirs:
            for root, subdirs, _ in os.walk(d, followlinks=True):
                subdirs.sort()
                try:
                    stamp.append((root, os.stat(root).st_mtime_ns))
                except OSError:
                    pass
        return tuple(stamp)

    def refresh(self, force: bool = False) -> None:
        """Rescan the folders if any of them changed (or always with `force`)."""
        stamp = self._dir_stamp()
        if self._files is not None and stamp == self._stamp and not force:
            return
        files: dict[str, Path] = {}
        rel: dict[str, Path] = {}
        for d in self.dirs:
            for root, subdirs, names in os.walk(d, followlinks=True):
                subdirs.sort()
                for fn in sorted(names):
                    p = Path(root) / fn
                    if p.suffix.lower() not in EXTENSIONS:
                        continue
                    try:
                        if p.stat().st_size == 0:
                            continue
                    except OSError:
                        continue
                    files.setdefault(p.stem, p)
                    r = p.relative_to(d).as_posix()
                    rel.setdefault(r, p)
                    rel.setdefault(r[: -len(p.suffix)], p)
        self._files, self._rel, self._stamp = files, rel, stamp
        self._version += 1

    def _index(self) -> dict[str, Path]:
        now = time.monotonic()
        if self._files is None or now - self._checked >= self.rescan_interval:
            self.refresh()
            self._checked = now
        assert self._files is not None
        return self._files

    def names(self) -> list[str]:
        """Every trigger word available (file stems and in-memory embeddings), sorted case-insensitively."""
        return sorted({*self._index(), *self._extra}, key=str.lower)

    def add(self, embedding: Embedding) -> None:
        """Register an in-memory embedding (wins over a file of the same name)."""
        self._extra[embedding.name] = embedding
        self._version += 1

    # -- loading --------------------------------------------------------------------------------------------------
    def _load(self, path: Path) -> Embedding | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            emb: Embedding | None = load_embedding(path)
        except EmbeddingError as e:
            log.warning("skipping embedding: %s", e)
            emb = None
        self._loaded[path] = (mtime, emb)
        return emb

    def get(self, name: str) -> Embedding | None:
        """The embedding whose trigger word is `name` (exact file stem), or None."""
        if name in self._extra:
            return self._extra[name]
        path = self._index().get(name)
        return self._load(path) if path is not None else None

    def resolve(self, ref: str) -> Embedding | None:
        """ComfyUI `embedding:<ref>` lookup: a stem, or a path relative to an embeddings folder, with or without
        extension."""
        if ref in self._extra:
            return self._extra[ref]
        self._index()
        ref = ref.replace("\\", "/")
        path = self._rel.get(ref)
        if path is None and "/" not in ref:
            path = self._files.get(ref) if self._files else None  # ComfyUI also searches every subfolder
        return self._load(path) if path is not None else None

    def __contains__(self, name: str) -> bool:
        return name in self._extra or name in self._index()

    def __len__(self) -> int:
        return len(self.names())

    # -- A1111 token-sequence matching ---------------------------------------------------------------------------
    def token_lookup(self, tokenizer) -> dict[int, list[tuple[list[int], str]]]:
        """first token id → [(token ids of the trigger word, name)], longest first (A1111 `ids_lookup`)."""
        self._index()
        key = id(tokenizer)
        cached = self._lookups.get(key)
        if cached is not None and cached[0] == self._version and cached[1] is tokenizer:
            return cached[2]
        names = self.names()
        ids_list = []
        if names:
            ids_list = tokenizer(names, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        table: dict[int, list[tuple[list[int], str]]] = {}
        for name, ids in zip(names, ids_list):
            if ids:
                table.setdefault(ids[0], []).append((list(ids), name))
        for v in table.values():
            v.sort(key=lambda x: len(x[0]), reverse=True)
        self._lookups[key] = (self._version, tokenizer, table)
        return table
