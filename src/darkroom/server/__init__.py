"""darkroom.server: a local generation service speaking ComfyUI's protocol and A1111's API over one durable queue.

    from darkroom.server import ServerConfig, create_app, serve

Imports are lazy: importing this package loads neither FastAPI nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServerConfig": ".config",
    "ServerConfigError": ".config",
    "Limits": ".config",
    "create_app": ".app",
    "build_state": ".app",
    "serve": ".app",
    "JobStore": ".store",
    "Job": ".store",
    "JobQueue": ".queue",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
