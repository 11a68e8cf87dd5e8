"""Seamless tiling for textures: circular padding in every padded Conv2d of the UNet and VAE for one generation.

With `padding_mode="circular"` a convolution at the left edge reads the right edge's pixels (and top ↔ bottom), so
the network treats the canvas as a torus and the image wraps when laid side by side (A1111's "Tiling" option does
the same to every Conv2d of the model). Only the attribute is changed — `nn.Conv2d` already pads with
`F.pad(x, …, mode=padding_mode)` when the mode is not "zeros" — and it is restored on exit, so no forward method is
replaced. Convolutions without padding (1×1, the VAE encoder's explicitly padded downsamplers) are left alone.

Thread-safety: the modules are shared. While the context is open every user of those modules gets circular
padding, so enter it only from the one worker that owns the model for the whole generation (darkroom's engine does
so under its lock). Nested or repeated use is safe: modules already circular are neither changed nor restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def padded_convs(*modules: nn.Module | None) -> list[nn.Conv2d]:
    """Every Conv2d inside these modules that pads its input (the ones circular padding changes)."""
    out: list[nn.Conv2d] = []
    seen: set[int] = set()
    for root in modules:
        if root is None:
            continue
        for m in root.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in seen and any(m._reversed_padding_repeated_twice):
                seen.add(id(m))
                out.append(m)
    return out


@contextmanager
def circular_padding(*modules: nn.Module | None, enabled: bool = True) -> Iterator[int]:
    """Within the block, padded Conv2d layers of `modules` pad circularly; yields how many were switched.

    `enabled=False` makes it a no-op (so callers can always write `with circular_padding(…, enabled=p.tiling)`).
    """
    changed: list[tuple[nn.Conv2d, str]] = []
    if enabled:
        for conv in padded_convs(*modules):
            if conv.padding_mode != "circular":
                changed.append((conv, conv.padding_mode))
                conv.padding_mode = "circular"
    try:
        yield len(changed)
    finally:
        for conv, mode in changed:
            conv.padding_mode = mode
