"""Node result caching across runs: input signatures and a bounded LRU of results.

A node's signature is a digest of its class_type, class version, fingerprint (ComfyUI's
IS_CHANGED), its constant inputs sorted by name and, for each link, the signature of the source
node and the output index. Equal signatures mean equal results, so a changed seed re-runs the
sampler and what follows it while loaders and text encoders are reused (ComfyUI's
`CacheKeySetInputSignature`). A fingerprint that is NaN, cannot be represented, or raises makes
the node's signature unique to this run (never reused), as NaN != NaN does in ComfyUI.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from darkroom.graph.node import Node

log = logging.getLogger(__name__)

Link = tuple[str, int]


@dataclass(frozen=True)
class CacheEntry:
    """One node's results: the output tuple (shared references, never copied) and its UI data."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


class OutputCache:
    """Least-recently-used node results keyed by signature, bounded by number of entries."""

    def __init__(self, max_entries: int = 64) -> None:
        if max_entries < 0:
            raise ValueError(f"cache size must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def get(self, key: str) -> CacheEntry | None:
        """The entry for a signature (marking it most recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def peek(self, key: str) -> CacheEntry | None:
        """The entry for a signature without touching its recency."""
        return self._entries.get(key)

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store an entry, dropping the least recently used ones beyond the bound."""
        if self.max_entries == 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _canonical(value: Any) -> Any:
    """A repr-stable, type-tagged form of a constant; raises `_UncomparableError` for NaN or objects."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, float):
        if math.isnan(value):
            raise _UncomparableError
        return ("float", value)
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_canonical(v) for v in value))
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((repr(_canonical(k)), _canonical(v)) for k, v in value.items())))
    raise _UncomparableError


class _UncomparableError(Exception):
    """Internal: a value has no stable canonical form."""


def _digest(parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()


def _unique_token() -> str:
    return f"unique:{uuid.uuid4().hex}"


def fingerprint_token(cls: type[Node], constants: Mapping[str, Any], preset: Any = None, has_preset: bool = False) -> Any:
    """The fingerprint part of a signature (a preset `is_changed` value from the prompt wins)."""
    if not has_preset and not cls.has_fingerprint():
        return None
    try:
        value = preset if has_preset else cls.fingerprint(**constants)
        return _canonical(value)
    except _UncomparableError:
        return _unique_token()
    except Exception:
        log.warning("fingerprint of %s failed; the node will run again", cls.name, exc_info=True)
        return _unique_token()


def node_signatures(
    order: Sequence[str],
    prompt: Mapping[str, Any],
    classes: Mapping[str, type[Node]],
    links: Mapping[str, Mapping[str, Link]],
) -> dict[str, str]:
    """Signature digests of the nodes in `order` (sources first), each covering its whole ancestry."""
    sigs: dict[str, str] = {}
    for node_id in order:
        node = prompt[node_id]
        cls = classes[node_id]
        node_links = links.get(node_id, {})
        constants = {k: v for k, v in node["inputs"].items() if k in cls.inputs and k not in node_links}
        parts: list[Any] = [cls.name, cls.version,
                            fingerprint_token(cls, constants, node.get("is_changed"), "is_changed" in node)]
        if cls.not_idempotent or "UNIQUE_ID" in cls.hidden.values():
            parts.append(("node", node_id))
        for key in sorted(cls.inputs):
            if key in node_links:
                src, index = node_links[key]
                parts.append((key, "link", sigs[src], index))
            elif key in constants:
                try:
                    parts.append((key, _canonical(constants[key])))
                except _UncomparableError:
                    parts.append((key, _unique_token()))
        sigs[node_id] = _digest(parts)
    return sigs
