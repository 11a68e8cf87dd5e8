"""A tiny models folder for reference-image requests, built once per process: the tiny SD1.5 checkpoint, a tiny CLIP
vision encoder under ComfyUI_IPAdapter_plus's ViT-H file name, a "plus" IP-Adapter in models/ipadapter and a plain
one in models/controlnet (where A1111 keeps them), and a reference picture in the input folder."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from ipa_tiny import ipadapter_state_dict, tiny_clip_vision, write_clip_vision  # noqa: E402

from darkroom.testing.studio import TinyStudio  # noqa: E402

ENCODER = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
PLUS = "ip-adapter-plus_sd15.safetensors"  # in models/ipadapter
PLAIN = "ip-adapter_sd15.safetensors"  # in models/controlnet
REFERENCE = "ref.png"


def reference_picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A random RGB picture (not square, so the CLIP centre crop matters)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


@functools.lru_cache(maxsize=None)
def shared_ip_studio() -> TinyStudio:
    """The studio, made once per process in a temporary folder removed at exit."""
    from darkroom.testing.studio import make_tiny_studio
    from darkroom.testing.tiny import shared_tiny_components

    studio = make_tiny_studio("darkroom-ipadapter-")
    unet = shared_tiny_components("sd15")["unet"]
    write_clip_vision(studio.root / "clip_vision" / ENCODER, tiny_clip_vision(seed=3))
    for folder, name, kind, seed in (("ipadapter", PLUS, "plus", 9), ("controlnet", PLAIN, "plain", 4)):
        (studio.root / folder).mkdir()
        save_file(ipadapter_state_dict(unet, kind, seed=seed), str(studio.root / folder / name))
    reference_picture().save(studio.input_dir / REFERENCE)
    return studio
