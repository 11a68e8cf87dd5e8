"""HED soft edges with lllyasviel's Apache-2.0 network (`ControlNetHED.pth`): hed, hed_safe, scribble_hed.

Xie & Tu, "Holistically-Nested Edge Detection" (ICCV 2015), in the re-trained form ControlNet 1.1 ships: five VGG-16
blocks on RGB 0..255 minus a learned per-channel offset (`norm`); each block's 1×1 projection is an edge logit at its
scale. The logits are resized to the image (bilinear), averaged, and squashed with a sigmoid. `hed_safe` quantises the
map to a few steps (fewer hidden details for the ControlNet to latch onto); `scribble_hed` thins it to one-pixel
ridges (non-maximum suppression along four directions), blurs and thresholds it into bold white strokes.
Checkpoint keys: "norm", "block{1..5}.convs.{i}.weight|bias", "block{1..5}.projection.weight|bias".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights


class _Block(nn.Module):
    """`n` 3×3 conv + ReLU layers (after an optional 2×2 max-pool), and a 1×1 edge projection of the result."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(n)])
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, down: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if down:
            x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = nn.functional.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    """(B, 3, H, W) RGB in 0..255 → five edge logits (B, 1, H/2^i, W/2^i), i = 0..4."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.block1 = _Block(3, 64, 2)
        self.block2 = _Block(64, 128, 2)
        self.block3 = _Block(128, 256, 3)
        self.block4 = _Block(256, 512, 3)
        self.block5 = _Block(512, 512, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        logits = []
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5)):
            h, p = block(h, down=i > 0)
            logits.append(p)
        return logits


def load_hed_model(path: Path) -> ControlNetHED:
    """ControlNetHED.pth → ControlNetHED (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = ControlNetHED()
    return load_exact(net, read_weights(path), path, "ControlNet HED (ControlNetHED.pth)", assign=True)


@torch.no_grad()
def hed_edges(net: ControlNetHED, rgb: np.ndarray) -> np.ndarray:
    """Edge probability (H, W) float64 in 0..1 of an RGB uint8 image."""
    import cv2

    h, w = rgb.shape[:2]
    param = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(param.device, param.dtype).permute(2, 0, 1)[None]
    logits = [e[0, 0].float().cpu().numpy() for e in net(x)]
    stacked = np.stack([cv2.resize(e, (w, h), interpolation=cv2.INTER_LINEAR) for e in logits], axis=2)
    return 1.0 / (1.0 + np.exp(-stacked.mean(axis=2).astype(np.float64)))


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise a 0..1 map to the levels 0, 1/step, …, 1: floor(x · (step + 1)) / step (x = 1 gives 1 + 1/step)."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def thin_edges(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Blur, keep pixels that are maxima along any of four directions and above `threshold` → binary uint8."""
    import cv2

    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
               [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    y = np.zeros_like(x)
    for k in kernels:
        np.putmask(y, cv2.dilate(x, kernel=np.array(k, np.uint8)) == x, x)
    out = np.zeros(y.shape, np.uint8)
    out[y > threshold] = 255
    return out


def scribble(edge: np.ndarray) -> np.ndarray:
    """A uint8 soft-edge map → white scribble strokes on black (thin ridges, widened by a blur, binarised)."""
    import cv2

    out = cv2.GaussianBlur(thin_edges(edge, 127, 3.0), (0, 0), 3.0)
    out[out > 4] = 255
    out[out < 255] = 0
    return out


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """hed / hed_safe / scribble_hed at the processor resolution → (H, W) uint8."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    net = NETWORKS.get(files[0], device, load_hed_model)
    edge = hed_edges(net, padded)
    if preprocessor == "hed_safe":
        edge = safe_step(edge)
    out = unpad((edge * 255.0).clip(0, 255).astype(np.uint8))
    return scribble(out) if preprocessor == "scribble_hed" else out
