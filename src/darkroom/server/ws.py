"""The `/ws?clientId=` websocket: ComfyUI's status message on connect, the feature-flag handshake, then events.

A sender task drains the client's outbox; the receive loop handles `feature_flags` (stored per client, answered
with the server's flags). Previews are encoded as type-4 frames for clients that announced
`supports_preview_metadata`, else type 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from .events import ClientChannel, Preview
from .state import state_of

log = logging.getLogger(__name__)
router = APIRouter()


async def _sender(ws: WebSocket, channel: ClientChannel) -> None:
    while not channel.dead:
        await channel.wake.wait()
        for _, item in channel.drain():
            if isinstance(item, Preview):
                await ws.send_bytes(item.frame_for(channel.feature_flags))
            else:
                await ws.send_text(item)
    with contextlib.suppress(Exception):
        await ws.close(code=1013)  # fell too far behind (or replaced by a reconnect)


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    st = state_of(ws)
    sid = ws.query_params.get("clientId") or uuid.uuid4().hex
    await ws.accept()
    channel = st.hub.connect(sid)
    status = {"status": {"exec_info": {"queue_remaining": st.queue.remaining()}}, "sid": sid}
    channel.push("status", json.dumps({"type": "status", "data": status}))
    running = st.worker.progress.job
    if running is not None and running.client_id == sid and st.worker.progress.node is not None:
        node = st.worker.progress.node
        channel.push("executing", json.dumps({"type": "executing", "data": {
            "node": node, "display_node": node, "prompt_id": running.prompt_id}}))
    sender = asyncio.create_task(_sender(ws, channel))
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and data.get("type") == "feature_flags":
                flags = data.get("data")
                channel.feature_flags = flags if isinstance(flags, dict) else {}
                channel.push("feature_flags", json.dumps({"type": "feature_flags",
                                                          "data": st.server_feature_flags()}))
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("websocket %s failed", sid)
    finally:
        st.hub.disconnect(channel)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
