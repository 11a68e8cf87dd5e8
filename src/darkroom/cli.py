"""`darkroom` command line: generate, models, info, run. A thin client of the engine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user error: printed as `darkroom: error: …` with exit code 2."""


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and hardware")
    g.add_argument("--models-dir", type=Path, help="models root (default: $DARKROOM_MODELS_DIR or ./models)")
    g.add_argument("--extra-model-path", type=Path, action="append", default=None, metavar="DIR",
                   help="another models root to search, e.g. an A1111 or ComfyUI install's models/ (repeatable)")
    g.add_argument("--output-dir", type=Path, help="output folder (default: $DARKROOM_OUTPUT_DIR or ./output)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="compute device (default: auto)")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="weight dtype (default: auto)")
    g.add_argument("--config", type=Path, help="JSON settings file (default: $DARKROOM_CONFIG)")
    g.add_argument("--unsafe-load-pickle", action="store_true", default=None, dest="allow_unsafe_pickle",
                   help="allow .ckpt/.pt/.bin model files (loaded with torch.load(weights_only=True))")


def _settings(args: argparse.Namespace):
    from .settings import load_settings

    return load_settings(
        args.config,
        models_dir=args.models_dir,
        output_dir=args.output_dir,
        device=args.device,
        dtype=args.dtype,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
        extra_model_paths=args.extra_model_path,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom", description="A local, private, offline studio for "
                                     "generative images.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate images from a prompt", description="Generate images from a "
                       "prompt (A1111 prompt syntax: (word:1.2), [word], BREAK, <lora:name:0.8>, embeddings).")
    g.add_argument("prompt")
    g.add_argument("-n", "--negative", default="", help="negative prompt")
    g.add_argument("--model", help="checkpoint name under checkpoints/ (with or without extension)")
    g.add_argument("--vae", help="separate VAE file under vae/ (overrides the checkpoint's)")
    g.add_argument("--sampler", default="euler", help="sampler: ComfyUI name (euler, dpmpp_2m, …) or A1111 label "
                   "(\"DPM++ 2M Karras\", \"Euler a\"); default euler")
    g.add_argument("--scheduler", default=None, help="normal, karras, exponential, sgm_uniform, simple, "
                   "ddim_uniform, beta (or an A1111 schedule label); default normal")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (recorded in the image)")
    g.add_argument("--width", type=int, default=None, help="default: the model's native size")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--batch", type=int, default=1, help="images to make; image i uses seed + i")
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument("--init-image", type=Path, help="img2img: start from this image")
    g.add_argument("--denoise", type=float, default=None, help="img2img denoising strength (default 0.75)")
    g.add_argument("--hires-scale", type=float, default=None, help="hires fix: upscale factor for a second pass")
    g.add_argument("--hires-steps", type=int, default=0, help="hires fix steps (0: same as --steps)")
    g.add_argument("--hires-denoise", type=float, default=0.7)
    g.add_argument("--hires-upscaler", default="Latent", help="Latent, Latent (nearest-exact), Latent (bicubic), "
                   "Lanczos, Nearest or an upscale model in upscale_models/ (e.g. 4x-UltraSharp)")
    g.add_argument("--tiling", action="store_true", help="seamless texture: the image wraps at its edges")
    g.add_argument("--refiner", help="SDXL refiner checkpoint to finish the image with")
    g.add_argument("--refiner-switch", type=float, default=0.8, help="fraction of steps before the refiner")
    g.add_argument("--prompt-style", choices=["a1111", "comfy"], default="a1111",
                   help="prompt weighting convention (default a1111)")
    g.add_argument("-o", "--output", type=Path, help="output file (batch: NAME-1.png, NAME-2.png …) or folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(g)

    m = sub.add_parser("models", help="list installed models with family, short hash and size")
    m.add_argument("--kind", default="checkpoints", help="checkpoints, loras, vae, embeddings, … or all")
    m.add_argument("--no-hash", action="store_true", help="skip hashing (fast)")
    _add_common(m)

    i = sub.add_parser("info", help="show the generation parameters stored in images (darkroom, A1111, ComfyUI)")
    i.add_argument("images", nargs="+", type=Path)


    s = sub.add_parser("serve", help="start the local generation server (ComfyUI protocol and A1111 API)",
                       description="Serve ComfyUI's HTTP + websocket API (every route also under /api) and A1111's "
                       "/sdapi/v1 on http://127.0.0.1:8188, over a queue and history that survive restarts. "
                       "Listening on another address needs an access token.")
    s.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    s.add_argument("--listen", nargs="?", const="0.0.0.0", default=None, metavar="IP",
                   help="listen on the network (all interfaces, or IP); requires --token")
    s.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    s.add_argument("--token", default=None, help="access token required on every request (default: "
                   "$DARKROOM_TOKEN); clients send it as 'Authorization: Bearer TOKEN' or a Basic password")
    s.add_argument("--data-dir", type=Path, help="queue, history, input/, output/, temp/ (default: "
                   "$DARKROOM_DATA_DIR or ./data)")
    s.add_argument("--enable-cors-header", nargs="?", const="*", default=None, action="append", metavar="ORIGIN",
                   help="allow web pages from ORIGIN (or any, without a value) to call the API")
    s.add_argument("--preview-method", choices=["none", "latent2rgb"], default="latent2rgb",
                   help="step previews sent over the websocket (default latent2rgb)")
    s.add_argument("--max-upload-size", type=float, default=100, metavar="MB", help="upload limit (default 100)")
    _add_common(s)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        from . import cli_commands

        return getattr(cli_commands, f"cmd_{args.command}")(args, _settings if args.command != "info" else None)
    except KeyboardInterrupt:
        print("darkroom: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — map user errors to a message, re-raise the rest
        from .cli_commands import is_user_error

        if is_user_error(e):
            print(f"darkroom: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
