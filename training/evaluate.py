"""Measure how well a trained default model follows prompts (independent of the engine: its own Euler sampler).

  .venv/bin/python training/evaluate.py --work /work/dr-train/run1 --step step_03000 --cfg 1 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))

from darkroom.shapes.adherence import prompt_suite, rates, score_image  # noqa: E402
from train_default_model import alphas_cumprod, tokenize  # noqa: E402


def load(work: Path, step: str, vae_dir: Path | None = None):
    """(unet, text_encoder, vae) in eval mode from a training work folder (vae: `vae_dir`, else vae_ft, else vae)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(work / step / "unet").eval()
    te = CLIPTextModel.from_pretrained(work / step / "text_encoder").eval()
    vae_dir = vae_dir or work / ("vae_ft" if (work / "vae_ft").is_dir() else "vae")
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    return unet, te, vae


@torch.no_grad()
def generate(unet, te, vae, prompts: list[str], seeds: list[int], *, cfg: float = 5.0, steps: int = 20) -> list[np.ndarray]:
    """Euler sampling (Karras et al. 2022, Algorithm 2 without churn) over SD's discrete sigmas, uniform timesteps."""
    acp = alphas_cumprod()
    all_sigmas = ((1 - acp) / acp).sqrt()  # (1000,)
    ts = torch.linspace(999, 0, steps).round().long()
    sigmas = torch.cat([all_sigmas[ts], torch.zeros(1)])
    cond = te(tokenize(prompts)).last_hidden_state  # (B, 77, C)
    uncond = te(tokenize([""] * len(prompts))).last_hidden_state
    x = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds]) * sigmas[0]
    for i in range(steps):
        s = sigmas[i]
        c_in = 1 / (s**2 + 1) ** 0.5
        t = ts[i].expand(len(prompts))
        eps = unet(torch.cat([x, x]) * c_in, torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        eu, ec = eps.chunk(2)
        e = eu + cfg * (ec - eu)
        x0 = x - s * e
        d = (x - x0) / s
        x = x + d * (sigmas[i + 1] - s)
    img = vae.decode(x / vae.config.scaling_factor).sample  # (B, 3, 64, 64)
    return [(((im.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()) for im in img]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--step", required=True)
    ap.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", type=Path, default=None)
    ap.add_argument("--vae", type=Path, default=None, help="autoencoder folder (default: the work folder's vae_ft)")
    ap.add_argument("--large", action="store_true", help="the all-large suite (where shape kinds are readable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet, te, vae = load(args.work, args.step, args.vae)
    specs = prompt_suite(24, seed=99, sizes=("large",)) if args.large else prompt_suite(args.n)
    grids = []
    for cfg in args.cfg:
        t0 = time.time()
        scores, images = [], []
        for k in range(args.seeds):
            ims = generate(unet, te, vae, [s.prompt for s in specs], [1000 * k + i for i in range(len(specs))],
                           cfg=cfg, steps=args.steps)
            images += ims
            scores += [score_image(im, s) for im, s in zip(ims, specs)]
        r = rates(scores)
        print(f"{args.step} cfg {cfg}: " + " ".join(f"{k} {v:.2f}" for k, v in r.items()) + f" ({time.time() - t0:.0f}s)")
        grids.append(np.concatenate([np.concatenate(images[r * 12 : (r + 1) * 12], 1) for r in range(len(images) // 12)], 0))
    if args.grid:
        from PIL import Image

        Image.fromarray(np.concatenate(grids, 0)).save(args.grid)


if __name__ == "__main__":
    main()
