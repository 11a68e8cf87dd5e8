"""An explicit registry of node classes, and ComfyUI's V1 `/object_info` description of them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from darkroom.graph.node import Node, NodeDefinitionError, definition_problems

log = logging.getLogger(__name__)


class UnknownNodeError(KeyError):
    """A class_type that no registered node answers to."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown node class"


class NodeRegistry:
    """Node classes by ComfyUI class_type; built explicitly, never by scanning modules."""

    def __init__(self, nodes: Iterable[type[Node]] = ()) -> None:
        self._nodes: dict[str, type[Node]] = {}
        for cls in nodes:
            self.register(cls)

    def register(self, cls: type[Node]) -> type[Node]:
        """Add a node class (checks its declarations); usable as a class decorator."""
        problems = definition_problems(cls)
        if problems:
            raise NodeDefinitionError("; ".join(problems))
        existing = self._nodes.get(cls.name)
        if existing is not None and existing is not cls:
            raise NodeDefinitionError(
                f"node name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        self._nodes[cls.name] = cls
        return cls

    def get(self, class_type: str) -> type[Node] | None:
        """The class for a class_type, or None."""
        return self._nodes.get(class_type)

    def __getitem__(self, class_type: str) -> type[Node]:
        cls = self._nodes.get(class_type)
        if cls is None:
            raise UnknownNodeError(f"unknown node class_type {class_type!r}")
        return cls

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def names(self) -> list[str]:
        """Registered class_types in registration order."""
        return list(self._nodes)

    def classes(self) -> list[type[Node]]:
        """Registered classes in registration order."""
        return list(self._nodes.values())


def node_info(cls: type[Node]) -> dict[str, Any]:
    """One node's `/object_info` entry in ComfyUI's V1 shape."""
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for key, inp in cls.inputs.items():
        try:
            spec = inp.spec()
        except Exception:  # a broken choices provider must not take /object_info down with it
            log.exception("choices of %s.%s could not be listed", cls.name, key)
            spec = [[], inp.options()]
        (optional if inp.optional else required)[key] = spec
    input_section: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        input_section["optional"] = optional
        order["optional"] = list(optional)
    if cls.hidden:
        input_section["hidden"] = dict(cls.hidden)
        order["hidden"] = list(cls.hidden)
    return {
        "input": input_section,
        "input_order": order,
        "output": [out.type for out in cls.outputs],
        "output_is_list": [out.is_list for out in cls.outputs],
        "output_name": [out.display_name for out in cls.outputs],
        "name": cls.name,
        "display_name": cls.display_name or cls.name,
        "description": cls.description,
        "python_module": cls.python_module,
        "category": cls.category,
        "output_node": bool(cls.output_node),
        "output_tooltips": [out.tooltip or "" for out in cls.outputs],
        "deprecated": bool(cls.deprecated),
        "experimental": bool(cls.experimental),
    }


def object_info(registry: NodeRegistry, class_type: str | None = None) -> dict[str, dict[str, Any]]:
    """`GET /object_info` (all nodes) or `/object_info/{class_type}` (one node, `{}` if unknown)."""
    if class_type is not None:
        cls = registry.get(class_type)
        return {class_type: node_info(cls)} if cls is not None else {}
    return {name: node_info(registry[name]) for name in registry}
