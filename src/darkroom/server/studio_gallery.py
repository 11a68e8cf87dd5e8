"""The studio's gallery: every image in output/ (whatever made it), newest first, searchable by prompt text.

The output folder is the truth, not the queue history: clearing the history (ComfyUI's queue panel can) never
hides an image; deleting it here is the only way one disappears. Each file's metadata is read once and cached by
(size, mtime); thumbnails are kept in a small in-memory cache.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class GalleryItem:
    """One image file in output/ and what its metadata says (prompt text for search and captions)."""

    filename: str
    subfolder: str
    mtime: float
    size: int
    prompt: str = ""
    negative: str = ""
    source: str | None = None
    seed: int | None = None
    width: int = 0
    height: int = 0

    def public(self) -> dict[str, Any]:
        from urllib.parse import urlencode

        q = urlencode({"filename": self.filename, "subfolder": self.subfolder, "type": "output"})
        return {"filename": self.filename, "subfolder": self.subfolder, "type": "output", "mtime": self.mtime,
                "prompt": self.prompt, "negative_prompt": self.negative, "source": self.source, "seed": self.seed,
                "width": self.width, "height": self.height, "url": f"/view?{q}",
                "thumb": "/studio/thumb?" + urlencode({"filename": self.filename, "subfolder": self.subfolder,
                                                        "v": int(self.mtime * 1000)})}  # v: a new file, a new URL


def summarize(path: Path) -> dict[str, Any]:
    """Prompt, negative prompt, source, seed and size of an image file (empty strings when it says nothing)."""
    from ..metadata.reading import ImageMetadataError, read_image_metadata

    try:
        meta = read_image_metadata(path)
    except (ImageMetadataError, OSError):
        return {"prompt": "", "negative": "", "source": None, "seed": None, "width": 0, "height": 0}
    prompt = negative = ""
    seed = None
    if meta.parameters:
        prompt = str(meta.infotext.get("Prompt", ""))
        negative = str(meta.infotext.get("Negative prompt", ""))
        try:
            seed = int(meta.infotext.get("Seed")) if meta.infotext.get("Seed") is not None else None
        except (TypeError, ValueError):
            seed = None
    elif meta.comfy:
        prompt = str(meta.comfy.get("positive", ""))
        negative = str(meta.comfy.get("negative", ""))
        seed = meta.comfy.get("seed")
    return {"prompt": prompt, "negative": negative, "source": meta.source, "seed": seed, "width": meta.width,
            "height": meta.height}


def matches(item: GalleryItem, query: str) -> bool:
    """Every word of the query occurs in the prompt, negative prompt or file name (case-insensitive)."""
    text = f"{item.prompt}\n{item.negative}\n{item.subfolder}/{item.filename}".lower()
    return all(word in text for word in query.lower().split())


class Gallery:
    """Images under one output folder."""

    def __init__(self, root: Path, *, thumb_cache: int = 512) -> None:
        self.root = Path(root)
        self._meta: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self._thumbs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._thumb_cache = thumb_cache
        self._lock = threading.Lock()

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        found = []
        if not self.root.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTS):
                    continue
                path = Path(dirpath) / name
                try:
                    found.append((path, path.stat()))
                except OSError:
                    continue
        return found

    def items(self) -> list[GalleryItem]:
        """All images, newest first."""
        out = []
        seen = set()
        for path, st in self._files():
            key = str(path)
            seen.add(key)
            with self._lock:
                cached = self._meta.get(key)
            if cached is None or cached[0] != st.st_size or cached[1] != st.st_mtime_ns:
                info = summarize(path)
                with self._lock:
                    self._meta[key] = (st.st_size, st.st_mtime_ns, info)
            else:
                info = cached[2]
            sub = path.parent.relative_to(self.root).as_posix()
            out.append(GalleryItem(filename=path.name, subfolder="" if sub == "." else sub, mtime=st.st_mtime,
                                   size=st.st_size, **info))
        with self._lock:
            for key in [k for k in self._meta if k not in seen]:
                del self._meta[key]
        out.sort(key=lambda it: (it.mtime, it.subfolder, it.filename), reverse=True)
        return out

    def search(self, query: str = "", offset: int = 0, limit: int = 60) -> tuple[int, list[GalleryItem]]:
        """(total matching, one page of them) — newest first."""
        found = [it for it in self.items() if not query.strip() or matches(it, query)]
        return len(found), found[max(offset, 0): max(offset, 0) + max(limit, 0)]

    def thumbnail(self, path: Path, size: int = 256) -> bytes:
        """A WebP thumbnail (longest side `size`) of an image, cached by file identity."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, size)
        with self._lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        with Image.open(path) as img:
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            img.thumbnail((size, size), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="WEBP", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self._thumb_cache:
                self._thumbs.popitem(last=False)
        return data

    def forget(self, path: Path) -> None:
        """Drop cached metadata and thumbnails of a deleted file."""
        with self._lock:
            self._meta.pop(str(path), None)
            for key in [k for k in self._thumbs if k[0] == str(path)]:
                del self._thumbs[key]


def history_jobs_with(store: Any, filename: str, subfolder: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(prompt_id, the job's other output images) for every history job that made this file."""
    found = []
    for job in store.history():
        images = [img for out in (job.outputs or {}).values() if isinstance(out, dict)
                  for img in out.get("images", []) or [] if isinstance(img, dict) and img.get("type") == "output"]
        same = [img.get("filename") == filename and (img.get("subfolder") or "") == subfolder for img in images]
        if any(same):
            found.append((job.prompt_id, [img for img, s in zip(images, same) if not s]))
    return found
