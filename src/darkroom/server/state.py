"""The objects one server owns, reachable from every route as `request.app.state.darkroom`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .config import ServerConfig
from .events import EventHub
from .files import Folders
from .queue import JobQueue
from .sdapi_options import OptionsStore, StyleBook
from .store import JobStore
from .worker import Worker


@dataclass
class ServerState:
    """Configuration, engine, graph executor, durable queue, event hub and worker of one server."""

    config: ServerConfig
    settings: Any  # darkroom.settings.Settings
    engine: Any  # darkroom.engine.Engine
    executor: Any  # darkroom.graph.GraphExecutor (its registry validates workflows)
    store: JobStore
    queue: JobQueue
    hub: EventHub
    worker: Worker
    folders: Folders
    options: OptionsStore
    styles: StyleBook
    recovered: list[str] = field(default_factory=list)  # jobs marked failed at start-up (were running)
    started: float = field(default_factory=time.time)

    @property
    def node_registry(self) -> Any:
        return self.executor.registry

    def server_feature_flags(self) -> dict[str, Any]:
        """What `/features` and the websocket handshake announce."""
        return {"supports_preview_metadata": True, "max_upload_size": self.config.limits.max_upload_bytes}

    def sdapi_context(self) -> Any:
        from .sdapi import SdapiContext

        return SdapiContext(models=self.engine.registry, nodes=self.node_registry, folders=self.folders,
                            limits=self.config.limits, options=self.options, styles=self.styles,
                            embeddings=self.engine.embeddings())


def state_of(request_or_ws: Any) -> ServerState:
    """The ServerState of the app serving this request or websocket."""
    return request_or_ws.app.state.darkroom
