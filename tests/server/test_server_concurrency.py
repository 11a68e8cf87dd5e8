"""Several clients at once: every job completes, each client sees only its own execution events, GET /queue
answers while the worker is busy, and a client that never reads cannot stall the worker."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import requests
import websocket

from conftest import txt2img_workflow
from darkroom.server.events import ClientChannel, EventHub

CLIENT_EVENTS = {"execution_start", "execution_cached", "executing", "executed", "execution_success", "progress",
                 "progress_state", "execution_error"}


def test_clients_get_only_their_own_events(shared_server) -> None:
    clients, per_client = 4, 5
    barrier = threading.Barrier(clients + 1)
    results: dict[str, dict] = {}

    def run(cid: str) -> None:
        ws = websocket.create_connection(f"{shared_server.ws_url}/ws?clientId={cid}", timeout=120)
        ws.recv()
        barrier.wait()
        mine = [requests.post(shared_server.url + "/prompt", timeout=30,
                              json={"prompt": txt2img_workflow(seed=hash(cid) % 1000 + i, steps=2),
                                    "client_id": cid}).json()["prompt_id"] for i in range(per_client)]
        seen, done = set(), set()
        while done != set(mine):
            op, data = ws.recv_data()
            if op != websocket.ABNF.OPCODE_TEXT:
                continue
            msg = json.loads(data)
            if msg["type"] in CLIENT_EVENTS:
                seen.add(msg["data"]["prompt_id"])
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                done.add(msg["data"]["prompt_id"])
        ws.close()
        results[cid] = {"mine": mine, "seen": seen}

    threads = [threading.Thread(target=run, args=(f"c{i}",)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    slowest = 0.0
    busy_seen = False
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        q = requests.get(shared_server.url + "/queue", timeout=30)
        slowest = max(slowest, time.perf_counter() - t0)
        assert q.status_code == 200
        busy_seen |= bool(q.json()["queue_running"])
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert busy_seen and slowest < 2.0  # the queue answered while jobs ran
    all_ids = set()
    for cid, r in results.items():
        assert r["seen"] == set(r["mine"]), cid  # all of its own events, none of anyone else's
        all_ids |= set(r["mine"])
    assert len(all_ids) == clients * per_client
    hist = shared_server.get("/history").json()
    assert all(hist[i]["status"]["status_str"] == "success" for i in all_ids)


def test_a_client_that_never_reads_does_not_stall_the_worker(shared_server) -> None:
    deaf = websocket.create_connection(f"{shared_server.ws_url}/ws?clientId=deaf", timeout=30)
    t0 = time.time()
    ids = [shared_server.post("/prompt", json={"prompt": txt2img_workflow(seed=500 + i, steps=8),
                                               "client_id": "deaf"}).json()["prompt_id"] for i in range(4)]
    shared_server.wait_idle(60)
    assert time.time() - t0 < 60
    hist = shared_server.get("/history").json()
    assert all(hist[i]["status"]["status_str"] == "success" for i in ids)
    deaf.close()


def test_outbox_is_bounded_and_never_blocks() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        hub = EventHub(max_pending=50)
        hub.bind_loop(loop)
        channel: ClientChannel = asyncio.run_coroutine_threadsafe(_connect(hub, "slow"), loop).result(5)
        t0 = time.perf_counter()
        for i in range(5000):
            hub.send("progress", {"value": i, "max": 5000, "prompt_id": "p", "node": "3"}, "slow")
        for i in range(10):
            hub.send("executed", {"node": str(i), "prompt_id": "p"}, "slow")
        hub.send("status", {"status": {"exec_info": {"queue_remaining": 0}}})  # broadcast
        assert time.perf_counter() - t0 < 2.0  # sending never waits for the client
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
        kinds = [k for k, _ in channel.outbox]
        assert len(kinds) <= 50 + 1 and kinds.count("executed") == 10 and "status" in kinds
        assert kinds.count("progress") <= 1 and channel.dropped >= 4900 and not channel.dead
        last_progress = [json.loads(t) for k, t in channel.outbox if k == "progress"]
        assert not last_progress or last_progress[0]["data"]["value"] >= 4900  # the newest one is kept
        for i in range(300):
            hub.send("executed", {"node": str(i), "prompt_id": "p"}, "slow")
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
        assert channel.dead  # a client hopelessly behind is dropped instead of buffered forever
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def _connect(hub: EventHub, sid: str) -> ClientChannel:
    return hub.connect(sid)
