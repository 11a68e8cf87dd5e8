"""The device's worker: one thread that takes jobs from the queue, runs their workflows and records the results.

ComfyUI jobs run their one prompt; A1111 jobs run one workflow per image (the same graphs, same executor, so
loaders and text encoders are cached between the images) and then `sdapi.assemble` builds their answer. Events go
to the submitting client only (progress and previews to everyone when a job has no client), and
`execution_interrupted` to everyone, as in ComfyUI. A failing job — any exception, out-of-memory included — is
recorded as failed and the worker moves on.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .events import EventHub, Preview
from .files import Folders
from .queue import JobQueue
from .store import Job

log = logging.getLogger(__name__)

#: Events that go only to the job's own client (and nowhere when it has none), as in ComfyUI.
CLIENT_ONLY = frozenset({"execution_start", "execution_cached", "executing", "executed", "execution_success",
                         "execution_error"})


@dataclass
class Progress:
    """What the worker is doing now (A1111's `/progress`, ws reconnects)."""

    job: Job | None = None
    node: str | None = None
    image_index: int = 0  # A1111 jobs: image being made
    image_count: int = 0
    step: int = 0
    steps: int = 0
    started: float = 0.0
    preview: Any = None  # latest step preview (PIL image)
    interrupted: bool = False
    skipped: bool = False
    job_timestamp: str = ""

    def fraction(self) -> float:
        """Done part of the current job, 0..1 (A1111's formula over images and steps)."""
        if self.job is None:
            return 0.0
        count = max(self.image_count, 1)
        step = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.image_index + step) / count)


@dataclass
class RunOutcome:
    """One workflow run inside a job."""

    status: str  # success | error | interrupted
    result: Any = None  # darkroom.graph.ExecutionResult when the executor ran
    error: str | None = None
    error_payload: dict[str, Any] | None = None


@dataclass
class FreeRequest:
    unload_models: bool = False
    free_memory: bool = False


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Worker:
    """Runs jobs one at a time on the engine's device."""

    def __init__(self, queue: JobQueue, hub: EventHub, engine: Any, executor: Any, folders: Folders, *,
                 preview_method: str = "latent2rgb", preview_size: int = 512,
                 sdapi_assemble: Callable[..., Any] | None = None) -> None:
        self.queue = queue
        self.hub = hub
        self.engine = engine
        self.executor = executor
        self.folders = folders
        self.preview_method = preview_method
        self.preview_size = preview_size
        self.sdapi_assemble = sdapi_assemble
        self.progress = Progress()
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._stop = threading.Event()
        self._free = FreeRequest()
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    # -- control (any thread) ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="darkroom-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after interrupting the running job; pending jobs stay queued for the next start."""
        self._stop.set()
        self._interrupt.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running job (only if it is `prompt_id`, when given); True if one was asked to stop."""
        job = self.progress.job
        if job is None or (prompt_id is not None and job.prompt_id != prompt_id):
            return False
        self.progress.interrupted = True
        self._interrupt.set()
        return True

    def skip(self) -> bool:
        """A1111's skip: stop the current image of an A1111 job and go on with the next one."""
        job = self.progress.job
        if job is None:
            return False
        self.progress.skipped = True
        self._skip.set()
        self._interrupt.set()
        return True

    def request_free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """ComfyUI's /free: applied between jobs."""
        with self._lock:
            self._free.unload_models |= unload_models
            self._free.free_memory |= free_memory

    def wait_for(self, prompt_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future on `loop` resolved with the finished Job (and its `answer` for A1111 jobs)."""
        future = loop.create_future()
        with self._lock:
            self._waiters.setdefault(prompt_id, []).append(_Waiter(loop, future))
        return future

    def forget(self, prompt_id: str, future: asyncio.Future) -> None:
        """Drop a waiter whose job was never queued."""
        with self._lock:
            left = [w for w in self._waiters.get(prompt_id, []) if w.future is not future]
            if left:
                self._waiters[prompt_id] = left
            else:
                self._waiters.pop(prompt_id, None)

    def abandon(self, prompt_id: str, reason: str) -> None:
        """Answer anyone waiting for a job that will never run (deleted from the queue)."""
        gone = Job(prompt_id=prompt_id, number=0, prompt={}, status="cancelled", error=reason)
        self._resolve(gone, None)

    def has_waiter(self, prompt_id: str) -> bool:
        with self._lock:
            return bool(self._waiters.get(prompt_id))

    # -- the loop ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._apply_free()
            job = self.queue.take(timeout=0.5)
            if job is None:
                continue
            self.idle.clear()
            answer = None
            try:
                answer = self.run_job(job)
            except Exception as ex:  # a bug in a job must not stop the worker
                log.exception("job %s failed", job.prompt_id)
                self._fail(job, f"{type(ex).__name__}: {ex}", traceback.format_exc().splitlines())
            finally:
                if self._stop.is_set() and job.status == "interrupted":
                    job.error = "darkroom was shut down while this job was running; queue it again to retry"
                try:
                    self.queue.done(job)
                except Exception:
                    log.exception("could not record job %s", job.prompt_id)
                if job.client_id:
                    self.hub.send("executing", {"node": None, "display_node": None, "prompt_id": job.prompt_id},
                                  job.client_id)
                self.progress = Progress()  # idle before anyone hears the answer (A1111 clients poll /progress)
                self._resolve(job, answer)
                self.idle.set()

    def _resolve(self, job: Job, answer: Any) -> None:
        with self._lock:
            waiters = self._waiters.pop(job.prompt_id, [])
        for w in waiters:
            def settle(fut: asyncio.Future = w.future) -> None:
                if not fut.done():
                    fut.set_result((job, answer))
            try:
                w.loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass

    def _apply_free(self) -> None:
        with self._lock:
            free, self._free = self._free, FreeRequest()
        if free.unload_models:
            unload_models(self.engine, self.executor)
        if free.free_memory:
            self.executor.clear_cache()
        if free.unload_models or free.free_memory:
            release_memory()

    # -- running -------------------------------------------------------------------------------------------
    def run_job(self, job: Job) -> Any:
        """Run one job to its end, filling its status, outputs and history; returns the A1111 answer if any."""
        self._interrupt.clear()
        self._skip.clear()
        self.progress = Progress(job=job, started=time.time(), job_timestamp=time.strftime("%Y%m%d%H%M%S"))
        if job.kind == "sdapi":
            if self.sdapi_assemble is None:
                raise RuntimeError("this server cannot run A1111 jobs (no assembler configured)")
            return self._run_sdapi(job)
        outcome = self.run_prompt(job, job.prompt, job.outputs_to_execute or None)
        result = outcome.result
        if result is not None:
            job.outputs = result.outputs
            job.meta = result.meta
            job.status_info = result.history_status()
        job.status = outcome.status
        job.error = outcome.error
        if job.status_info is None:
            job.status_info = _status_info(job, outcome)
        return None

    def _run_sdapi(self, job: Job) -> Any:
        payload = job.payload or {}
        workflows: list[dict[str, Any]] = payload.get("run_workflows") or []
        self.progress.image_count = len(workflows)
        results: list[tuple[int, Any]] = []
        messages: list[list[Any]] = []
        outcome = RunOutcome("success")
        for i, prompt in enumerate(workflows):
            self.progress.image_index = i
            self.progress.step = 0
            if self._interrupt.is_set() and not self._skip.is_set():
                outcome = RunOutcome("interrupted")
                break
            self._interrupt.clear()
            self._skip.clear()
            one = self.run_prompt(job, prompt, None)
            if one.result is not None:
                messages.extend([[e, d] for e, d in one.result.messages])
            if one.status == "success":
                results.append((i, one.result))
                continue
            if one.status == "interrupted" and self._skip.is_set():
                continue  # skipped image: go on with the next one
            outcome = one
            break
        self.progress.image_index = len(workflows)
        answer = self.sdapi_assemble(job, results, engine=self.engine, folders=self.folders,
                                     waited=self.has_waiter(job.prompt_id))
        job.status = outcome.status if outcome.status != "success" else "success"
        job.error = outcome.error
        job.status_info = {"status_str": "success" if job.status == "success" else "error",
                           "completed": job.status == "success", "messages": messages}
        return answer

    def run_prompt(self, job: Job, prompt: dict[str, Any], outputs: list[str] | None) -> RunOutcome:
        """Run one API prompt for `job` on the shared executor, streaming its events."""
        from ..graph import PromptValidationError
        from ..nodes import make_services

        want_previews = self.preview_method != "none" and job.extra_data.get("preview_method", "auto") != "none"
        services = make_services(engine=self.engine, input_dir=self.folders.input, output_dir=self.folders.output,
                                 temp_dir=self.folders.temp, previews=want_previews)
        sink = self._sink(job)
        try:
            result = self.executor.execute(prompt, prompt_id=job.prompt_id, on_event=sink, services=services,
                                           outputs_to_execute=outputs, interrupt=self._interrupt,
                                           extra_data=job.extra_data, send_done=False)
        except PromptValidationError as ex:
            message = f"the workflow is no longer valid: {ex}"
            payload = self._error_payload(job, message, "darkroom.graph.PromptValidationError", [])
            sink("execution_error", payload)
            return RunOutcome("error", None, message, payload)
        err = result.error or {}
        if result.status == "error" and "OutOfMemoryError" in str(err.get("exception_type", "")):
            unload_models(self.engine, self.executor)
            release_memory()
        message = err.get("exception_message") if result.status == "error" else (
            "interrupted" if result.status == "interrupted" else None)
        return RunOutcome(result.status, result, message, result.error)

    def _error_payload(self, job: Job, message: str, kind: str, tb: list[str]) -> dict[str, Any]:
        return {"prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": message, "exception_type": kind, "traceback": tb, "current_inputs": {},
                "current_outputs": [], "timestamp": int(time.time() * 1000)}

    def _fail(self, job: Job, message: str, tb: list[str]) -> None:
        payload = self._error_payload(job, message, "darkroom.server.WorkerError", tb)
        if job.client_id:
            self.hub.send("execution_error", payload, job.client_id)
        job.status = "error"
        job.error = message
        job.status_info = {"status_str": "error", "completed": False, "messages": [["execution_error", payload]]}

    # -- events --------------------------------------------------------------------------------------------
    def _sink(self, job: Job) -> Callable[[str, dict[str, Any]], None]:
        sid = job.client_id

        def sink(event: str, data: dict[str, Any]) -> None:
            p = self.progress
            if event == "preview":
                image = data.get("image")
                p.preview = image
                frame = self._encode_preview(image, data)
                if frame is not None:
                    self.hub.preview(frame, sid)
                return
            if event == "progress":
                p.step, p.steps = int(data.get("value", 0)), int(data.get("max", 0))
                self.hub.send(event, data, sid)
                return
            if event == "progress_state":
                self.hub.send(event, data, sid)
                return
            if event == "executing":
                p.node = data.get("node")
            if event == "execution_interrupted":
                self.hub.send(event, data, None)  # broadcast, as ComfyUI
                return
            if event in CLIENT_ONLY and sid is not None:
                self.hub.send(event, data, sid)

        return sink

    def _encode_preview(self, image: Any, data: dict[str, Any]) -> Preview | None:
        if image is None or not hasattr(image, "save"):
            return None
        img = image
        if max(img.size) > self.preview_size:
            img = img.copy()
            img.thumbnail((self.preview_size, self.preview_size))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=95)
        node = data.get("node")
        meta = {"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": data.get("display_node", node),
                "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}
        return Preview(buf.getvalue(), "JPEG", meta)


def _status_info(job: Job, outcome: RunOutcome) -> dict[str, Any]:
    messages = [["execution_error", outcome.error_payload]] if outcome.error_payload else []
    return {"status_str": "success" if job.status == "success" else "error", "completed": job.status == "success",
            "messages": messages}


def unload_models(engine: Any, executor: Any) -> None:
    """Drop loaded checkpoints and every cached node result that holds them."""
    executor.clear_cache()
    engine.unload_all()


def release_memory() -> None:
    """Collect garbage and return cached accelerator memory."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
