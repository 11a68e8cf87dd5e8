"""The engine: typed generation requests over loaded models. Never imports the server, the CLI or the node registry."""

from .engine import Engine, GenerationResult, RequestError
from .params import GenerationParams, HiresParams, LoraRef
from .pipeline import Interrupted

__all__ = ["Engine", "GenerationParams", "GenerationResult", "HiresParams", "Interrupted", "LoraRef", "RequestError"]
