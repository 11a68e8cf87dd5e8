"""Output file names: A1111's `00001-<seed>.png` numbering and ComfyUI's `prefix_00001_.png` counter."""

from __future__ import annotations

import os
import re
import string
import time
from pathlib import Path, PurePosixPath

RE_A1111_NUMBERED = re.compile(r"^(\d+)(-.*)?$")  # stem of `00012-123456` or `00012`
RE_COMFY_COUNTER = re.compile(r"^(.*)_(\d+)_$")  # stem of `ComfyUI_00012_`


class UnsafeOutputPathError(ValueError):
    """A file name prefix that would write outside the output folder (`../`, an absolute path)."""


def a1111_number(name: str) -> int | None:
    """The leading sequence number of an A1111-style file name (`00012-123.png` → 12), else None."""
    m = RE_A1111_NUMBERED.match(os.path.splitext(name)[0])
    return int(m.group(1)) if m else None


def next_number(folder: str | os.PathLike[str], *, start: int = 1) -> int:
    """Highest leading number among the folder's files plus one (A1111's rule; gaps are never refilled)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return start
    best = start - 1
    for name in names:
        n = a1111_number(name)
        if n is not None and n > best:
            best = n
    return best + 1


def next_free_path(folder: str | os.PathLike[str], stem_pattern: str = "{number:05d}-{seed}", *, ext: str = ".png",
                   start: int = 1, **fields: object) -> Path:
    """The next A1111-style numbered path, e.g. `folder/00042-1234.png` for `seed=1234`.

    Write it with `write_png(..., on_exists="next")` so that concurrent writers still get distinct numbers.
    """
    if not stem_pattern.startswith("{number"):
        raise ValueError(f"stem pattern must start with the {{number}} field: {stem_pattern!r}")
    fmt_fields = {f for _, f, _, _ in string.Formatter().parse(stem_pattern) if f}
    missing = sorted(fmt_fields - {"number"} - set(fields))
    if missing:
        raise ValueError(f"stem pattern {stem_pattern!r} needs {', '.join(missing)}=…")
    stem = stem_pattern.format(number=next_number(folder, start=start), **fields)
    if "/" in stem or "\\" in stem or stem in ("", ".", ".."):
        raise UnsafeOutputPathError(f"file name {stem!r} must not contain a folder")
    return Path(folder) / f"{stem}{ext}"


def renumbered(path: Path, *, start: int = 1) -> Path:
    """`path` with its leading A1111 number replaced by the folder's next free number (same digit count)."""
    stem = path.stem
    m = RE_A1111_NUMBERED.match(stem)
    if m is None:
        raise ValueError(f"not a numbered file name: {path.name}")
    width = len(m.group(1))
    return path.with_name(f"{next_number(path.parent, start=start):0{width}d}{m.group(2) or ''}{path.suffix}")


# ComfyUI frontend's `formatDate` tokens for `%date:…%` (d, dd, M, MM, h, hh, m, mm, s, ss, yy, yyyy).
_RE_DATE_TOKEN = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")
_RE_PERCENT_VAR = re.compile(r"%([^%]+)%")


def _format_date(fmt: str, now: time.struct_time) -> str:
    """The ComfyUI frontend's date formatter (`%date:yyyy-MM-dd%`)."""
    parts = {"d": now.tm_mday, "M": now.tm_mon, "h": now.tm_hour, "m": now.tm_min, "s": now.tm_sec}

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "yy":
            return str(now.tm_year)[2:]
        if tok == "yyyy":
            return str(now.tm_year)
        if tok[0] in parts:
            return str(parts[tok[0]]).zfill(len(tok))
        return tok

    return _RE_DATE_TOKEN.sub(sub, fmt)


def substitute_prefix_vars(prefix: str, width: int = 0, height: int = 0, *, now: time.struct_time | None = None) -> str:
    """ComfyUI's prefix variables: `%date:FMT%` (frontend), then `%width%`, `%height%`, `%year%` … `%second%`."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    prefix = _RE_PERCENT_VAR.sub(
        lambda m: _format_date(m.group(1)[5:], now) if m.group(1).startswith("date:") else m.group(0), prefix)
    for key, value in (("width", str(width)), ("height", str(height)), ("year", str(now.tm_year)),
                       ("month", str(now.tm_mon).zfill(2)), ("day", str(now.tm_mday).zfill(2)),
                       ("hour", str(now.tm_hour).zfill(2)), ("minute", str(now.tm_min).zfill(2)),
                       ("second", str(now.tm_sec).zfill(2))):
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def _is_within(directory: str, target: str) -> bool:
    """Whether `target` resolves (symlinks too) inside `directory`."""
    try:
        d, t = os.path.realpath(directory), os.path.realpath(target)
        return os.path.commonpath((d, t)) == d
    except ValueError:
        return False


def save_image_path(output_dir: str | os.PathLike[str], filename_prefix: str, width: int = 0, height: int = 0, *,
                    now: time.struct_time | None = None) -> tuple[Path, str, int, str]:
    """ComfyUI's `get_save_image_path`: (folder, base name, next counter, subfolder) for `base_00001_.png` names.

    The counter is the highest existing counter for that base name plus one (1 when none); a `/` in the prefix makes a
    subfolder (created); a prefix that escapes `output_dir` raises UnsafeOutputPathError.
    """
    if not filename_prefix or "\0" in filename_prefix:
        raise ValueError(f"invalid filename prefix {filename_prefix!r}")
    prefix = substitute_prefix_vars(filename_prefix, width, height, now=now).replace("\\", "/")
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix):
        raise UnsafeOutputPathError(f"filename prefix {filename_prefix!r} is an absolute path; "
                                    "saving outside the output folder is not allowed")
    norm = PurePosixPath(os.path.normpath(prefix).replace("\\", "/"))
    subfolder = "" if str(norm.parent) == "." else str(norm.parent)
    base = norm.name
    folder = os.path.join(os.fspath(output_dir), subfolder)
    if norm.parts and norm.parts[0] == ".." or not _is_within(os.fspath(output_dir), folder):
        raise UnsafeOutputPathError(f"filename prefix {filename_prefix!r} points outside the output folder "
                                    f"{os.path.abspath(output_dir)}; saving there is not allowed")
    if base in ("", ".", ".."):
        raise ValueError(f"filename prefix {filename_prefix!r} has no file name")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    counter = 0
    n = len(base)
    key = os.path.normcase(base)
    for name in names:
        head = name[:n + 1]
        if len(head) != n + 1 or head[-1] != "_" or os.path.normcase(head[:-1]) != key:
            continue
        try:
            digits = int(name[n + 1:].split(".")[0].split("_")[0])
        except ValueError:
            digits = 0
        counter = max(counter, digits)
    return Path(folder), base, counter + 1, subfolder


def comfy_image_name(base: str, counter: int, batch_number: int = 0, ext: str = ".png") -> str:
    """ComfyUI's SaveImage file name: `%batch_num%` substituted, then `_{counter:05}_` and the extension."""
    return f"{base.replace('%batch_num%', str(batch_number))}_{counter:05}_{ext}"


def comfy_counter(name: str) -> int | None:
    """The ComfyUI counter in `prefix_00012_.png` (12), else None."""
    m = RE_COMFY_COUNTER.match(os.path.splitext(name)[0])
    return int(m.group(2)) if m else None


def bumped(path: Path, attempt: int) -> Path:
    """The `attempt`-th alternative name for a taken `path`: ComfyUI counter + attempt, else `name-<attempt>`."""
    m = RE_COMFY_COUNTER.match(path.stem)
    if m:
        return path.with_name(f"{m.group(1)}_{int(m.group(2)) + attempt:05}_{path.suffix}")
    return path.with_name(f"{path.stem}-{attempt}{path.suffix}")
