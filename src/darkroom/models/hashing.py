"""A1111-compatible model hashes, cached on disk so a multi-GB file is hashed once.

- Model hash: SHA-256 of the whole file; infotext `Model hash:` shows the first 10 hex digits.
- LoRA "addnet" hash: SHA-256 of a safetensors file's payload after its header (unchanged by metadata edits);
  infotext `Lora hashes:` shows the first 12 hex digits.

The cache is a JSON file keyed by absolute path, valid while the file's size and mtime are unchanged; it is
rewritten atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

from .errors import ModelFileError

_BLOCK = 1024 * 1024
MODEL_HASH_LEN = 10
ADDNET_HASH_LEN = 12


def _hash_file(path: Path, offset: int = 0) -> str:
    """SHA-256 hex digest of a file's bytes from offset to the end."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for chunk in iter(lambda: f.read(_BLOCK), b""):
                h.update(chunk)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    return h.hexdigest()


def _payload_offset(path: Path) -> int:
    """Where a safetensors file's tensor data starts (8-byte length + JSON header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    if len(head) < 8:
        raise ModelFileError(f"{path} is not a safetensors file")
    return 8 + struct.unpack("<Q", head)[0]


def sha256_file(path: Path | str) -> str:
    """Full SHA-256 of a file (A1111's model hash before shortening)."""
    return _hash_file(Path(path))


def addnet_hash_file(path: Path | str) -> str:
    """The LoRA 'addnet' hash: SHA-256 of the safetensors payload after the header (full hex)."""
    path = Path(path)
    return _hash_file(path, _payload_offset(path))


def short_hash(full: str) -> str:
    """A1111's short model hash (first 10 hex digits)."""
    return full[:MODEL_HASH_LEN]


class HashCache:
    """SHA-256 / addnet hashes per file, persisted in a JSON file (None: in memory only)."""

    def __init__(self, cache_file: Path | str | None = None):
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.cache_file is not None and self.cache_file.is_file():
                try:
                    data = json.loads(self.cache_file.read_text(encoding="utf-8"))
                    if isinstance(data, dict):
                        self._entries = {k: v for k, v in data.items() if isinstance(v, dict)}
                except (OSError, json.JSONDecodeError):
                    self._entries = {}  # a damaged cache is only a cache: start again
        return self._entries

    def _save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        try:  # merge what other processes wrote meanwhile
            on_disk = json.loads(self.cache_file.read_text(encoding="utf-8"))
            if isinstance(on_disk, dict):
                self._entries = {**{k: v for k, v in on_disk.items() if isinstance(v, dict)}, **self._entries}
        except (OSError, json.JSONDecodeError):
            pass
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json", dir=self.cache_file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._entries, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get(self, path: Path | str, field: str, compute) -> str:
        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise ModelFileError(f"model file not found: {path}") from e
        key = str(p)
        with self._lock:
            entries = self._load()
            entry = entries.get(key)
            if entry is None or entry.get("size") != st.st_size or entry.get("mtime") != st.st_mtime_ns:
                entry = {"size": st.st_size, "mtime": st.st_mtime_ns}
            if field in entry:
                return entry[field]
        value = compute(p)  # outside the lock: hashing a large file takes a while
        with self._lock:
            entry[field] = value
            entries[key] = entry
            self._save()
        return value

    def peek(self, path: Path | str, field: str = "sha256") -> str | None:
        """The cached value if the cache already knows it for the file as it is now; never hashes."""
        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._load().get(str(p))
        if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime_ns:
            return entry.get(field)
        return None

    def sha256(self, path: Path | str) -> str:
        """Full SHA-256 of the file (cached)."""
        return self._get(path, "sha256", lambda p: _hash_file(p))

    def addnet(self, path: Path | str) -> str:
        """Full addnet hash of a safetensors file (cached)."""
        return self._get(path, "addnet", lambda p: _hash_file(p, _payload_offset(p)))

    def model_hash(self, path: Path | str) -> str:
        """A1111's short model hash (10 hex digits) for `Model hash:`."""
        return short_hash(self.sha256(path))

    def lora_hash(self, path: Path | str) -> str:
        """The short addnet hash (12 hex digits) for `Lora hashes:`."""
        return self.addnet(path)[:ADDNET_HASH_LEN]


def model_hash(path: Path | str, cache_file: Path | str | None = None) -> str:
    """A1111's short model hash of a checkpoint (first 10 hex digits of its SHA-256), cached in cache_file."""
    return HashCache(cache_file).model_hash(path)


def lora_hash(path: Path | str, cache_file: Path | str | None = None) -> str:
    """The short addnet hash (first 12 hex digits) of a LoRA safetensors file, cached in cache_file."""
    return HashCache(cache_file).lora_hash(path)
