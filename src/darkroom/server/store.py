"""Durable jobs: the queue and the history in one SQLite table (WAL), so both survive a restart.

A job moves pending → running → success | error | interrupted. Deleting a pending job or a history entry removes
its row (ComfyUI forgets them too). When the store is opened after a crash, jobs left `running` are marked `error`
with a reason (`recover`); `pending` jobs stay and run again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
FINISHED = ("success", "error", "interrupted")
#: Keys never written to the database or history (ComfyUI's SENSITIVE_EXTRA_DATA_KEYS).
SENSITIVE_EXTRA_DATA_KEYS = ("api_key_comfy_org", "auth_token_comfy_org")
CRASH_REASON = "darkroom stopped while this job was running (the process exited or crashed); queue it again to retry"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    payload TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    history_seq INTEGER,
    outputs TEXT,
    status_info TEXT,
    meta TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, number, seq);
CREATE INDEX IF NOT EXISTS jobs_history ON jobs(history_seq);
"""


def plain_number(number: float) -> int | float:
    """A queue number as ComfyUI shows it (an int unless a client sent a fractional priority)."""
    return int(number) if float(number).is_integer() else number


@dataclass
class Job:
    """One queued workflow (or one A1111 request: several per-image workflows) and, once run, its results."""

    prompt_id: str
    number: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs_to_execute: list[str] = field(default_factory=list)
    kind: str = "comfy"  # "comfy" (POST /prompt) or "sdapi" (/sdapi/v1/txt2img, img2img)
    payload: dict[str, Any] | None = None  # kind-specific data (sdapi: per-image workflows, request, seeds)
    status: str = "pending"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    status_info: dict[str, Any] | None = None  # ComfyUI's history `status` object
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seq: int = 0

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return str(cid) if cid else None

    def queue_item(self) -> list[Any]:
        """ComfyUI's queue entry `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
        return [plain_number(self.number), self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def history_entry(self) -> dict[str, Any]:
        """ComfyUI's HistoryEntry: prompt, outputs, status, meta."""
        status = self.status_info or {
            "status_str": "success" if self.status == "success" else "error",
            "completed": self.status == "success",
            "messages": [],
        }
        return {"prompt": self.queue_item(), "outputs": self.outputs, "status": status, "meta": self.meta}


def clean_extra_data(extra_data: dict[str, Any]) -> dict[str, Any]:
    """extra_data without credentials (never persisted)."""
    return {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


class JobStore:
    """The jobs table. Every method is one short transaction; safe to call from any thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer darkroom (schema {version}); upgrade darkroom")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- rows ------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            prompt_id=row["prompt_id"], number=row["number"], kind=row["kind"], status=row["status"],
            prompt=_loads(row["prompt"], {}), extra_data=_loads(row["extra_data"], {}),
            outputs_to_execute=_loads(row["outputs_to_execute"], []), payload=_loads(row["payload"], None),
            created=row["created"], started=row["started"], finished=row["finished"],
            outputs=_loads(row["outputs"], {}), status_info=_loads(row["status_info"], None),
            meta=_loads(row["meta"], {}), error=row["error"], seq=row["seq"],
        )

    def _select(self, where: str, args: Iterable[Any] = (), order: str = "number, seq", limit: str = "") -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY {order} {limit}", tuple(args)).fetchall()
        return [self._job(r) for r in rows]

    # -- queue -----------------------------------------------------------------------------------------------
    def insert(self, job: Job) -> Job:
        """Add a pending job; returns it with its sequence number. Raises ValueError for a reused prompt_id."""
        job.extra_data = clean_extra_data(job.extra_data)
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO jobs (prompt_id, number, kind, status, prompt, extra_data, outputs_to_execute, "
                    "payload, created) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (job.prompt_id, float(job.number), job.kind, _dumps(job.prompt), _dumps(job.extra_data),
                     _dumps(job.outputs_to_execute), None if job.payload is None else _dumps(job.payload),
                     job.created))
            except sqlite3.IntegrityError:
                raise ValueError(f"prompt_id {job.prompt_id!r} is already used by another job") from None
        job.seq = int(cur.lastrowid or 0)
        job.status = "pending"
        return job

    def get(self, prompt_id: str) -> Job | None:
        jobs = self._select("prompt_id = ?", (prompt_id,))
        return jobs[0] if jobs else None

    def pending(self) -> list[Job]:
        """Pending jobs in run order (number, then arrival)."""
        return self._select("status = 'pending'")

    def first_pending(self) -> Job | None:
        """The pending job that runs next."""
        jobs = self._select("status = 'pending'", limit="LIMIT 1")
        return jobs[0] if jobs else None

    def count_pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'pending'").fetchone()[0])

    def running(self) -> list[Job]:
        return self._select("status = 'running'")

    def max_number(self) -> float:
        """The largest |number| ever given (so numbering continues after a restart)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(ABS(number)) FROM jobs").fetchone()
        return float(row[0] or 0)

    def mark_running(self, prompt_id: str) -> bool:
        """pending → running; False if the job is gone (deleted meanwhile)."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET status = 'running', started = ? WHERE prompt_id = ? "
                                   "AND status = 'pending'", (time.time(), prompt_id))
        return cur.rowcount == 1

    def finish(self, job: Job) -> None:
        """Record a finished job (status, outputs, status_info, meta, error) and put it in the history."""
        job.finished = job.finished or time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                nxt = self._db.execute("SELECT COALESCE(MAX(history_seq), 0) + 1 FROM jobs").fetchone()[0]
                self._db.execute(
                    "UPDATE jobs SET status = ?, finished = ?, history_seq = ?, outputs = ?, status_info = ?, "
                    "meta = ?, error = ?, payload = ? WHERE prompt_id = ?",
                    (job.status, job.finished, nxt, _dumps(job.outputs),
                     None if job.status_info is None else _dumps(job.status_info), _dumps(job.meta), job.error,
                     None if job.payload is None else _dumps(job.payload), job.prompt_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete_pending(self, prompt_ids: Iterable[str] | None = None) -> list[str]:
        """Remove pending jobs (all when `prompt_ids` is None); returns the ids removed."""
        wanted = None if prompt_ids is None else set(prompt_ids)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT prompt_id FROM jobs WHERE status = 'pending'").fetchall()
                ids = [r[0] for r in rows if wanted is None or r[0] in wanted]
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    self._db.execute(f"DELETE FROM jobs WHERE status = 'pending' AND prompt_id IN "
                                     f"({','.join('?' * len(chunk))})", chunk)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def recover(self, reason: str = CRASH_REASON) -> list[str]:
        """Mark jobs left `running` by a dead process as failed with `reason`; returns their ids."""
        now = time.time()
        stale = self.running()
        for job in stale:
            job.status = "error"
            job.error = reason
            job.finished = now
            ts = int(now * 1000)
            job.status_info = {
                "status_str": "error", "completed": False,
                "messages": [["execution_start", {"prompt_id": job.prompt_id,
                                                  "timestamp": int((job.started or now) * 1000)}],
                             ["execution_error", {"prompt_id": job.prompt_id, "node_id": None, "node_type": None,
                                                  "executed": [], "exception_message": reason,
                                                  "exception_type": "darkroom.ServerRestart", "traceback": [],
                                                  "current_inputs": {}, "current_outputs": [],
                                                  "timestamp": ts}]],
            }
            self.finish(job)
        return [j.prompt_id for j in stale]

    # -- history ---------------------------------------------------------------------------------------------
    def history(self, max_items: int | None = None, offset: int = -1) -> list[Job]:
        """Finished jobs in the order they finished; ComfyUI's max_items/offset (default: the newest max_items)."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM jobs WHERE history_seq IS NOT NULL").fetchone()[0]
        if offset < 0 and max_items is not None:
            offset = total - max_items
        offset = max(offset, 0)
        limit = -1 if max_items is None else max(max_items, 0)
        return self._select("history_seq IS NOT NULL", order="history_seq",
                            limit=f"LIMIT {int(limit)} OFFSET {int(offset)}")

    def delete_history(self, prompt_ids: Iterable[str] | None = None) -> int:
        """Forget finished jobs (all when `prompt_ids` is None). Output files stay on disk."""
        with self._lock:
            if prompt_ids is None:
                cur = self._db.execute("DELETE FROM jobs WHERE history_seq IS NOT NULL")
            else:
                ids = list(prompt_ids)
                if not ids:
                    return 0
                cur = self._db.execute(f"DELETE FROM jobs WHERE history_seq IS NOT NULL AND prompt_id IN "
                                       f"({','.join('?' * len(ids))})", ids)
        return cur.rowcount

    def trim_history(self, keep: int) -> int:
        """Drop the oldest history entries beyond `keep`."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE history_seq IS NOT NULL AND history_seq <= "
                "(SELECT COALESCE(MAX(history_seq), 0) FROM jobs) - ?", (keep,))
        return cur.rowcount
