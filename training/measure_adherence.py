"""Measure the shipped default model's prompt adherence through darkroom's engine (numbers for docs/default-model.md).

  HF_HUB_OFFLINE=1 .venv/bin/python training/measure_adherence.py --cfg 1 3 5 7 --samplers
  HF_HUB_OFFLINE=1 .venv/bin/python training/measure_adherence.py --checkpoint /tmp/candidate.safetensors
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from darkroom.shapes.adherence import make_prompt, prompt_suite, rates, score_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--seeds", type=int, default=1, help="seed sets: prompt i uses 100 + i + 1000·k")
    ap.add_argument("--samplers", action="store_true", help="also try every sampler on one simple prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="measure this single-file checkpoint instead of the shipped default model")
    args = ap.parse_args()

    import torch

    from darkroom.engine import Engine
    from darkroom.engine.params import GenerationParams
    from darkroom.sampling import SAMPLER_NAMES
    from darkroom.settings import load_settings

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp())
    if args.checkpoint is not None:  # an installed checkpoint is used instead of the built-in model
        (root / "models" / "checkpoints").mkdir(parents=True)
        (root / "models" / "checkpoints" / args.checkpoint.name).symlink_to(args.checkpoint.resolve())
    engine = Engine(load_settings(models_dir=root / "models", output_dir=root / "out", data_dir=root / "data"),
                    device="cpu", dtype="fp32")
    suites = {"mixed": prompt_suite(args.n), "large": prompt_suite(24, seed=99, sizes=("large",))}
    print("| suite | cfg | background | colour | position | kind | size | all |\n|---|---|---|---|---|---|---|---|")
    for name, specs in suites.items():
        for cfg in args.cfg:
            t0 = time.time()
            scores = []
            for k in range(args.seeds):
                for i, s in enumerate(specs):
                    p = GenerationParams(prompt=s.prompt, seed=100 + i + 1000 * k, width=64, height=64, steps=20,
                                         cfg=cfg)
                    scores.append(score_image(engine.generate(p).images[0], s))
            r = rates(scores)
            print(f"| {name} | {cfg:g} | {r['background']:.0%} | {r['colour']:.0%} | {r['position']:.0%} | "
                  f"{r['kind']:.0%} | {r['size']:.0%} | {r['all']:.0%} |   ({len(scores)} images, {time.time() - t0:.0f}s)")
    if args.samplers:
        simple = make_prompt("blue", "yellow", "circle", "left", "large")
        print(f"\nsamplers on {simple.prompt!r}, seeds 1-4, cfg 5 (background+colour+position right):")
        for name in SAMPLER_NAMES:
            steps = 8 if name == "lcm" else 20
            ok = 0
            for seed in (1, 2, 3, 4):
                p = GenerationParams(prompt=simple.prompt, seed=seed, width=64, height=64, steps=steps, cfg=5.0,
                                     sampler=name)
                s = score_image(engine.generate(p).images[0], simple)
                ok += s["background"] and s["colour"] and s["position"]
            print(f"  {name:24s} {ok}/4")


if __name__ == "__main__":
    main()
