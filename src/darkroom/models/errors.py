"""Errors raised while finding, reading and loading model files (each message names the file)."""

from __future__ import annotations

from .family import UnsupportedModelError

__all__ = ["ModelFileError", "UnsafeModelFileError", "ModelNotFoundError", "UnsupportedModelError"]


class ModelFileError(OSError):
    """A model file is missing, unreadable, corrupt, truncated or not laid out as its kind requires."""


class UnsafeModelFileError(ModelFileError):
    """A pickle-based file (.ckpt/.pt/.bin/.pth) was refused because unpickling can run arbitrary code."""


class ModelNotFoundError(ModelFileError, LookupError):
    """No model of the requested kind has that name; the message lists the names that exist."""
