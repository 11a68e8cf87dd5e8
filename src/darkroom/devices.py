"""Choose the torch device and weight dtype: CUDA (fp16/bf16), MPS, else CPU fp32; settings override."""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    """The device to run on; 'auto' prefers CUDA, then MPS, then CPU. An unavailable explicit choice is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was requested but MPS is not available")
    if requested not in ("cpu", "cuda", "mps") and not requested.startswith("cuda:"):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, cuda or mps")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """Weight dtype: fp16 on CUDA/MPS (bf16 if asked and supported), fp32 on CPU unless asked otherwise."""
    if requested != "auto":
        if requested not in _DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; use auto, fp32, fp16 or bf16")
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("bf16 was requested but this GPU does not support it; use fp16")
        return _DTYPES[requested]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.float32
