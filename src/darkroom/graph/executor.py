"""Runs a validated workflow: only ancestors of output nodes, cached across runs, with ComfyUI's events.

Events go to `on_event(type, data)` with ComfyUI's names and payloads: execution_start,
execution_cached, executing (per node, then `node: None` at the end), progress, progress_state,
executed (UI data of output nodes, replayed for cached ones), execution_success, execution_error,
execution_interrupted. One extra, non-JSON event, `preview` {node, display_node, prompt_id, image},
carries the preview a node passed to `ctx.progress`; a server turns it into a binary frame.

Thread-safety: one `GraphExecutor` runs one prompt at a time. A second `execute` call while one
is running raises `ExecutorBusyError` (the caller — a single worker thread fed by a queue — is
meant to serialise prompts). `interrupt` may be set from any other thread; nodes see it through
`ctx.check_interrupted()` / `ctx.progress()`, and the executor checks it before every node.

Not supported (documented gaps): OUTPUT_IS_LIST / INPUT_IS_LIST mapping over lists (list outputs
are passed on as plain values), lazy inputs (evaluated eagerly), node expansion / subgraphs and
async nodes. The first failing node stops the prompt, as in ComfyUI.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ContextManager, Literal

from darkroom.graph.cache import CacheEntry, OutputCache, node_signatures
from darkroom.graph.context import NodeContext
from darkroom.graph.node import MISSING, Interrupted, Node, NodeOutput
from darkroom.graph.registry import NodeRegistry
from darkroom.graph.validate import full_type_name, reachable, topological_order, validate_prompt

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
InterruptSource = threading.Event | Callable[[], bool] | None
ContextFactory = Callable[[NodeContext], Any]

OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you "
            "might have accidentally set the batch_size to a large number.")


class ExecutorBusyError(RuntimeError):
    """`execute` was called while this executor is already running a prompt."""


@dataclass
class ExecutionResult:
    """What one prompt run produced: status, UI outputs (history), node results and messages."""

    prompt_id: str
    status: Literal["success", "error", "interrupted"]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> UI data (history "outputs")
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> {node_id, display_node, …}
    executed: list[str] = field(default_factory=list)  # nodes that ran in this prompt, in order
    cached: list[str] = field(default_factory=list)  # nodes whose results came from the cache
    node_outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # results (shared references)
    error: dict[str, Any] | None = None  # the execution_error / execution_interrupted payload
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # status messages (history)
    node_errors: dict[str, Any] = field(default_factory=dict)  # validation errors of outputs left out

    @property
    def success(self) -> bool:
        """True when every scheduled node ran or came from the cache."""
        return self.status == "success"

    def history_status(self) -> dict[str, Any]:
        """ComfyUI's history `status` object."""
        return {
            "status_str": "success" if self.success else "error",
            "completed": self.success,
            "messages": [[event, dict(data)] for event, data in self.messages],
        }


def _interrupt_check(interrupt: InterruptSource) -> Callable[[], bool]:
    if interrupt is None:
        return lambda: False
    if isinstance(interrupt, threading.Event):
        return interrupt.is_set
    if callable(interrupt):
        return lambda: bool(interrupt())
    raise TypeError(f"interrupt must be a threading.Event, a callable or None, got {type(interrupt).__name__}")


def format_value(value: Any) -> Any:
    """A short JSON-safe rendering of a node input for `execution_error.current_inputs`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} shape={tuple(shape)} dtype={getattr(value, 'dtype', '?')}>"
    if isinstance(value, Mapping):
        return f"<{type(value).__name__} keys={sorted(map(str, value))[:10]}>"
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def normalise_result(cls: type[Node], raw: Any) -> CacheEntry:
    """Turn what `execute` returned into (outputs tuple, ui) and check it matches the declaration."""
    ui: Any = None
    if isinstance(raw, NodeOutput):
        result, ui = raw.result, raw.ui
    elif isinstance(raw, dict) and ("ui" in raw or "result" in raw):  # ComfyUI's {"ui":…, "result":…}
        result, ui = raw.get("result", ()), raw.get("ui")
    else:
        result = raw
    if result is None:
        result = ()
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"node {cls.name} returned a {type(result).__name__}; execute() must return a tuple "
                        f"with one value per declared output ({len(cls.outputs)})")
    if len(result) != len(cls.outputs):
        raise TypeError(f"node {cls.name} returned {len(result)} value(s) but declares {len(cls.outputs)} output(s)")
    if ui is not None and not isinstance(ui, dict):
        raise TypeError(f"node {cls.name} returned UI data of type {type(ui).__name__}; it must be a dict")
    return CacheEntry(tuple(result), ui or None)


class GraphExecutor:
    """Executes API-format prompts against a node registry, keeping node results in an LRU cache."""

    def __init__(
        self,
        registry: NodeRegistry,
        cache_size: int = 64,
        *,
        execution_scope: Callable[[], ContextManager[Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.cache = OutputCache(cache_size)
        self._scope = execution_scope  # e.g. torch.inference_mode, entered in the running thread
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        """Drop every cached node result (ComfyUI's `/free` with free_memory)."""
        self.cache.clear()

    def execute(
        self,
        prompt: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        on_event: EventSink | None = None,
        context_factory: ContextFactory | None = None,
        services: Mapping[str, Any] | None = None,
        outputs_to_execute: Iterable[str] | None = None,
        interrupt: InterruptSource = None,
        extra_data: Mapping[str, Any] | None = None,
        send_done: bool = True,
    ) -> ExecutionResult:
        """Validate and run `prompt`; raises `PromptValidationError` (before any event) if nothing can run.

        `context_factory(base_ctx)` may return the object nodes receive as `ctx` (None: use base);
        `services` become attributes of the base context. `send_done=False` leaves the final
        `executing {node: None}` to the caller (ComfyUI sends it after recording history).
        """
        if not self._lock.acquire(blocking=False):
            raise ExecutorBusyError("this GraphExecutor is already running a prompt; run prompts one at a time")
        try:
            validation = validate_prompt(self.registry, prompt, outputs_to_execute).raise_for_error()
            run = _PromptRun(
                self, validation.prompt, validation.outputs, validation.links,
                prompt_id=prompt_id or str(uuid.uuid4()),
                on_event=on_event, context_factory=context_factory, services=services or {},
                interrupted=_interrupt_check(interrupt), extra_data=dict(extra_data or {}),
            )
            run.result.node_errors = validation.node_errors
            with self._scope() if self._scope is not None else contextlib.nullcontext():
                result = run.run()
            if send_done:
                run.emit("executing", {"node": None, "prompt_id": run.prompt_id})
            return result
        finally:
            self._lock.release()


class _PromptRun:
    """State of one prompt's execution (kept off the executor so nothing leaks between runs)."""

    def __init__(
        self,
        executor: GraphExecutor,
        prompt: dict[str, Any],
        outputs: list[str],
        links: dict[str, dict[str, tuple[str, int]]],
        *,
        prompt_id: str,
        on_event: EventSink | None,
        context_factory: ContextFactory | None,
        services: Mapping[str, Any],
        interrupted: Callable[[], bool],
        extra_data: dict[str, Any],
    ) -> None:
        self.executor = executor
        self.cache = executor.cache
        self.prompt = prompt
        self.outputs = outputs
        self.links = links
        self.prompt_id = prompt_id
        self.on_event = on_event
        self.context_factory = context_factory
        self.services = services
        self.interrupted = interrupted
        self.extra_data = extra_data
        self.classes = {nid: executor.registry[node["class_type"]] for nid, node in prompt.items()}
        self.available: dict[str, CacheEntry] = {}  # node id -> results usable in this run
        self.result = ExecutionResult(prompt_id=prompt_id, status="success")
        self.progress_nodes: dict[str, dict[str, Any]] = {}

    # -- events ---------------------------------------------------------------------------
    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send one event; a failing sink is logged, never allowed to stop the prompt."""
        if self.on_event is None:
            return
        try:
            self.on_event(event, data)
        except Exception:
            log.exception("event sink failed on %s", event)

    def message(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """A status event: timestamped (ms), kept for history, and sent; returns the sent payload."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.result.messages.append((event, data))
        self.emit(event, data)
        return data

    def progress_state(self, node_id: str, state: str, value: float = 0, max_value: float = 1) -> None:
        """ComfyUI's per-node `progress_state` event (pending/running/finished/error)."""
        self.progress_nodes[node_id] = {
            "value": value, "max": max_value, "state": state, "node_id": node_id, "prompt_id": self.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
        }
        self.emit("progress_state", {"prompt_id": self.prompt_id, "nodes": dict(self.progress_nodes)})

    # -- planning -------------------------------------------------------------------------
    def run(self) -> ExecutionResult:
        """Plan, then run nodes one by one in a topological order that favours early previews."""
        self.message("execution_start", {"prompt_id": self.prompt_id})
        nodes = reachable(self.outputs, self.links)
        order, _ = topological_order(nodes, self.links)
        sigs = node_signatures(order, self.prompt, self.classes, self.links)
        for node_id in order:
            entry = self.cache.get(sigs[node_id])
            if entry is not None:
                self.available[node_id] = entry
        cached = [nid for nid in self.prompt if nid in self.available]
        self.result.cached = list(cached)
        self.message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id})

        scheduled = self._plan()
        deps = {n: {src for src, _ in self.links.get(n, {}).values() if src in scheduled and src not in self.available}
                for n in scheduled}
        users: dict[str, set[str]] = {n: set() for n in scheduled}
        for n, ds in deps.items():
            for d in ds:
                users[d].add(n)
        pending = list(scheduled)
        produced: dict[str, CacheEntry] = {}  # signature -> results made in this run (duplicate nodes)
        while pending:
            ready = [n for n in pending if not deps[n]]
            node_id = self._pick(ready, users, set(pending))
            pending.remove(node_id)
            if node_id not in self.available and sigs[node_id] in produced:
                self.available[node_id] = produced[sigs[node_id]]
            if node_id in self.available:
                self._replay(node_id)
            elif not self._execute_node(node_id, sigs[node_id]):
                return self.result
            else:
                produced[sigs[node_id]] = self.available[node_id]
            for u in users[node_id]:
                deps[u].discard(node_id)
        self.result.node_outputs = {n: e.outputs for n, e in self.available.items()}
        self.message("execution_success", {"prompt_id": self.prompt_id})
        return self.result

    def _plan(self) -> list[str]:
        """Outputs plus the uncached ancestors they need, in discovery order (cached nodes stop the walk)."""
        seen: dict[str, None] = {}
        stack = list(reversed(self.outputs))
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen[node_id] = None
            if node_id in self.available:
                continue
            for src, _ in reversed(list(self.links.get(node_id, {}).values())):
                if src not in seen and src not in self.available:
                    stack.append(src)
        return list(seen)

    def _pick(self, ready: list[str], users: Mapping[str, set[str]], pending: set[str]) -> str:
        """ComfyUI's ux-friendly pick: outputs first, then what feeds an output, then its feeders."""
        def is_output(n: str) -> bool:
            return bool(self.classes[n].output_node)

        for n in ready:
            if is_output(n):
                return n
        for n in ready:
            if any(is_output(u) for u in users[n] if u in pending):
                return n
        for n in ready:
            for u in users[n]:
                if u in pending and any(is_output(u2) for u2 in users[u] if u2 in pending):
                    return n
        return ready[0]

    # -- running --------------------------------------------------------------------------
    def _record_ui(self, node_id: str, ui: dict[str, Any]) -> None:
        self.result.outputs[node_id] = ui
        self.result.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                     "real_node_id": node_id}

    def _replay(self, node_id: str) -> None:
        """A cached output node: replay its last UI data (`executed`), as ComfyUI does."""
        if not self.classes[node_id].output_node:
            return
        ui = self.available[node_id].ui
        if ui:
            self._record_ui(node_id, ui)
        self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id})

    def _inputs_for(self, node_id: str) -> dict[str, Any]:
        cls = self.classes[node_id]
        given = self.prompt[node_id]["inputs"]
        node_links = self.links.get(node_id, {})
        kwargs: dict[str, Any] = {}
        for name, inp in cls.inputs.items():
            if name in node_links:
                src, index = node_links[name]
                kwargs[name] = self.available[src].outputs[index]
            elif name in given:
                kwargs[name] = given[name]
            elif inp.default is not MISSING:
                kwargs[name] = inp.default
        return kwargs

    def _hidden_for(self, node_id: str) -> dict[str, Any]:
        values = {"PROMPT": self.prompt, "EXTRA_PNGINFO": self.extra_data.get("extra_pnginfo"), "UNIQUE_ID": node_id}
        return {key: values[kind] for key, kind in self.classes[node_id].hidden.items()}

    def _execute_node(self, node_id: str, signature: str) -> bool:
        """Run one node; on failure report it (execution_error / _interrupted) and return False."""
        cls = self.classes[node_id]
        kwargs: dict[str, Any] | None = None
        try:
            if self.interrupted():
                raise Interrupted(f"interrupted before node {node_id} ({cls.name})")
            self.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})
            self.progress_state(node_id, "running")
            kwargs = self._inputs_for(node_id)
            ctx = NodeContext(
                node_id=node_id, prompt_id=self.prompt_id, class_type=cls.name, prompt=self.prompt,
                extra_data=self.extra_data, services=self.services,
                progress_sink=lambda value, max_value, preview: self._on_progress(node_id, value, max_value, preview),
                interrupt_check=self.interrupted,
            )
            node_ctx = self.context_factory(ctx) if self.context_factory is not None else None
            raw = cls().execute(node_ctx if node_ctx is not None else ctx, **kwargs, **self._hidden_for(node_id))
            entry = normalise_result(cls, raw)
        except Interrupted:
            self._fail_interrupted(node_id)
            return False
        except Exception as ex:
            self._fail(node_id, ex, kwargs)
            return False
        self.available[node_id] = entry
        self.cache.put(signature, entry)
        self.result.executed.append(node_id)
        self.progress_state(node_id, "finished", 1, 1)
        if entry.ui:
            self._record_ui(node_id, entry.ui)
            self.emit("executed", {"node": node_id, "display_node": node_id, "output": entry.ui,
                                   "prompt_id": self.prompt_id})
        return True

    def _on_progress(self, node_id: str, value: float, max_value: float, preview: Any) -> None:
        self.emit("progress", {"value": value, "max": max_value, "prompt_id": self.prompt_id, "node": node_id})
        self.progress_state(node_id, "running", value, max_value)
        if preview is not None:  # not a JSON event: the server encodes it into a binary preview frame
            self.emit("preview", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id,
                                  "image": preview})

    def _finish_failed(self) -> None:
        self.result.node_outputs = {n: e.outputs for n, e in self.available.items()}

    def _fail_interrupted(self, node_id: str) -> None:
        payload = {"prompt_id": self.prompt_id, "node_id": node_id, "node_type": self.classes[node_id].name,
                   "executed": list(self.result.executed)}
        self.result.status = "interrupted"
        self._finish_failed()
        self.result.error = self.message("execution_interrupted", payload)

    def _fail(self, node_id: str, ex: Exception, kwargs: dict[str, Any] | None) -> None:
        log.error("node %s (%s) failed", node_id, self.classes[node_id].name, exc_info=ex)
        message = str(ex)
        if type(ex).__name__ == "OutOfMemoryError":
            message = f"{message}\n{OOM_TIPS}"
        payload = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.classes[node_id].name,
            "executed": list(self.result.executed),
            "exception_message": message,
            "exception_type": full_type_name(type(ex)),
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {k: [format_value(v)] for k, v in (kwargs or {}).items()},
            "current_outputs": list(self.available),
        }
        self.result.status = "error"
        self._finish_failed()
        self.progress_state(node_id, "error")
        self.result.error = self.message("execution_error", payload)
