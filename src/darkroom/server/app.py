"""The server application: ComfyUI's API (plain and under /api), its websocket, A1111's /sdapi/v1, one worker.

    app = create_app(settings, ServerConfig(data_dir=Path("data")))
    serve(settings, ServerConfig(port=8188))  # blocks; what `darkroom serve` runs

Start-up opens the durable queue (jobs left running by a dead process are marked failed, pending ones stay),
empties temp/ and starts the worker; shutdown interrupts the running job and keeps pending ones for next time.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .config import ServerConfig
from .events import EventHub
from .files import FileRequestError, Folders
from .queue import JobQueue
from .sdapi_options import OptionsStore, StyleBook
from .security import SecurityMiddleware
from .state import ServerState
from .store import JobStore
from .worker import Worker

log = logging.getLogger(__name__)


def build_state(settings: Any, config: ServerConfig, *, engine: Any = None) -> ServerState:
    """Open (or create) everything a server needs under config.data_dir; nothing runs yet."""
    from ..nodes import default_executor
    from .sdapi_results import assemble

    config.check()
    folders = Folders(config.input_dir, config.resolved_output_dir, config.temp_dir).create()
    if engine is None:
        from ..engine import Engine

        engine = Engine(settings)
    executor = default_executor(engine, input_dir=folders.input)
    store = JobStore(config.database)
    recovered = store.recover()
    store.trim_history(config.limits.max_history)
    queue = JobQueue(store, max_history=config.limits.max_history)
    hub = EventHub()
    worker = Worker(queue, hub, engine, executor, folders, preview_method=config.preview_method,
                    preview_size=config.preview_size, sdapi_assemble=assemble)
    queue.on_change(lambda: hub.send("status", {"status": {"exec_info": {"queue_remaining": queue.remaining()}}}))
    if recovered:
        log.warning("marked %d job(s) as failed: they were running when darkroom stopped", len(recovered))
    return ServerState(config=config, settings=settings, engine=engine, executor=executor, store=store, queue=queue,
                       hub=hub, worker=worker, folders=folders,
                       options=OptionsStore(config.data_dir / "sdapi-options.json", engine.registry),
                       styles=StyleBook(config.data_dir / "styles.csv"), recovered=recovered)


def create_app(settings: Any, config: ServerConfig, *, engine: Any = None) -> FastAPI:
    """The ASGI application over a fresh ServerState (engine: reuse one, e.g. in tests)."""
    from .. import __version__
    from . import routes_comfy, routes_sdapi, ws

    state = build_state(settings, config, engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state.hub.bind_loop(asyncio.get_running_loop())
        if config.worker:
            state.worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.worker.stop)
            state.hub.bind_loop(None)
            state.store.close()

    app = FastAPI(title="darkroom", version=__version__, lifespan=lifespan,
                  description="Local generation server: ComfyUI's HTTP + websocket protocol (every route also "
                              "under /api) and A1111's /sdapi/v1, over one durable queue.")
    app.state.darkroom = state

    @app.exception_handler(FileRequestError)
    async def _file_error(request: Request, ex: FileRequestError) -> JSONResponse:
        return JSONResponse({"error": ex.message}, status_code=ex.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, ex: RequestValidationError) -> JSONResponse:
        errors = ex.errors()
        fields = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
        detail = "; ".join(f"{f or 'body'}: {e.get('msg')}" for f, e in zip(fields, errors))
        return JSONResponse({"error": "RequestValidationError", "detail": detail, "body": "",
                             "errors": [{"field": f, "message": e.get("msg"), "type": e.get("type")}
                                        for f, e in zip(fields, errors)]}, status_code=400)

    guarded = {401: {"description": "access token missing or wrong (when the server has one)"},
               403: {"description": "cross-origin request, or a Host that is not this computer"},
               413: {"description": "request body over the size limit"}}
    app.include_router(routes_comfy.router, responses=guarded)
    app.include_router(routes_comfy.router, prefix="/api", responses=guarded)
    app.include_router(ws.router)
    app.include_router(ws.router, prefix="/api")
    app.include_router(routes_sdapi.router, responses=guarded)
    from . import routes_controlnet  # issue #7: A1111 ControlNet extension routes (/controlnet/…)

    app.include_router(routes_controlnet.router, responses=guarded)  # issue #7
    from . import routes_frontend  # issue #6: studio page at /, node editor at /graph/

    routes_frontend.install(app)  # issue #6
    app.add_middleware(SecurityMiddleware, config=config)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description, with request-validation failures documented as the 400 this server answers."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                responses = op.get("responses", {})
                if "422" in responses:
                    invalid = responses.pop("422")
                    responses.setdefault("400", {**invalid, "description": "Invalid request (the field is named)"})
        app.openapi_schema = schema
    return app.openapi_schema


def serve(settings: Any, config: ServerConfig, *, log_level: str = "info") -> None:
    """Run the server until interrupted (what `darkroom serve` does)."""
    import uvicorn

    config.check()
    app = create_app(settings, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, ws="websockets-sansio",
                timeout_graceful_shutdown=5)
