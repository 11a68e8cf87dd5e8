"""Per-user files of the node editor: settings (`comfy.settings.json`) and userdata (saved workflows, keybindings …).

Single-user, as ComfyUI without `--multi-user`: everything lives under `<data_dir>/user/default/`. Paths a client
names are relative to that folder; anything that would leave it (`..`, absolute paths, symlinks pointing out) is
refused with `UserDataError` (status 400/403). Writes go through a temp file and a rename, so a crash never leaves
a half-written workflow behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
#: Settings a fresh darkroom user starts with (stored values win): open onto the default graph rather than the
#: template browser, never ask the internet about new releases (darkroom is offline), and ComfyUI's classic
#: canvas navigation written out in full (frontend 1.27 otherwise fails while registering "NavigationMode", whose
#: change handler sets these two before they exist).
DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Canvas.NavigationMode": "legacy",
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
}


class UserDataError(Exception):
    """A userdata request that cannot be served; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _inside(base: Path, target: Path) -> bool:
    b, t = os.path.realpath(base), os.path.realpath(target)
    try:
        return os.path.commonpath((b, t)) == b
    except ValueError:
        return False


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    """ComfyUI's FileInfo: `{path, size, modified}` (path relative, with '/', modified in seconds)."""
    st = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": st.st_size, "modified": st.st_mtime}


class UserData:
    """The `user/` folder of one server (one user: `default`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @property
    def user_dir(self) -> Path:
        return self.root / DEFAULT_USER

    # -- paths -------------------------------------------------------------------------------------------------
    def resolve(self, relative: str, *, allow_root: bool = False) -> Path:
        """The file a client names, inside the user folder (400 for bad names, 403 for escapes)."""
        rel = (relative or "").replace("\\", "/")
        if "\0" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
            raise UserDataError(400, f"invalid path {relative!r}")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise UserDataError(400, f"invalid path {relative!r}: '..' is not allowed")
        if not parts and not allow_root:
            raise UserDataError(400, "no file name given")
        base = self.user_dir
        base.mkdir(parents=True, exist_ok=True)
        path = base.joinpath(*parts) if parts else base
        if not _inside(base, path):
            raise UserDataError(403, f"{relative!r} points outside the user folder")
        return path

    # -- listing -----------------------------------------------------------------------------------------------
    def list(self, directory: str, *, recurse: bool = False, full_info: bool = False,
             split: bool = False) -> list[Any]:
        """ComfyUI's GET /userdata?dir=: file names (or FileInfo, or [path, *parts]) under a folder; 404 if none."""
        if not directory:
            raise UserDataError(400, "Directory not provided")
        folder = self.resolve(directory)
        if not folder.is_dir():
            raise UserDataError(404, f"folder {directory!r} does not exist")
        found = folder.rglob("*") if recurse else folder.glob("*")
        out: list[Any] = []
        for path in sorted(found):
            if not path.is_file() or not _inside(folder, path) or path.name.startswith(".dr-tmp-"):
                continue
            if full_info:
                out.append(file_info(path, folder))
                continue
            rel = path.relative_to(folder).as_posix()
            out.append([rel, *rel.split("/")] if split else rel)
        return out

    def list_v2(self, directory: str) -> list[dict[str, Any]]:
        """ComfyUI's GET /v2/userdata?path=: one folder's entries `{name, path, type, size?, modified?}`."""
        folder = self.resolve(directory, allow_root=True)
        if not folder.is_dir():
            raise UserDataError(404, f"folder {directory!r} does not exist")
        out = []
        for path in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if path.name.startswith(".dr-tmp-") or not _inside(self.user_dir, path):
                continue
            rel = path.relative_to(self.user_dir).as_posix()
            if path.is_dir():
                out.append({"name": path.name, "path": rel, "type": "directory"})
            elif path.is_file():
                st = path.stat()
                out.append({"name": path.name, "path": rel, "type": "file", "size": st.st_size,
                            "modified": int(st.st_mtime * 1000)})
        return out

    # -- files -------------------------------------------------------------------------------------------------
    def read(self, relative: str) -> Path:
        """The existing file (404 otherwise)."""
        path = self.resolve(relative)
        if not path.is_file():
            raise UserDataError(404, f"{relative!r} not found")
        return path

    def write(self, relative: str, data: bytes, *, overwrite: bool = True) -> Path:
        """Store bytes (409 when the file exists and overwrite is off); creates folders as needed."""
        path = self.resolve(relative)
        if path.is_dir():
            raise UserDataError(400, f"{relative!r} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(self.user_dir, path.parent):
            raise UserDataError(403, f"{relative!r} points outside the user folder")
        tmp = path.with_name(f".dr-tmp-{secrets.token_hex(6)}")
        with self._lock:
            if path.exists() and not overwrite:
                raise UserDataError(409, f"{relative!r} already exists")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def delete(self, relative: str) -> None:
        """Remove a file (404 if missing)."""
        path = self.read(relative)
        path.unlink()

    def move(self, source: str, dest: str, *, overwrite: bool = False) -> Path:
        """Rename a file inside the user folder (409 when dest exists and overwrite is off)."""
        src = self.read(source)
        dst = self.resolve(dest)
        with self._lock:
            if dst.exists() and not overwrite:
                raise UserDataError(409, f"{dest!r} already exists")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(self.user_dir, dst.parent):
                raise UserDataError(403, f"{dest!r} points outside the user folder")
            shutil.move(str(src), str(dst))
        return dst

    def relative(self, path: Path) -> str:
        return path.relative_to(self.user_dir).as_posix()

    # -- settings ----------------------------------------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.user_dir / SETTINGS_FILE

    def stored_settings(self) -> dict[str, Any]:
        """The settings file as stored ({} when missing or damaged)."""
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def settings(self) -> dict[str, Any]:
        """Stored settings over darkroom's defaults."""
        return {**DEFAULT_SETTINGS, **self.stored_settings()}

    def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge values into the stored settings; returns the result."""
        with self._lock:
            merged = {**self.stored_settings(), **changes}
            data = json.dumps(merged, indent=4, ensure_ascii=False).encode("utf-8")
            self.user_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.settings_path.with_name(f".dr-tmp-{secrets.token_hex(6)}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.settings_path)
            finally:
                tmp.unlink(missing_ok=True)
        return merged
