"""The bodies of the `darkroom` subcommands (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def is_user_error(e: BaseException) -> bool:
    """Errors caused by the user's input or files, reported as a message with exit code 2 (never a traceback)."""
    from .engine import Interrupted, RequestError
    from .models.family import UnsupportedModelError

    user_types: list[type] = [RequestError, UnsupportedModelError, Interrupted, FileNotFoundError, FileExistsError]
    from .metadata.infotext import InfotextError
    from .metadata.png import ImageMetadataError, UnsafeOutputPathError

    user_types += [InfotextError, ImageMetadataError, UnsafeOutputPathError]
    from .conditioning.embeddings import EmbeddingError
    from .conditioning.prompt_parser import PromptSyntaxError
    from .models.lora import LoraError

    user_types += [EmbeddingError, PromptSyntaxError, LoraError]
    try:
        from .models import errors as model_errors

        user_types += [getattr(model_errors, n) for n in dir(model_errors)
                       if isinstance(getattr(model_errors, n), type)
                       and issubclass(getattr(model_errors, n), Exception)]
    except ImportError:
        pass
    from .cli import CLIError

    user_types.append(CLIError)
    if isinstance(e, tuple(user_types)):
        return True
    # pydantic's ValidationError and the settings loader's ValueError are input errors too.
    return type(e).__name__ == "ValidationError" or (isinstance(e, ValueError) and "config file" in str(e))


def _resolve_sampler(sampler: str, scheduler: str | None) -> tuple[str, str]:
    """Accept ComfyUI names or A1111 labels ("DPM++ 2M Karras", "Euler a") for sampler and schedule."""
    from .cli import CLIError
    from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES, parse_a1111_sampler

    if sampler in SAMPLER_NAMES and (scheduler is None or scheduler in SCHEDULER_NAMES):
        return sampler, scheduler or "normal"
    try:
        s, sch = parse_a1111_sampler(sampler, scheduler)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return s, sch


def _output_paths(args: argparse.Namespace, out_dir: Path, seeds: list[int]) -> list[Path]:
    """Where each image goes; never an existing file."""
    from .cli import CLIError
    from .metadata.png import next_free_path

    if args.output is None or args.output.is_dir() or str(args.output).endswith(("/", "\\")):
        folder = args.output if args.output is not None else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        return [next_free_path(folder, seed=s) for s in seeds]
    out = args.output
    if out.suffix.lower() != ".png":
        raise CLIError(f"output file must end in .png: {out}")
    paths = [out] if len(seeds) == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
                                             for i in range(len(seeds))]
    for p in paths:
        if p.exists():
            raise CLIError(f"{p} already exists; darkroom never overwrites a file (choose another -o)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return paths


def cmd_generate(args: argparse.Namespace, settings_fn) -> int:
    from .cli import CLIError
    from .engine import Engine, GenerationParams, HiresParams
    from .metadata.png import write_png

    settings = settings_fn(args)
    sampler, scheduler = _resolve_sampler(args.sampler, args.scheduler)
    if args.denoise is not None and args.init_image is None:
        raise CLIError("--denoise needs --init-image (img2img)")
    if args.init_image is not None and not args.init_image.is_file():
        raise CLIError(f"init image not found: {args.init_image}")
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise CLIError(f"{args.output} already exists; darkroom never overwrites a file (choose another -o)")
    engine = Engine(settings)
    width, height = args.width, args.height
    if width is None or height is None:
        nw, nh = engine.native_size(args.model)
        width, height = width or nw, height or nh
    params = GenerationParams(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, vae=args.vae, sampler=sampler,
        scheduler=scheduler, steps=args.steps, cfg=args.cfg, seed=args.seed, width=width, height=height,
        batch_size=args.batch, clip_skip=args.clip_skip, init_image=args.init_image,
        denoise=args.denoise if args.denoise is not None else (0.75 if args.init_image else 1.0),
        hires=HiresParams(scale=args.hires_scale, steps=args.hires_steps, denoise=args.hires_denoise,
                          upscaler=args.hires_upscaler) if args.hires_scale else None,
        refiner=args.refiner, refiner_switch=args.refiner_switch, prompt_style=args.prompt_style,
        tiling=getattr(args, "tiling", False),
    )
    engine.validate(params)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=1, unit="step", file=sys.stderr, dynamic_ncols=True, desc="generating")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        result = engine.generate(params, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    paths = _output_paths(args, settings.resolved_output_dir, result.seeds)
    auto_named = args.output is None or args.output.is_dir()
    for image, info, workflow, path in zip(result.images, result.infotexts, result.workflows, paths):
        written = write_png(image, path, parameters=info, prompt=workflow, on_exists="next" if auto_named else "error")
        print(written)
    return 0


def cmd_models(args: argparse.Namespace, settings_fn) -> int:
    from .cli import CLIError
    from .models.registry import ModelRegistry
    from .settings import MODEL_FOLDERS

    settings = settings_fn(args)
    registry = ModelRegistry(settings)
    kinds = list(MODEL_FOLDERS) if args.kind == "all" else [args.kind]
    for kind in kinds:
        if kind not in MODEL_FOLDERS:
            raise CLIError(f"unknown model kind {kind!r}; choose one of: all, {', '.join(MODEL_FOLDERS)}")
    for kind in kinds:
        entries = registry.entries(kind)
        if len(kinds) > 1:
            print(f"[{kind}]")
        if not entries:
            where = ", ".join(str(d) for d in settings.model_dirs(kind)) or str(settings.models_dir / kind)
            print(f"  (none in {where})")
            continue
        for path in entries.values():
            info = registry.describe(path, kind, allow_unsafe_pickle=settings.allow_unsafe_pickle)
            digest = "-" if args.no_hash else (info.short_hash or "-")
            builtin = "  (built-in default)" if info.builtin else ""
            print(f"{info.name}\t{info.kind}\t{digest}\t{_size(info.size)}{builtin}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_info(args: argparse.Namespace, _settings_fn) -> int:
    from .cli import CLIError
    from .metadata.png import format_info, read_image_metadata

    status = 0
    for path in args.images:
        if not path.is_file():
            raise CLIError(f"image not found: {path}")
        meta = read_image_metadata(path)
        if len(args.images) > 1:
            print(f"== {path}")
        print(format_info(meta))
    return status


def cmd_serve(args: argparse.Namespace, settings_fn) -> int:
    """Run the local generation server until interrupted."""
    import os

    from .cli import CLIError
    from .server.config import Limits, ServerConfig, ServerConfigError

    settings = settings_fn(args)
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    output_dir = settings.output_dir  # None: <data_dir>/output
    host = args.listen or args.host or "127.0.0.1"
    config = ServerConfig(host=host, port=args.port, token=args.token or os.environ.get("DARKROOM_TOKEN") or None,
                          data_dir=Path(settings.data_dir), output_dir=output_dir,
                          cors_origins=tuple(o for o in (args.enable_cors_header or ()) if o),
                          preview_method=args.preview_method,
                          limits=Limits(max_upload_bytes=int(args.max_upload_size * 1024 * 1024)))
    try:
        config.check()
    except ServerConfigError as e:
        raise CLIError(str(e)) from None
    from .server.app import serve

    print(f"darkroom: studio on http://{host}:{args.port}/ , node editor on http://{host}:{args.port}/graph/ "
          f"(data in {config.data_dir})", file=sys.stderr)
    serve(settings, config)
    return 0
