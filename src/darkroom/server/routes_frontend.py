"""The two faces in the browser: the studio page at `/` and ComfyUI's node editor at `/graph/`.

The node editor is the official frontend from the `comfyui-frontend-package` wheel (pinned to the version whose
server interface `routes_comfy` speaks). It computes its API base from its own path, so under `/graph/` it calls
`/graph/api/...`, `/graph/ws` and `/graph/internal/...`: `install` mounts the ComfyUI routers there too, next to
the routes the frontend needs beyond the generation API — users, settings, userdata (saved workflows, stored under
`<data_dir>/user/default/`), i18n, templates, model folders, logs — served plain, under `/api` and under
`/graph/api` as ComfyUI does. Features darkroom does not offer answer empty (templates, i18n, custom nodes).

    routes_frontend.install(app)   # in create_app, after the ComfyUI routers
"""

from __future__ import annotations

import collections
import json
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from ..settings import MODEL_FOLDERS
from .frontend_userdata import UserData, UserDataError, file_info
from .state import state_of

#: The frontend release routes_comfy's protocol matches (ComfyUI 0.3.64's requirements.txt).
FRONTEND_VERSION = "1.27.10"
GRAPH_PREFIX = "/graph"
WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
#: The editor-side bridge that loads workflows sent from the studio page ("Open as workflow").
BRIDGE_EXTENSION = "/extensions/darkroom/studio-bridge.js"
_NO_CACHE = {"Cache-Control": "no-cache"}


def frontend_root() -> Path | None:
    """The static folder of the installed frontend package (None when it is not installed)."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str | None:
    """The installed frontend package's version."""
    try:
        from importlib.metadata import version

        return version("comfyui-frontend-package")
    except Exception:
        return None


# -- state ---------------------------------------------------------------------------------------------------------

class LogBuffer(logging.Handler):
    """The last log records, for the editor's log panel (`/internal/logs`)."""

    def __init__(self, size: int = 1000) -> None:
        super().__init__(logging.INFO)
        self.entries: collections.deque = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            self.entries.append({"t": f"{stamp}.{int(record.msecs):03d}", "m": self.format(record) + "\n"})
        except Exception:  # logging must never fail the caller
            pass


_LOGS: LogBuffer | None = None


def log_buffer() -> LogBuffer:
    """The process-wide log buffer, attached to darkroom's and uvicorn's loggers on first use."""
    global _LOGS
    if _LOGS is None:
        _LOGS = LogBuffer()
        for name in ("darkroom", "uvicorn.error"):
            logging.getLogger(name).addHandler(_LOGS)
    return _LOGS


@dataclass
class FrontendState:
    """What the frontend routes own: the user folder and the log buffer."""

    userdata: UserData
    logs: LogBuffer


def frontend_state(request: Request) -> FrontendState:
    return request.app.state.darkroom_frontend


def _error(ex: UserDataError) -> JSONResponse:
    return JSONResponse({"error": ex.message}, status_code=ex.status)


def _flag(value: str | None) -> bool:
    return (value or "").lower() == "true"


# -- files ---------------------------------------------------------------------------------------------------------

def static_file(root: Path, relative: str) -> Response:
    """A file under `root` (404 for anything missing, hidden or outside it)."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if any(p in ("..", ".") or p.startswith(".") for p in parts) or "\0" in relative:
        return JSONResponse({"error": "not found"}, status_code=404)
    path = root.joinpath(*parts) if parts else root
    if path.is_dir():
        path = path / "index.html"
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return JSONResponse({"error": "not found"}, status_code=404)
    if not path.is_file():
        return JSONResponse({"error": f"not found: {relative}"}, status_code=404)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix in (".js", ".mjs"):
        media = "text/javascript"
    headers = _NO_CACHE if path.suffix in (".html", ".js", ".mjs", ".css", ".json") else {}
    return FileResponse(path, media_type=media, headers=headers)


# -- the frontend's API beyond generation (plain, /api and /graph/api) ------------------------------------------------

api = APIRouter(tags=["frontend"])


@api.get("/users", summary="Single-user mode: settings live on the server")
def get_users() -> dict[str, Any]:
    return {"storage": "server", "migrated": True}


@api.post("/users", summary="Create a user (not offered: darkroom has one user)")
def post_users() -> JSONResponse:
    return JSONResponse({"error": "darkroom has a single user; multi-user mode is not offered"}, status_code=400)


@api.get("/settings", summary="All settings of the user")
def get_settings(request: Request) -> dict[str, Any]:
    return frontend_state(request).userdata.settings()


@api.get("/settings/{setting_id}", summary="One setting (null when unset)")
def get_setting(request: Request, setting_id: str) -> Any:
    return JSONResponse(frontend_state(request).userdata.settings().get(setting_id))


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise UserDataError(400, "the body is not valid JSON") from None


@api.post("/settings", summary="Merge settings")
async def post_settings(request: Request) -> Response:
    try:
        data = await _json(request)
    except UserDataError as ex:
        return _error(ex)
    if not isinstance(data, dict):
        return JSONResponse({"error": "settings must be a JSON object"}, status_code=400)
    frontend_state(request).userdata.update_settings(data)
    return Response(status_code=200)


@api.post("/settings/{setting_id}", summary="Set one setting (the body is its JSON value)")
async def post_setting(request: Request, setting_id: str) -> Response:
    try:
        value = await _json(request)
    except UserDataError as ex:
        return _error(ex)
    frontend_state(request).userdata.update_settings({setting_id: value})
    return Response(status_code=200)


@api.get("/userdata", summary="Files under a user folder (saved workflows …)")
def list_userdata(request: Request, dir: str = Query(""), recurse: str | None = None,  # noqa: A002
                  full_info: str | None = None, split: str | None = None) -> Any:
    try:
        return frontend_state(request).userdata.list(dir, recurse=_flag(recurse), full_info=_flag(full_info),
                                                     split=_flag(split))
    except UserDataError as ex:
        return _error(ex)


@api.get("/v2/userdata", summary="Entries of one user folder")
def list_userdata_v2(request: Request, path: str = Query("")) -> Any:
    try:
        return frontend_state(request).userdata.list_v2(path)
    except UserDataError as ex:
        return _error(ex)


@api.post("/userdata/{source:path}/move/{dest:path}", summary="Rename a user file")
def move_userdata(request: Request, source: str, dest: str, overwrite: str | None = None,
                  full_info: str | None = None) -> Any:
    ud = frontend_state(request).userdata
    try:
        path = ud.move(source, dest, overwrite=overwrite is None or _flag(overwrite))
    except UserDataError as ex:
        return _error(ex)
    return file_info(path, ud.user_dir) if _flag(full_info) else ud.relative(path)


@api.get("/userdata/{file:path}", summary="Read a user file")
def get_userdata(request: Request, file: str) -> Any:
    try:
        path = frontend_state(request).userdata.read(file)
    except UserDataError as ex:
        return _error(ex)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers=_NO_CACHE)


@api.post("/userdata/{file:path}", summary="Write a user file (409 when it exists and overwrite=false)")
async def post_userdata(request: Request, file: str, overwrite: str | None = None,
                        full_info: str | None = None) -> Any:
    ud = frontend_state(request).userdata
    data = await request.body()
    try:
        path = ud.write(file, data, overwrite=overwrite is None or _flag(overwrite))
    except UserDataError as ex:
        return _error(ex)
    return file_info(path, ud.user_dir) if _flag(full_info) else ud.relative(path)


@api.delete("/userdata/{file:path}", summary="Delete a user file")
def delete_userdata(request: Request, file: str) -> Response:
    try:
        frontend_state(request).userdata.delete(file)
    except UserDataError as ex:
        return _error(ex)
    return Response(status_code=204)


@api.get("/i18n", summary="Translations from custom nodes (none)")
def i18n() -> dict[str, Any]:
    return {}


@api.get("/workflow_templates", summary="Example workflows of custom nodes (none)")
def workflow_templates() -> dict[str, Any]:
    return {}


@api.get("/global_subgraphs", summary="Shared subgraph blueprints (none)")
def global_subgraphs() -> dict[str, Any]:
    return {}


def _model_roots(request: Request, folder: str) -> list[Path]:
    return list(state_of(request).settings.model_dirs(folder))


@api.get("/experiment/models", summary="Model folders and where they are")
def experiment_models(request: Request) -> list[dict[str, Any]]:
    return [{"name": kind, "folders": [str(p) for p in _model_roots(request, kind)]} for kind in MODEL_FOLDERS]


@api.get("/experiment/models/{folder}", summary="Model files of one folder with sizes and dates")
def experiment_models_folder(request: Request, folder: str) -> Any:
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    roots = _model_roots(request, folder)
    out = []
    for name, path in state_of(request).engine.registry.entries(folder).items():
        index = next((i for i, r in enumerate(roots) if path.is_relative_to(r)), 0)
        try:
            st = path.stat()
        except OSError:
            continue
        out.append({"name": name, "pathIndex": index, "modified": st.st_mtime, "created": st.st_ctime,
                    "size": st.st_size if path.is_file() else 0})
    return out


@api.get("/experiment/models/preview/{folder}/{path_index}/{filename:path}",
         summary="A model's preview picture (a .png/.webp/.jpg next to it)")
def experiment_model_preview(request: Request, folder: str, path_index: int, filename: str) -> Response:
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    entries = state_of(request).engine.registry.entries(folder)
    path = entries.get(filename)
    if path is not None:
        for ext in (".preview.png", ".png", ".webp", ".jpg", ".jpeg"):
            candidate = path.with_name(path.name.rsplit(".", 1)[0] + ext)
            if candidate.is_file():
                return FileResponse(candidate, media_type=mimetypes.guess_type(candidate.name)[0])
    return JSONResponse({"error": "no preview"}, status_code=404)


# -- /internal (frontend only) -------------------------------------------------------------------------------------

internal = APIRouter(tags=["frontend"])


@internal.get("/logs", summary="Recent server log as one string")
def internal_logs(request: Request) -> str:
    return "".join(f"{e['t']} - {e['m']}" for e in frontend_state(request).logs.entries)


@internal.get("/logs/raw", summary="Recent server log entries")
def internal_logs_raw(request: Request) -> dict[str, Any]:
    return {"entries": list(frontend_state(request).logs.entries), "size": {"cols": 80, "rows": 24}}


@internal.patch("/logs/subscribe", summary="Accepted; live log streaming over the websocket is not offered")
def internal_logs_subscribe() -> Response:
    return Response(status_code=200)


@internal.get("/folder_paths", summary="Model folder kinds and their paths")
def internal_folder_paths(request: Request) -> dict[str, list[str]]:
    return {kind: [str(p) for p in _model_roots(request, kind)] for kind in MODEL_FOLDERS}


@internal.get("/files/{directory_type}", summary="File names in input/, output/ or temp/, newest first")
def internal_files(request: Request, directory_type: str) -> Any:
    if directory_type not in ("input", "output", "temp"):
        return JSONResponse({"error": "unknown directory type"}, status_code=400)
    folder = state_of(request).folders.of(directory_type)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
    files.sort(key=lambda p: -p.stat().st_mtime)
    return [p.name for p in files]


# -- the node editor's files ------------------------------------------------------------------------------------------

graph = APIRouter(tags=["frontend"])


@graph.get(GRAPH_PREFIX, include_in_schema=False)
def graph_redirect(request: Request) -> RedirectResponse:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{GRAPH_PREFIX}/{query}", status_code=307)


def graph_extensions() -> list[str]:
    """The editor's extension list: darkroom's bridge (registered ahead of ComfyUI's empty `/extensions`)."""
    return [BRIDGE_EXTENSION]


@graph.get(GRAPH_PREFIX + "/extensions/darkroom/{name}", include_in_schema=False)
def graph_bridge(name: str) -> Response:
    return static_file(WEB_ROOT / "graph", name)


@graph.get("/assets/images/{path:path}", include_in_schema=False)
def graph_root_images(path: str) -> Response:
    """The editor's progress favicons, which it asks for at the site root."""
    root = frontend_root()
    if root is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return static_file(root / "assets" / "images", path)


@graph.get(GRAPH_PREFIX + "/templates/index.json", summary="Workflow templates (none are bundled)")
def graph_templates_index() -> JSONResponse:
    return JSONResponse([])


@graph.get(GRAPH_PREFIX + "/{path:path}", include_in_schema=False)
def graph_static(path: str) -> Response:
    root = frontend_root()
    if root is None:
        return JSONResponse({"error": "the node editor is not installed: pip install "
                                      f"comfyui-frontend-package=={FRONTEND_VERSION}"}, status_code=503)
    if path.startswith(("api/", "internal/", "templates/")):  # API paths that nothing above answered
        return JSONResponse({"error": f"not found: /{path}"}, status_code=404)
    return static_file(root, path)


# -- the studio page's files ------------------------------------------------------------------------------------------

studio = APIRouter(tags=["studio"])


@studio.get("/", include_in_schema=False)
def studio_index() -> Response:
    return static_file(WEB_ROOT, "index.html")


@studio.get("/web/{path:path}", include_in_schema=False)
def studio_static(path: str) -> Response:
    return static_file(WEB_ROOT, path)


# -- wiring -----------------------------------------------------------------------------------------------------------

def install(app: FastAPI) -> None:
    """Add the studio, the node editor and the routes they need to a darkroom app (from create_app)."""
    from . import routes_comfy, routes_studio, ws

    st = app.state.darkroom
    userdata = UserData(Path(st.config.data_dir) / "user")
    (userdata.user_dir / "workflows").mkdir(parents=True, exist_ok=True)  # where the editor saves workflows
    app.state.darkroom_frontend = FrontendState(userdata=userdata, logs=log_buffer())
    app.include_router(routes_studio.router)
    # before the ComfyUI routes under /graph/api, whose /extensions lists nothing
    app.add_api_route(GRAPH_PREFIX + "/api/extensions", graph_extensions, methods=["GET"],
                      summary="Extension scripts the editor loads (darkroom's bridge)")
    for prefix in ("", "/api", GRAPH_PREFIX + "/api"):  # the /graph copies stay out of the API docs
        app.include_router(api, prefix=prefix, include_in_schema=not prefix.startswith(GRAPH_PREFIX))
    for prefix in ("/internal", GRAPH_PREFIX + "/internal"):
        app.include_router(internal, prefix=prefix, include_in_schema=not prefix.startswith(GRAPH_PREFIX))
    app.include_router(routes_comfy.router, prefix=GRAPH_PREFIX + "/api", include_in_schema=False)
    app.include_router(ws.router, prefix=GRAPH_PREFIX)
    app.include_router(graph)
    app.include_router(studio)
