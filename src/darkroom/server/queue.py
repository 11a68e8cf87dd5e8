"""The job queue: ComfyUI's priority numbers over the durable store, one consumer (the device's worker).

Numbers grow by one per queued job; `front` negates the number so the job jumps ahead; an explicit `number`
sets the priority. Ties run in arrival order. Submitting and listing never wait for the worker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .store import Job, JobStore

ChangeListener = Callable[[], None]


class JobQueue:
    """Pending and running jobs; the store is the truth, this object adds numbering and wake-ups."""

    def __init__(self, store: JobStore, *, max_history: int | None = None) -> None:
        self.store = store
        self.max_history = max_history
        self._cond = threading.Condition()
        self._counter = int(store.max_number()) + 1
        self._running: Job | None = None
        self._listeners: list[ChangeListener] = []
        self._closed = False

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener()` (from any thread) whenever the queue's length changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must never break queueing
                pass

    def next_number(self, front: bool = False, number: float | None = None) -> float:
        """ComfyUI's numbering: explicit number, else the counter (negated for `front`); the counter advances."""
        with self._cond:
            if number is not None:
                return float(number)
            n = self._counter
            self._counter += 1
        return float(-n if front else n)

    def submit(self, prompt: dict[str, Any], *, extra_data: dict[str, Any] | None = None,
               outputs_to_execute: Iterable[str] = (), kind: str = "comfy", payload: dict[str, Any] | None = None,
               front: bool = False, number: float | None = None, prompt_id: str | None = None) -> Job:
        """Store a new pending job and wake the worker; returns the job (with its number and id)."""
        job = Job(prompt_id=prompt_id or str(uuid.uuid4()), number=self.next_number(front, number), prompt=prompt,
                  extra_data=dict(extra_data or {}), outputs_to_execute=list(outputs_to_execute), kind=kind,
                  payload=payload)
        self.store.insert(job)
        with self._cond:
            self._cond.notify_all()
        self._changed()
        return job

    def take(self, timeout: float | None = None) -> Job | None:
        """The next pending job, marked running (waits up to `timeout` seconds; None if none or closed)."""
        found: Job | None = None
        with self._cond:
            while not self._closed and found is None:
                job = self.store.first_pending()
                if job is not None:
                    if self.store.mark_running(job.prompt_id):  # False: deleted meanwhile, look again
                        job.status = "running"
                        found = job
                    continue
                if not self._cond.wait(timeout):
                    return None
            self._running = found
        if found is not None:
            self._changed()
        return found

    def done(self, job: Job) -> None:
        """Record the finished job in the history; the queue shrinks by one."""
        self.store.finish(job)
        if self.max_history is not None:
            self.store.trim_history(self.max_history)
        with self._cond:
            if self._running is not None and self._running.prompt_id == job.prompt_id:
                self._running = None
        self._changed()

    @property
    def running(self) -> Job | None:
        return self._running

    def pending(self) -> list[Job]:
        return self.store.pending()

    def remaining(self) -> int:
        """Jobs pending or running (ComfyUI's `queue_remaining`)."""
        return self.store.count_pending() + (1 if self._running is not None else 0)

    def delete(self, prompt_ids: Iterable[str] | None = None) -> list[str]:
        """Remove pending jobs (all with None); returns their ids. Running ones are stopped with an interrupt."""
        removed = self.store.delete_pending(prompt_ids)
        if removed:
            self._changed()
        return removed

    def close(self) -> None:
        """Wake and release a waiting worker (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
