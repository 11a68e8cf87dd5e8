"""Control models by name: A1111's `name [hash]` titles, and finding a model by any name a client may send.

The registry lists ControlNet files under `controlnet/` like every model kind (a diffusers folder shows up as
`folder/diffusion_pytorch_model.safetensors`). A1111's ControlNet extension names a model by its file name without
extension plus its old 8-digit hash (`control_v11p_sd15_canny [d14c016b]`); here a diffusers folder is named after
the folder. `find_control_model` accepts registry names, A1111 titles (hash or not), bare names and folder names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


def legacy_hash(path: Path) -> str:
    """A1111's old model hash: SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits ('NOFILE' if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


def display_name(registry_name: str, path: Path) -> str:
    """A1111's short name: the file name without extension, or the folder of a diffusers weight file."""
    p = Path(path)
    if (p.parent / "config.json").is_file() and p.name.startswith(("diffusion_pytorch_model", "model.")):
        return p.parent.name
    stem = registry_name.rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def control_model_titles(registry: Any) -> dict[str, str]:
    """{A1111 title 'name [hash]': registry name} of every installed control model, sorted by name."""
    out: dict[str, str] = {}
    for name, path in registry.entries("controlnet").items():
        out[f"{display_name(name, path)} [{legacy_hash(path)}]"] = name
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def control_model_title(registry: Any, name: str) -> str:
    """A1111's `name [hash]` of one control model (the name as given if it is not installed)."""
    try:
        path = registry.find("controlnet", find_control_model(registry, name))
    except Exception:  # noqa: BLE001 — a title is informative only
        return name
    return f"{display_name(registry.name_of('controlnet', path) or path.name, path)} [{legacy_hash(path)}]"


def find_control_model(registry: Any, name: str) -> str:
    """The registry name of a control model given a registry name, an A1111 title, a bare or folder name.

    Raises the registry's ModelNotFoundError (listing what exists) when nothing matches."""
    entries = registry.entries("controlnet")
    text = _TITLE_HASH.sub("", str(name).strip()).replace("\\", "/")
    if text in entries:
        return text
    matches = [n for n, p in entries.items() if display_name(n, p).lower() == text.lower()]
    if len(matches) == 1:
        return matches[0]
    path = registry.find("controlnet", name)  # stems, unique file names; raises with the list when unknown
    return registry.name_of("controlnet", path) or str(path)
