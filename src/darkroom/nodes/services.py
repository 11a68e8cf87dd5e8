"""What the nodes need from the outside (engine, input/output/temp folders) and a runner that wires it up.

Nodes reach their services through the context: `ctx.engine` (a `darkroom.engine.Engine`: model registry, loaded
checkpoint cache, LoRA patchers, embeddings), `ctx.input_dir`, `ctx.output_dir`, `ctx.temp_dir` and `ctx.previews`
(send latent previews with progress). `run_workflow` builds those services and runs one API-format prompt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..graph import ExecutionResult, GraphExecutor

#: File suffixes LoadImage lists from the input folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class MissingServiceError(RuntimeError):
    """A node needs a service (engine, folder) the workflow was run without."""


def service(ctx: Any, name: str) -> Any:
    """`ctx.<name>`, or a clear error saying how to provide it."""
    services = getattr(ctx, "services", {}) or {}
    if name not in services:
        raise MissingServiceError(
            f"node {getattr(ctx, 'class_type', '?')} needs the {name!r} service; run workflows with "
            f"darkroom.nodes.run_workflow(...) or pass services={{'{name}': ...}} to GraphExecutor.execute")
    return services[name]


def folder(ctx: Any, name: str) -> Path:
    """A folder service (`input_dir`, `output_dir`, `temp_dir`) as a Path."""
    return Path(service(ctx, name))


def list_input_images(input_dir: Path | str | None) -> list[str]:
    """Image files under the input folder as sorted relative POSIX paths (subfolders included, hidden skipped)."""
    if input_dir is None:
        return []
    root = Path(input_dir)
    if not root.is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if f.startswith(".") or not f.lower().endswith(IMAGE_SUFFIXES):
                continue
            found.append((rel / f).as_posix())
    return sorted(found)


@dataclass(frozen=True)
class FileChoices:
    """A combo's choices that list files: model files of a kind from a model registry, or input images.

    Node classes declare an unbound `FileChoices(kind)` (empty list); `default_registry(models=…, input_dir=…)` binds
    copies to the real sources, so object_info and validation see the files present right now.
    """

    kind: str  # "checkpoints" | "loras" | "vae" | "input"
    models: Any = None  # a darkroom.models.registry.ModelRegistry (anything with list(kind) or names(kind))
    input_dir: Path | None = None

    def __call__(self) -> list[str]:
        if self.kind == "input":
            return list_input_images(self.input_dir)
        if self.models is None:
            return []
        lister = getattr(self.models, "list", None) or self.models.names
        return [str(n) for n in lister(self.kind)]

    def bound(self, models: Any, input_dir: Path | None) -> FileChoices:
        """A copy listing from these sources."""
        return FileChoices(self.kind, models, None if input_dir is None else Path(input_dir))


def resolve_input_file(input_dir: Path | str, name: str) -> Path:
    """The path of an input-folder file named as LoadImage names it ('x.png', 'sub/x.png', 'x.png [input]').

    Refuses names that leave the input folder (absolute paths, '..').
    """
    clean = name.strip()
    if clean.endswith("]") and " [" in clean:  # ComfyUI's annotated names: "file.png [input]"
        clean, _, tag = clean.rpartition(" [")
        if tag[:-1] not in ("input", "output", "temp"):
            clean = name.strip()
    root = Path(input_dir).resolve()
    path = (root / clean).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise ValueError(f"image name {name!r} points outside the input folder")
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {name!r} (looked in {root})")
    return path


def make_services(*, engine: Any, input_dir: Path | str, output_dir: Path | str, temp_dir: Path | str,
                  previews: bool = True, **extra: Any) -> dict[str, Any]:
    """The services mapping nodes expect (`ctx.engine`, `ctx.input_dir` …); folders are created if missing."""
    dirs = {"input_dir": Path(input_dir), "output_dir": Path(output_dir), "temp_dir": Path(temp_dir)}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    return {"engine": engine, **dirs, "previews": bool(previews), **extra}


def run_workflow(
    prompt: Mapping[str, Any],
    *,
    engine: Any,
    input_dir: Path | str,
    output_dir: Path | str,
    temp_dir: Path | str,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    interrupt: Any = None,
    executor: GraphExecutor | None = None,
    extra_data: Mapping[str, Any] | None = None,
    prompt_id: str | None = None,
    outputs_to_execute: Iterable[str] | None = None,
    previews: bool = True,
) -> ExecutionResult:
    """Validate and run an API-format workflow against an engine; returns the executor's `ExecutionResult`.

    Without `executor` a one-off executor over `default_registry` (bound to the engine's model registry and the
    input folder) is used, so nothing is cached between calls: pass a long-lived `GraphExecutor` to get ComfyUI's
    caching (a re-run with a new seed reuses loaders and text encoders). `extra_data` carries `extra_pnginfo`
    (the UI workflow SaveImage embeds). Raises `darkroom.graph.PromptValidationError` when nothing can run.
    """
    if executor is None:
        executor = default_executor(engine, input_dir=input_dir)
    services = make_services(engine=engine, input_dir=input_dir, output_dir=output_dir, temp_dir=temp_dir,
                             previews=previews)
    return executor.execute(prompt, prompt_id=prompt_id, on_event=on_event, services=services,
                            interrupt=interrupt, extra_data=extra_data, outputs_to_execute=outputs_to_execute)


def default_executor(engine: Any, *, input_dir: Path | str | None = None, cache_size: int = 64) -> GraphExecutor:
    """A GraphExecutor over every darkroom node, with choices bound to the engine's models and the input folder."""
    import torch

    from . import default_registry

    registry = default_registry(models=getattr(engine, "registry", None), input_dir=input_dir)
    return GraphExecutor(registry, cache_size, execution_scope=torch.no_grad)
