"""Measure how well a canny ControlNet places shapes for the default model, through darkroom's engine.

Each case is one shape (kind, size, grid position) drawn as a picture; its canny map is the control image and the
prompt names the shape, its colour and the background but NOT where it is ("a large red circle on a blue
background"). The picture is read by the default model's analyser; a case is placed when the main shape's grid cell
is the map's. The same prompts and seeds without the ControlNet give the baseline.

  HF_HUB_OFFLINE=1 .venv/bin/python training/measure_control.py \
      --controlnet src/darkroom/default_model/darkroom-shapes-v3-canny.safetensors --seeds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from darkroom.shapes.analyse import analyse  # noqa: E402
from darkroom.shapes.dataset import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, render  # noqa: E402

#: Diameter (px) of the drawn shape per size word (the middle of the dataset's ranges).
DIAMETER = {"small": 18.5, "large": 28.0}
#: How the control image reaches the ControlNet: a picture through the canny preprocessor at the generation's
#: resolution (A1111's "pixel perfect" for 64×64), or a ready canny map with no preprocessor.
MODES = {"canny": dict(module="canny", processor_res=IMAGE_SIZE), "map": dict(module="none")}


@dataclass(frozen=True)
class ControlCase:
    """One controlled generation: a shape at a grid position, the colours the prompt asks for, and a seed."""

    kind: str
    position: str
    size: str
    colour: str
    background: str
    seed: int

    @property
    def prompt(self) -> str:
        """The prompt, which names everything but the position."""
        article = "an" if self.background[0] in "aeiou" else "a"
        return f"a {self.size} {self.colour} {self.kind} on {article} {self.background} background"

    @property
    def centre(self) -> tuple[float, float]:
        """Pixel centre of the shape: its grid cell's centre, kept inside the picture as the dataset does."""
        col, row = POSITIONS[self.position]
        cell, margin = IMAGE_SIZE / 3, DIAMETER[self.size] / 2 + 1.5
        clamp = lambda v: min(max(v, margin), IMAGE_SIZE - margin)  # noqa: E731
        return clamp((col + 0.5) * cell), clamp((row + 0.5) * cell)

    def picture(self) -> np.ndarray:
        """The shape drawn in the prompt's colours → (64, 64, 3) uint8."""
        return render(self.background, [(self.kind, self.colour, self.centre, DIAMETER[self.size])])

    def canny_map(self) -> np.ndarray:
        """The picture's canny map as darkroom's preprocessor makes it at 64×64 → (64, 64, 3) uint8, white edges."""
        from darkroom.control.preprocess import preprocess

        return (preprocess("canny", self.picture(), resolution=IMAGE_SIZE) * 255).round().astype(np.uint8)


def control_cases(positions: list[str], kinds: list[str] = list(SHAPES), seeds: int = 1, size: str = "large",
                  first_seed: int = 200) -> list[ControlCase]:
    """Every kind at every position, `seeds` times; colours cycle through the palette, seeds count up."""
    names = list(COLOURS)
    out: list[ControlCase] = []
    for k in range(seeds):
        for pos in positions:
            for kind in kinds:
                i = len(out)
                colour = names[i % len(names)]
                background = names[(i * 3 + 1 + i // len(names)) % len(names)]
                if background == colour:
                    background = names[(names.index(colour) + 5) % len(names)]
                out.append(ControlCase(kind, pos, size, colour, background, first_seed + i))
    return out


def make_engine(threads: int = 1):
    """An engine on an empty models folder (so the built-in model is the default), CPU float32."""
    import torch

    from darkroom.engine import Engine
    from darkroom.settings import load_settings

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="dr-measure-"))
    settings = load_settings(models_dir=root / "models", output_dir=root / "out", data_dir=root / "data")
    return Engine(settings, device="cpu", dtype="fp32")


def generate(engine, case: ControlCase, *, controlnet: str | Path | None, base: str | Path | None = None,
             mode: str = "map", weight: float = 1.0, steps: int = 20, cfg: float = 5.0,
             folder: Path | None = None):
    """One 64×64 picture for a case (with the ControlNet unit when `controlnet` is given) → PIL image."""
    from PIL import Image

    from darkroom.control.units import ControlNetUnit
    from darkroom.engine.params import GenerationParams

    units = []
    if controlnet is not None:
        folder = Path(folder or tempfile.mkdtemp(prefix="dr-hint-"))
        hint = folder / f"hint-{mode}-{case.kind}-{case.position.replace(' ', '_')}-{case.size}-{case.colour}-" \
                        f"{case.background}.png"
        if not hint.exists():
            Image.fromarray(case.canny_map() if mode == "map" else case.picture()).save(hint)
        units = [ControlNetUnit(model=str(controlnet), image=hint, weight=weight, **MODES[mode])]
    params = GenerationParams(prompt=case.prompt, model=None if base is None else str(base), seed=case.seed,
                              width=IMAGE_SIZE, height=IMAGE_SIZE, steps=steps, cfg=cfg, controlnets=units)
    return engine.generate(params).images[0]


def placed(image, case: ControlCase) -> bool:
    """Whether the analyser finds the main shape in the case's grid cell."""
    main = analyse(image).main
    return main is not None and main.position == case.position


def placement_rate(engine, cases: list[ControlCase], **kw) -> float:
    """Fraction of cases whose picture puts the main shape where the map says (kw: see `generate`)."""
    folder = Path(tempfile.mkdtemp(prefix="dr-hint-"))
    return float(np.mean([placed(generate(engine, c, folder=folder, **kw), c) for c in cases]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controlnet", type=Path, required=True, help="the ControlNet file")
    ap.add_argument("--base", type=Path, default=None, help="checkpoint file (default: the built-in model)")
    ap.add_argument("--positions", nargs="+", default=list(POSITIONS), help="grid positions (default: all nine)")
    ap.add_argument("--sizes", nargs="+", default=["large", "small"])
    ap.add_argument("--seeds", type=int, default=1, help="repetitions of the case set with new seeds")
    ap.add_argument("--modes", nargs="+", default=["map", "canny"], choices=list(MODES))
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    engine = make_engine(args.threads)
    kw = dict(base=args.base, steps=args.steps, cfg=args.cfg)
    for size in args.sizes:
        cases = control_cases(args.positions, seeds=args.seeds, size=size)
        t0 = time.time()
        base = placement_rate(engine, cases, controlnet=None, **kw)
        print(f"{size}: {len(cases)} cases; without ControlNet {base:.0%} placed ({time.time() - t0:.0f}s)",
              flush=True)
        for mode in args.modes:
            t0 = time.time()
            rate = placement_rate(engine, cases, controlnet=args.controlnet, mode=mode, weight=args.weight, **kw)
            print(f"{size}: with ControlNet ({mode}) {rate:.0%} placed ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
