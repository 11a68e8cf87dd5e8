"""Write a trained default model as one .safetensors file in the SD1.x LDM/A1111 layout (configs in the metadata).

  .venv/bin/python training/export_default_model.py --work /tmp/dr-train --step step_04000 \
      --out src/darkroom/default_model/darkroom-shapes-v3.safetensors

The file goes through darkroom's own writer (`darkroom.models.convert.save_single_file`), which stores under the
`darkroom.config` metadata key every config field that the key shapes and the SD1.5 template would not reproduce,
so `darkroom.models.loader.load_checkpoint` rebuilds exactly these modules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def export(work: Path, step: str, out: Path, *, dtype: torch.dtype = torch.float16, info: dict | None = None) -> Path:
    """Load the EMA components of `work/step` (+ `work/vae`) and save them as one single-file checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from darkroom.models.convert import save_single_file
    from darkroom.models.family import Family, ModelKind

    unet = UNet2DConditionModel.from_pretrained(work / step / "unet")
    te = CLIPTextModel.from_pretrained(work / step / "text_encoder")
    vae = AutoencoderKL.from_pretrained(work / ("vae_ft" if (work / "vae_ft").is_dir() else "vae"))
    meta = {
        "modelspec.title": out.stem.replace("-", " "),  # darkroom-shapes-v3 → "darkroom shapes v3"
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.description": "darkroom's built-in demo model: coloured shapes at 64x64 (docs/default-model.md)",
        "modelspec.resolution": "64x64",
        "modelspec.prediction_type": "epsilon",
    }
    if info:
        meta["darkroom.training"] = json.dumps(info, sort_keys=True)
    return save_single_file({"unet": unet, "vae": vae, "text_encoder": te}, out, dtype=dtype, metadata=meta,
                            kind=ModelKind(Family.SD1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--step", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    args = ap.parse_args()
    info = {"step": args.step}
    args_file = args.work / "args.json"
    if args_file.is_file():
        info["args"] = json.loads(args_file.read_text())
        info["args"].pop("work", None)
    path = export(args.work, args.step, args.out, dtype=torch.float32 if args.fp32 else torch.float16, info=info)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
