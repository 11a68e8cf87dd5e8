"""PiDiNet soft edges (`table5_pidinet.pth`): pidinet, pidinet_safe, pidinet_sketch, pidinet_scribble.

Su et al., "Pixel Difference Networks for Efficient Edge Detection" (ICCV 2021), the 'carv4' model with compact
dilation (CDCM, 24 channels) and spatial attention (CSAM) that ControlNet 1.1 ships. Its convolutions look at pixel
differences instead of pixels: central (cd: each neighbour minus the centre), angular (ad: each ring pixel minus its
clockwise neighbour) and radial (rd: each pixel two steps out minus the one between it and the centre); carv4 cycles
cd, ad, rd, vanilla over its init conv and 15 blocks. Every pixel-difference convolution equals a plain convolution
(3×3 for cd/ad, 5×5 for rd) whose kernel is a fixed linear map of the stored 3×3 weights; the weights are kept in
their stored form and the plain kernel is built on each call (`vanilla_kernel`).

Input: BGR in 0..1 (the A1111 extension flips its RGB image). Four stages (60, 120, 240, 240 channels, each half the
size of the one before) each give an edge logit through dilation → attention → 1×1 reduction; the four are resized
to the image (bilinear) and fused by a 1×1 `classifier`, and its sigmoid is the soft-edge map. `pidinet_safe`
quantises it to three levels, `pidinet_sketch` thresholds it at 0.5, `pidinet_scribble` thins and thickens it into
strokes (as `scribble_hed`).

Checkpoint (a training checkpoint, its "state_dict" holds the weights, keys prefixed "module."): "init_block.weight",
"block{1_1..1_3, 2_1..2_4, 3_1..3_4, 4_1..4_4}.conv1.weight|conv2.weight" (+ "shortcut.weight|bias" in 2_1, 3_1, 4_1),
"conv_reduces.{0..3}.conv.weight|bias", "attentions.{0..3}.conv1.weight|bias|conv2.weight",
"dilations.{0..3}.conv1.weight|bias|conv2_{1..4}.weight", "classifier.weight|bias": 83 tensors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .annotator_hed import safe_step, scribble
from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights

#: The convolution type of the init conv and of blocks 1_1 … 4_4, in order ('cv': vanilla).
CARV4 = ("cd", "ad", "rd", "cv") * 4

#: The 3×3 ring in flat (row-major) indices, clockwise from the top-left corner.
_RING = (0, 1, 2, 5, 8, 7, 6, 3)
#: For each flat 3×3 index, the ring pixel before it clockwise (the centre maps to itself).
_RING_PREVIOUS = [dict(zip(_RING, _RING[-1:] + _RING[:-1])).get(j, j) for j in range(9)]
#: Radial differences: 5×5 flat indices of the outer pixels (row-major) and of the pixels halfway to the centre.
_RD_OUTER = [5 * r + c for r in (0, 2, 4) for c in (0, 2, 4) if (r, c) != (2, 2)]
_RD_INNER = [5 * (r // 2 + 1) + (c // 2 + 1) for r in (0, 2, 4) for c in (0, 2, 4) if (r, c) != (2, 2)]


def vanilla_kernel(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """The plain kernel equal to a pixel-difference convolution with stored 3×3 weights (O, I, 3, 3).

    cv: the weights; cd: the weights with their sum taken off the centre; ad: each weight minus that of the previous
    ring pixel (centre 0); rd (O, I, 5, 5): stored weights 1..8 (flat; weight 0 is unused, as in the published model)
    on the outer pixels and their negatives halfway in. cv/cd/ad run with padding 1, rd with padding 2.
    """
    if kind == "cv":
        return weight
    o, i = weight.shape[:2]
    flat = weight.reshape(o, i, 9)
    if kind == "cd":
        kernel = flat.clone()
        kernel[:, :, 4] -= flat.sum(2)
        return kernel.view_as(weight)
    if kind == "ad":
        return (flat - flat[:, :, _RING_PREVIOUS]).view_as(weight)
    if kind == "rd":
        kernel = flat.new_zeros(o, i, 25)
        kernel[:, :, _RD_OUTER] = flat[:, :, 1:]
        kernel[:, :, _RD_INNER] = -flat[:, :, 1:]
        return kernel.view(o, i, 5, 5)
    raise ValueError(f"unknown pixel-difference convolution {kind!r} (cv, cd, ad or rd)")


class PixelDifferenceConv(nn.Module):
    """A bias-free 3×3 pixel-difference convolution (`kind` cv/cd/ad/rd), stride 1, same size out."""

    def __init__(self, kind: str, cin: int, cout: int, groups: int = 1) -> None:
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, vanilla_kernel(self.kind, self.weight), padding=2 if self.kind == "rd" else 1,
                        groups=self.groups)


class _Block(nn.Module):
    """Residual x + 1×1(ReLU(depthwise PDC(x))); with `downsample`, x is max-pooled 2×2 first and the residual goes
    through a 1×1 `shortcut` to the new channel count."""

    def __init__(self, kind: str, cin: int, cout: int, downsample: bool = False) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1) if downsample else None
        self.conv1 = PixelDifferenceConv(kind, cin, cin, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (x if self.shortcut is None else self.shortcut(x))


class _Dilation(nn.Module):
    """CDCM: ReLU, 1×1 to `cout`, then the sum of four 3×3 convolutions dilated 5, 7, 9 and 11."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1)
        self.conv2_1 = nn.Conv2d(cout, cout, 3, dilation=5, padding=5, bias=False)
        self.conv2_2 = nn.Conv2d(cout, cout, 3, dilation=7, padding=7, bias=False)
        self.conv2_3 = nn.Conv2d(cout, cout, 3, dilation=9, padding=9, bias=False)
        self.conv2_4 = nn.Conv2d(cout, cout, 3, dilation=11, padding=11, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class _Attention(nn.Module):
    """CSAM: x · sigmoid(3×3 conv to one map of a 1×1 conv to four channels of ReLU(x))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class _Reduce(nn.Module):
    """A 1×1 convolution to one edge logit map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """(B, 3, H, W) BGR in 0..1, H and W multiples of 8 → (B, 1, H, W) fused edge probability in 0..1."""

    #: Blocks per stage (the first block of stages 2–4 halves the size).
    STAGES = (3, 4, 4, 4)

    def __init__(self, channels: int = 60, fuse_channels: int = 24, pdcs: tuple[str, ...] = CARV4) -> None:
        super().__init__()
        self.init_block = PixelDifferenceConv(pdcs[0], 3, channels)
        widths = (channels, 2 * channels, 4 * channels, 4 * channels)
        layer, cin = 1, channels
        for stage, (blocks, width) in enumerate(zip(self.STAGES, widths), start=1):
            for n in range(1, blocks + 1):
                self.add_module(f"block{stage}_{n}", _Block(pdcs[layer], cin, width, downsample=stage > 1 and n == 1))
                layer, cin = layer + 1, width
        self.conv_reduces = nn.ModuleList(_Reduce(fuse_channels) for _ in widths)
        self.attentions = nn.ModuleList(_Attention(fuse_channels) for _ in widths)
        self.dilations = nn.ModuleList(_Dilation(w, fuse_channels) for w in widths)
        self.classifier = nn.Conv2d(len(widths), 1, 1)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stages' outputs: (B, C·(1, 2, 4, 4), H/(1, 2, 4, 8), W/(1, 2, 4, 8))."""
        x = self.init_block(x)
        features = []
        for stage, blocks in enumerate(self.STAGES, start=1):
            for n in range(1, blocks + 1):
                x = getattr(self, f"block{stage}_{n}")(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        logits = [F.interpolate(reduce(attention(dilation(f))), size, mode="bilinear", align_corners=False)
                  for f, dilation, attention, reduce
                  in zip(self.stage_features(x), self.dilations, self.attentions, self.conv_reduces)]
        return torch.sigmoid(self.classifier(torch.cat(logits, dim=1)))


def load_pidinet_model(path: Path) -> PiDiNet:
    """table5_pidinet.pth → PiDiNet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = PiDiNet()
    return load_exact(net, read_weights(path), path, "PiDiNet (table5_pidinet.pth)", assign=True)


@torch.no_grad()
def pidinet_edges(net: PiDiNet, rgb: np.ndarray) -> np.ndarray:
    """Edge probability (H, W) float32 in 0..1 of an RGB uint8 image (H, W multiples of 8)."""
    param = next(net.parameters())
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    x = torch.from_numpy(bgr).to(param.device, param.dtype).permute(2, 0, 1)[None] / 255.0
    return net(x)[0, 0].float().cpu().numpy()


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """pidinet / pidinet_safe / pidinet_sketch / pidinet_scribble at the processor resolution → (H, W) uint8."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    edge = pidinet_edges(NETWORKS.get(files[0], device, load_pidinet_model), padded)
    if preprocessor == "pidinet_sketch":
        edge = (edge > 0.5).astype(np.float32)
    elif preprocessor == "pidinet_safe":
        edge = safe_step(edge)
    out = unpad((edge * 255.0).clip(0, 255).astype(np.uint8))
    return scribble(out) if preprocessor == "pidinet_scribble" else out
