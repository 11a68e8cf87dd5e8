"""The built-in default model: a tiny SD1-style text-to-image model trained on darkroom's shapes dataset.

See docs/default-model.md for what it knows and how it was made (training/train_default_model.py).
"""

from __future__ import annotations

from pathlib import Path

#: File name of the shipped checkpoint (also its name in `darkroom models`).
FILE_NAME = "darkroom-shapes-v3.safetensors"
#: The resolution it was trained at (width = height).
NATIVE_SIZE = 64


def path() -> Path:
    """Location of the shipped checkpoint file inside the installed package (it may be missing in a broken install)."""
    return Path(__file__).resolve().parent / FILE_NAME


def available() -> bool:
    """Whether the shipped checkpoint file is present."""
    return path().is_file()
