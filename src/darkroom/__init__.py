"""darkroom: a local, private, offline studio for generative images."""

__version__ = "0.1.0"
