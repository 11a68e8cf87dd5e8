"""The engine: typed generation requests over loaded models. Never imports the server, the CLI or the node registry.

Names are imported lazily so that light users (metadata, CLI argument parsing) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": ".engine",
    "GenerationResult": ".engine",
    "RequestError": ".engine",
    "GenerationParams": ".params",
    "HiresParams": ".params",
    "LoraRef": ".params",
    "Interrupted": ".pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
