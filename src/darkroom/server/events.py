"""Per-client event delivery for the websocket: JSON events and binary preview frames, never blocking the worker.

The worker thread calls `send`/`preview`; delivery hops onto the event loop (`call_soon_threadsafe`) and lands in
each client's bounded outbox. A slow client loses progress/preview messages first; one that falls hopelessly
behind is disconnected. Nothing here ever waits for a socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Binary frame types (ComfyUI protocol.BinaryEventTypes).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMAT_CODES = {"JPEG": 1, "PNG": 2}
#: Events a lagging client may lose (newer ones supersede them).
DROPPABLE = frozenset({"progress", "progress_state", "preview"})


def preview_frame_legacy(image_bytes: bytes, image_format: str) -> bytes:
    """Type 1 frame: `[u32 1][u32 format: 1 JPEG, 2 PNG][image bytes]`."""
    return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMAT_CODES[image_format]) + image_bytes


def preview_frame_with_metadata(image_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """Type 4 frame: `[u32 4][u32 json length][json metadata][image bytes]`."""
    meta = json.dumps(metadata).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image_bytes


@dataclass
class Preview:
    """One encoded step preview, turned into the frame type each client understands."""

    image: bytes
    image_format: str  # "JPEG" | "PNG"
    metadata: dict[str, Any]

    def frame_for(self, flags: dict[str, Any]) -> bytes:
        if flags.get("supports_preview_metadata"):
            return preview_frame_with_metadata(self.image, self.metadata)
        return preview_frame_legacy(self.image, self.image_format)


@dataclass
class ClientChannel:
    """One websocket client: its id, its feature flags and its outbox."""

    sid: str
    max_pending: int = 256
    feature_flags: dict[str, Any] = field(default_factory=dict)
    outbox: deque = field(default_factory=deque)  # (kind, str | Preview)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    dropped: int = 0

    def push(self, kind: str, item: Any) -> None:
        """Queue an item (event loop thread only); drop stale droppables or give up on a hopeless client."""
        if self.dead:
            return
        self.outbox.append((kind, item))
        if len(self.outbox) > self.max_pending:
            kept = deque(x for x in self.outbox if x[0] not in DROPPABLE)
            kept_last = [x for x in self.outbox if x[0] in DROPPABLE][-1:]  # keep only the newest progress
            self.dropped += len(self.outbox) - len(kept) - len(kept_last)
            kept.extend(kept_last)
            self.outbox = kept
            if len(self.outbox) > 4 * self.max_pending:
                self.dead = True  # it reads nothing: stop buffering for it
        self.wake.set()

    def drain(self) -> list[tuple[str, Any]]:
        items = list(self.outbox)
        self.outbox.clear()
        self.wake.clear()
        return items


class EventHub:
    """Routes events to clients by sid (None: broadcast)."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self.clients: dict[str, ClientChannel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Deliver on this event loop (set at start-up; None detaches)."""
        self._loop = loop

    # -- connections (event loop thread) ----------------------------------------------------------------------
    def connect(self, sid: str) -> ClientChannel:
        """A new channel for `sid`; a reconnecting client replaces its old channel, as in ComfyUI."""
        channel = ClientChannel(sid=sid, max_pending=self.max_pending)
        with self._lock:
            old = self.clients.get(sid)
            if old is not None:
                old.dead = True
                old.wake.set()
            self.clients[sid] = channel
        return channel

    def disconnect(self, channel: ClientChannel) -> None:
        channel.dead = True
        channel.wake.set()
        with self._lock:
            if self.clients.get(channel.sid) is channel:
                del self.clients[channel.sid]

    # -- sending (any thread) ------------------------------------------------------------------------------
    def _dispatch(self, kind: str, item: Any, sid: str | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver, kind, item, sid)
        except RuntimeError:  # loop shutting down
            pass

    def _deliver(self, kind: str, item: Any, sid: str | None) -> None:
        with self._lock:
            targets = list(self.clients.values()) if sid is None else [c for c in (self.clients.get(sid),) if c]
        for channel in targets:
            channel.push(kind, item)

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """A JSON `{"type": event, "data": data}` to one client (or everyone with sid None)."""
        text = json.dumps({"type": event, "data": data}, default=str)
        self._dispatch(event, text, sid)

    def preview(self, preview: Preview, sid: str | None = None) -> None:
        """A binary preview frame (type 4 for clients that support metadata, else type 1)."""
        self._dispatch("preview", preview, sid)

    def client_count(self) -> int:
        return len(self.clients)
