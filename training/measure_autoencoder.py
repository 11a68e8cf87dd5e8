"""How much of each shape an autoencoder keeps: the analyser's rates on its reconstructions of perfect drawings.

The prompt suites' pictures are drawn exactly (shape in the middle of its grid cell, diameter 18.5 px small / 28.5 px
large), encoded to the posterior mean and decoded; `darkroom.shapes.analyse` then reads them as it reads generated
pictures. On the drawings themselves every rate is 1.00, so what is lost here is lost by the autoencoder — a ceiling
the UNet's pictures are held to only loosely (they are decoded from latents the UNet made, not from encodings).

  HF_HUB_OFFLINE=1 .venv/bin/python training/measure_autoencoder.py /tmp/dr-train/vae [more folders …]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from darkroom.shapes.adherence import prompt_suite, rates, score_image  # noqa: E402
from darkroom.shapes.dataset import IMAGE_SIZE, POSITIONS, render  # noqa: E402

DIAMETERS = {"small": 18.5, "large": 28.5}


def drawings(size: str, n: int = 72) -> tuple[list, np.ndarray]:
    """(specs, (n, 64, 64, 3) uint8) for n single-shape prompts of one size, each shape centred in its cell."""
    specs = prompt_suite(n, sizes=(size,))
    images = []
    for spec in specs:
        col, row = POSITIONS[spec.position]
        centre = (IMAGE_SIZE * (col + 0.5) / 3, IMAGE_SIZE * (row + 0.5) / 3)
        images.append(render(spec.background, [(spec.kind, spec.colour, centre, DIAMETERS[size])]))
    return specs, np.stack(images)


@torch.no_grad()
def reconstruct(vae, images: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 pictures → uint8 pictures."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    return ((rec.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vae", type=Path, nargs="+", help="diffusers AutoencoderKL folders")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    for folder in args.vae:
        vae = AutoencoderKL.from_pretrained(folder).eval()
        parts = []
        for size in DIAMETERS:
            specs, images = drawings(size)
            r = rates([score_image(im, s) for im, s in zip(reconstruct(vae, images), specs)])
            parts.append(f"{size}: kind {r['kind']:.2f} colour {r['colour']:.2f} position {r['position']:.2f}")
        print(f"{folder}: " + " | ".join(parts))


if __name__ == "__main__":
    main()
