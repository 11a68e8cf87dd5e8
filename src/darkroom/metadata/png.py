"""Writing output images with their metadata, atomically and never over an existing file.

PNG: tEXt/iTXt chunks `parameters` (A1111 infotext), `prompt` and `workflow` (ComfyUI JSON), plus any extra keys.
JPEG/WebP: the infotext in EXIF UserComment (UNICODE), as A1111 writes it.
Reading lives in `reading.py` and names in `naming.py`; both are re-exported here.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .naming import (RE_A1111_NUMBERED, UnsafeOutputPathError, a1111_number, bumped, comfy_counter,
                     comfy_image_name, next_free_path, next_number, renumbered, save_image_path, substitute_prefix_vars)
from .reading import ImageMetadata, ImageMetadataError, format_info, params_from_metadata, read_image_metadata

__all__ = [
    "OutputExistsError", "UnsafeOutputPathError", "ImageMetadata", "ImageMetadataError", "write_png", "write_image",
    "user_comment_exif", "next_free_path", "next_number", "save_image_path", "comfy_image_name",
    "substitute_prefix_vars", "read_image_metadata", "format_info", "params_from_metadata",
]

OnExists = Literal["error", "next"]
_MAX_ATTEMPTS = 1000


class OutputExistsError(FileExistsError):
    """The output file already exists; darkroom never overwrites a file."""


def _png_keyword(key: str) -> str:
    """Check a PNG text keyword: 1–79 Latin-1 characters, no NUL, no leading/trailing space."""
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text key {key!r} must be Latin-1") from None
    if not 1 <= len(key) <= 79 or "\0" in key or key != key.strip():
        raise ValueError(f"PNG text key {key!r} must be 1–79 characters without NUL or edge spaces")
    return key


def png_info(*, parameters: str | None = None, prompt: Mapping[str, Any] | None = None,
             workflow: Mapping[str, Any] | None = None, extra: Mapping[str, object] | None = None) -> PngInfo:
    """The PNG text chunks: Latin-1 text as tEXt, anything else as iTXt (Pillow's choice, as in A1111 and ComfyUI)."""
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    if workflow is not None:
        info.add_text("workflow", json.dumps(workflow))
    for k, v in (extra or {}).items():
        if k in ("parameters", "prompt", "workflow"):
            raise ValueError(f"extra PNG text key {k!r} clashes with a named argument")
        info.add_text(_png_keyword(k), v if isinstance(v, str) else json.dumps(v))
    return info


def user_comment_exif(text: str) -> bytes:
    """EXIF bytes (`Exif\\0\\0` + big-endian TIFF) holding `text` as UserComment in UNICODE, laid out as piexif does."""
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    # IFD0 at 8: one entry (ExifIFD pointer) → Exif IFD at 26: one entry (UserComment) → data at 44.
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, 26) + struct.pack(">I", 0)
    exif_ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), 44) + struct.pack(">I", 0)
    return b"Exif\0\0" + b"MM\0\x2a" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment


def _open_new(path: Path) -> int:
    """Create `path` exclusively (mode 0666 less umask, like any new file) and return its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(path, flags, 0o666)


def _claim(tmp: Path, dst: Path) -> bool:
    """Give `dst` the finished temp file's content without ever replacing an existing `dst`.

    Returns True when `dst` is a hard link to `tmp` (tmp still to be removed), False when a reserved placeholder
    was created instead (filesystems without hard links; `_finish` moves the content in). Raises FileExistsError.
    """
    try:
        os.link(tmp, dst)
        return True
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.EACCES,
                           errno.ENOSYS):
            raise
    os.close(_open_new(dst))  # FileExistsError if taken; else an empty placeholder that is ours
    return False


def _finish(tmp: Path, dst: Path, linked: bool) -> None:
    """Make the claimed `dst` final: drop the temp name (hard link) or move the content over our placeholder."""
    if linked:
        tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, dst)


def _release(tmp: Path, dst: Path, linked: bool) -> None:
    """Undo a claim of `dst` that lost a numbering race (only if `dst` is still the file we made)."""
    try:
        if linked and not os.path.samefile(tmp, dst):
            return
        if not linked and dst.stat().st_size != 0:
            return
        dst.unlink()
    except FileNotFoundError:
        pass


def _number_taken_by_other(path: Path) -> bool:
    """Whether another file in the folder carries the same leading A1111 number as `path`."""
    n = a1111_number(path.name)
    return any(name != path.name and a1111_number(name) == n for name in os.listdir(path.parent))


def _publish(path: str | os.PathLike[str], encode: Callable[[IO[bytes]], None], on_exists: OnExists) -> Path:
    """Encode into a temp file beside `path`, then link it into place without replacing anything; return the path.

    on_exists="error": raise OutputExistsError if the name is taken. on_exists="next": take the next free name —
    ComfyUI `_00001_` counters count up, A1111 `00001-…` names take the folder's next number (checked again after
    linking, so concurrent writers never share a number), other names get `-1`, `-2`, … before the extension.
    """
    if on_exists not in ("error", "next"):
        raise ValueError(f"on_exists must be 'error' or 'next', not {on_exists!r}")
    dst = Path(path)
    folder = dst.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    tmp = folder / f".{dst.name}.{secrets.token_hex(6)}.tmp"
    fd = _open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            encode(f)
            f.flush()
            os.fsync(f.fileno())
        numbered = on_exists == "next" and RE_A1111_NUMBERED.match(dst.stem) is not None
        candidate = dst
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                linked = _claim(tmp, candidate)
            except FileExistsError:
                if on_exists == "error":
                    raise OutputExistsError(f"{candidate} already exists; darkroom never overwrites a file") from None
                candidate = renumbered(dst) if numbered else bumped(dst, attempt)
                continue
            if numbered and _number_taken_by_other(candidate):
                _release(tmp, candidate, linked)
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))  # break ties between racing writers
                candidate = renumbered(dst)
                continue
            _finish(tmp, candidate, linked)
            return candidate
        raise OutputExistsError(f"no free file name near {dst} after {_MAX_ATTEMPTS} attempts")
    finally:
        tmp.unlink(missing_ok=True)


def write_png(image: Image.Image, path: str | os.PathLike[str], *, parameters: str | None = None,
              prompt: Mapping[str, Any] | None = None, workflow: Mapping[str, Any] | None = None,
              extra: Mapping[str, object] | None = None, on_exists: OnExists = "error",
              compress_level: int = 4) -> Path:
    """Save `image` as PNG with A1111/ComfyUI text chunks, atomically, never over an existing file; return the path."""
    info = png_info(parameters=parameters, prompt=prompt, workflow=workflow, extra=extra)

    def encode(f: IO[bytes]) -> None:
        try:
            image.save(f, format="PNG", pnginfo=info, compress_level=compress_level)
        except (OSError, KeyError) as e:
            raise ValueError(f"cannot write a {image.mode} image as PNG: {e}") from None

    return _publish(path, encode, on_exists)


def write_image(image: Image.Image, path: str | os.PathLike[str], *, parameters: str | None = None,
                prompt: Mapping[str, Any] | None = None, workflow: Mapping[str, Any] | None = None,
                extra: Mapping[str, object] | None = None, on_exists: OnExists = "error", quality: int = 95) -> Path:
    """Save by extension: PNG with chunks (see write_png); JPEG/WebP with the infotext as EXIF UserComment."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return write_png(image, path, parameters=parameters, prompt=prompt, workflow=workflow, extra=extra,
                         on_exists=on_exists)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(suffix)
    if fmt is None:
        raise ValueError(f"unsupported image file type {suffix!r} (use .png, .jpg or .webp)")
    exif = user_comment_exif(parameters) if parameters else None
    img = image.convert("RGB") if fmt == "JPEG" and image.mode not in ("RGB", "L") else image

    def encode(f: IO[bytes]) -> None:
        kwargs: dict[str, Any] = {"quality": quality}
        if exif is not None:
            kwargs["exif"] = exif
        img.save(f, format=fmt, **kwargs)

    return _publish(path, encode, on_exists)


def write_comfy_images(images: list[Image.Image], output_dir: str | os.PathLike[str], filename_prefix: str = "ComfyUI",
                       *, prompt: Mapping[str, Any] | None = None, extra_pnginfo: Mapping[str, Any] | None = None,
                       parameters: str | None = None) -> list[dict[str, str]]:
    """ComfyUI SaveImage: `prefix_00001_.png`… with `prompt` and extra_pnginfo chunks; returns the UI result items."""
    if not images:
        return []
    folder, base, counter, subfolder = save_image_path(output_dir, filename_prefix, images[0].width,
                                                       images[0].height)
    extra = dict(extra_pnginfo or {})
    workflow = extra.pop("workflow", None)
    results = []
    for i, img in enumerate(images):
        path = write_png(img, folder / comfy_image_name(base, counter, i), parameters=parameters, prompt=prompt,
                         workflow=workflow, extra=extra, on_exists="next")
        m = comfy_counter(path.name)
        counter = (m if m is not None else counter) + 1
        results.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
    return results

