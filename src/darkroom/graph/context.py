"""The narrow context a running node receives: identity, progress, cancel check and services."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from darkroom.graph.node import Interrupted

ProgressSink = Callable[[int | float, int | float, Any], None]
InterruptCheck = Callable[[], bool]


class NodeContext:
    """What `Node.execute` gets as `ctx`.

    Services injected by the caller (a model manager, output storage, settings…) are reachable
    as attributes: `ctx.models`, `ctx.storage`. Nothing else of the application is.
    """

    def __init__(
        self,
        *,
        node_id: str,
        prompt_id: str,
        class_type: str,
        display_node_id: str | None = None,
        prompt: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        services: Mapping[str, Any] | None = None,
        progress_sink: ProgressSink | None = None,
        interrupt_check: InterruptCheck | None = None,
    ) -> None:
        self.node_id = node_id
        self.prompt_id = prompt_id
        self.class_type = class_type
        self.display_node_id = display_node_id if display_node_id is not None else node_id
        self.prompt: Mapping[str, Any] = prompt if prompt is not None else {}
        self.extra_data: Mapping[str, Any] = extra_data if extra_data is not None else {}
        self.services: dict[str, Any] = dict(services or {})
        self._progress_sink = progress_sink
        self._interrupt_check = interrupt_check

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose injected services as attributes.
        services = self.__dict__.get("services")
        if services is not None and name in services:
            return services[name]
        raise AttributeError(
            f"node context has no attribute or service {name!r} (services: {sorted(services or {})})"
        )

    @property
    def interrupted(self) -> bool:
        """True once the prompt has been asked to stop."""
        return bool(self._interrupt_check and self._interrupt_check())

    def check_interrupted(self) -> None:
        """Raise `Interrupted` if the prompt has been asked to stop."""
        if self.interrupted:
            raise Interrupted(f"interrupted while running node {self.node_id} ({self.class_type})")

    def progress(self, value: int | float, max: int | float, preview: Any = None) -> None:  # noqa: A002
        """Report step `value` of `max` (and an optional preview image); stops here if interrupted."""
        self.check_interrupted()
        if self._progress_sink is not None:
            self._progress_sink(value, max, preview)
