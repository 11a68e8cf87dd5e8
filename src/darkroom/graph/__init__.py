"""darkroom.graph: typed nodes, a node registry, workflow validation and a caching executor."""

from darkroom.graph.cache import CacheEntry, OutputCache
from darkroom.graph.context import NodeContext
from darkroom.graph.executor import ExecutionResult, ExecutorBusyError, GraphExecutor
from darkroom.graph.node import (
    MISSING,
    Input,
    Interrupted,
    Node,
    NodeDefinitionError,
    NodeOutput,
    Output,
    Types,
)
from darkroom.graph.registry import NodeRegistry, UnknownNodeError, node_info, object_info
from darkroom.graph.validate import PromptValidationError, ValidationResult, validate_prompt

__all__ = [
    "MISSING",
    "CacheEntry",
    "ExecutionResult",
    "ExecutorBusyError",
    "GraphExecutor",
    "Input",
    "Interrupted",
    "Node",
    "NodeContext",
    "NodeDefinitionError",
    "NodeOutput",
    "NodeRegistry",
    "Output",
    "OutputCache",
    "PromptValidationError",
    "Types",
    "UnknownNodeError",
    "ValidationResult",
    "node_info",
    "object_info",
    "validate_prompt",
]
