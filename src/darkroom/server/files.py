"""The server's folders (input/, output/, temp/ as in ComfyUI), safe path resolution, uploads and image decoding.

Every path a client names is resolved with symlinks followed and must stay inside its folder. Uploads are written
atomically (temp file + link/rename); a different file under a taken name becomes `name (1).ext`, the same bytes
reuse the existing file. Images from clients are checked before decoding (pixel count) against bombs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

FOLDER_TYPES = ("input", "output", "temp")


class FileRequestError(Exception):
    """A client's file request that cannot be served; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Folders:
    """input/, output/ and temp/ of one server."""

    input: Path
    output: Path
    temp: Path

    def create(self, *, wipe_temp: bool = True) -> Folders:
        """Make the folders; temp/ starts empty (ComfyUI clears it at start-up)."""
        if wipe_temp and self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        for p in (self.input, self.output, self.temp):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def of(self, kind: str) -> Path:
        if kind not in FOLDER_TYPES:
            raise FileRequestError(400, f"unknown folder type {kind!r}; use input, output or temp")
        return getattr(self, kind)


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's annotated names: 'x.png [output]' → ('x.png', 'output')."""
    m = re.match(r"^(.*) \[(input|output|temp)\]$", name)
    return (m.group(1), m.group(2)) if m else (name, None)


def _inside(base: Path, target: Path) -> bool:
    b, t = os.path.realpath(base), os.path.realpath(target)
    try:
        return os.path.commonpath((b, t)) == b
    except ValueError:
        return False


def check_subfolder(subfolder: str) -> str:
    """A relative sub-folder name without '..', NUL or an absolute start (else 400)."""
    sub = (subfolder or "").replace("\\", "/").strip()
    if "\0" in sub or sub.startswith("/") or re.match(r"^[A-Za-z]:", sub) or ".." in sub.split("/"):
        raise FileRequestError(400, f"invalid subfolder {subfolder!r}")
    return sub.strip("/")


def check_filename(filename: str) -> str:
    """A plain file name: no path separators, no '..', not hidden, not empty (else 400)."""
    name = filename or ""
    if (not name or "\0" in name or "/" in name or "\\" in name or name in (".", "..") or ".." in name
            or name.startswith(".")):
        raise FileRequestError(400, f"invalid file name {filename!r}")
    return name


def resolve(folders: Folders, kind: str, subfolder: str, filename: str) -> Path:
    """The file a `/view`-style request names: 400 for '..'/absolute names, 403 for escapes (symlinks too)."""
    if not filename or filename.startswith("/") or ".." in filename or "\0" in filename or "\\" in filename:
        raise FileRequestError(400, f"invalid file name {filename!r}")
    base = folders.of(kind)
    try:
        sub = check_subfolder(subfolder)
    except FileRequestError:
        raise FileRequestError(403, "the subfolder points outside the folder") from None
    folder = base / sub if sub else base
    if not _inside(base, folder):
        raise FileRequestError(403, "the subfolder points outside the folder")
    path = folder / filename
    if not _inside(base, path):
        raise FileRequestError(403, "the file points outside the folder")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write bytes via a temp file; without `replace`, never over an existing file (returns False if taken)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some filesystems): exclusive create as the fallback
            try:
                with open(path, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def save_upload(data: bytes, folder: Path, subfolder: str, filename: str, *, overwrite: bool = False) -> tuple[str, str]:
    """Store uploaded bytes as ComfyUI does; returns (file name used, subfolder).

    Same name and same bytes: the existing file is reused. Same name, other bytes: `name (1).ext`, `name (2).ext`…
    With `overwrite` the file is replaced (callers never allow that for output/).
    """
    name = check_filename(filename)
    sub = check_subfolder(subfolder)
    target_dir = folder / sub if sub else folder
    if not _inside(folder, target_dir):
        raise FileRequestError(403, "the subfolder points outside the folder")
    target_dir.mkdir(parents=True, exist_ok=True)
    if not _inside(folder, target_dir):  # a symlink created meanwhile
        raise FileRequestError(403, "the subfolder points outside the folder")
    stem, ext = os.path.splitext(name)
    digest = sha256_bytes(data)
    for i in range(0, 10_000):
        candidate = name if i == 0 else f"{stem} ({i}){ext}"
        path = target_dir / candidate
        if overwrite and i == 0:
            write_atomic(path, data, replace=True)
            return candidate, sub
        if path.exists():
            if path.is_file() and _file_sha256(path) == digest:
                return candidate, sub
            continue
        if write_atomic(path, data):
            return candidate, sub
        if path.is_file() and _file_sha256(path) == digest:  # someone wrote the same bytes meanwhile
            return candidate, sub
    raise FileRequestError(409, f"no free file name for {name!r}")


# -- images from clients ----------------------------------------------------------------------------------------

def open_image(data: bytes, *, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode image bytes after checking the pixel count from the header (decompression bombs)."""
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as ex:
        raise FileRequestError(400, f"{what} is not a readable image ({ex})") from None
    w, h = img.size
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise FileRequestError(400, f"{what} is too large ({w}x{h} pixels; the limit is {max_pixels} pixels)")
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as ex:
        raise FileRequestError(400, f"{what} could not be decoded ({ex})") from None
    return img


def decode_base64(text: str, *, what: str = "image", max_bytes: int | None = None) -> bytes:
    """Raw base64 or a `data:...;base64,` URL → bytes (http URLs are refused: darkroom never fetches)."""
    if not isinstance(text, str) or not text:
        raise FileRequestError(400, f"{what} must be a base64 string")
    s = text.strip()
    if s.startswith(("http://", "https://")):
        raise FileRequestError(400, f"{what}: image URLs are not fetched (darkroom works offline); send base64")
    if s.startswith("data:"):
        _, _, s = s.partition(",")
    if max_bytes is not None and len(s) * 3 // 4 > max_bytes:
        raise FileRequestError(413, f"{what} is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise FileRequestError(400, f"{what} is not valid base64") from None


def encode_png(img: Image.Image, **pnginfo: str) -> bytes:
    """PNG bytes of an image, with text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in pnginfo.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def preview_bytes(path: Path, spec: str) -> tuple[bytes, str]:
    """`/view?preview=webp;90` or `jpeg;90`: the image re-encoded (bytes, media type)."""
    fmt, _, quality = spec.partition(";")
    fmt = fmt.strip().lower()
    if fmt not in ("webp", "jpeg", "jpg"):
        fmt = "webp"
    try:
        q = max(1, min(100, int(quality))) if quality else 90
    except ValueError:
        q = 90
    with Image.open(path) as img:
        img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="WEBP" if fmt == "webp" else "JPEG", quality=q)
    return buf.getvalue(), "image/webp" if fmt == "webp" else "image/jpeg"


def channel_bytes(path: Path, channel: str) -> bytes:
    """`/view?channel=rgb` (no alpha) or `a` (the alpha as a grey-on-black RGBA image, as ComfyUI) as PNG bytes."""
    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB") if img.mode != "RGB" else img.copy()
        else:
            rgba = img.convert("RGBA")
            alpha = rgba.getchannel("A")
            out = Image.new("RGBA", img.size, (0, 0, 0, 255))
            out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
    return buf.getvalue()
