"""M-LSD straight line segments (`mlsd_large_512_fp32.pth`): preprocessor mlsd.

Gu et al., "Towards Light-weight and Real-time Line Segment Detection" (AAAI 2022, NAVER; the PyTorch port
lhwcv/mlsd_pytorch that ControlNet ships): MobileV2_MLSD_Large, a MobileNetV2 encoder (stride-2 convolutions padded
on the bottom/right only, as TFLite) cut after its 96-channel stage, and a U-Net-like decoder (block15..block23) back
to half the input size. The input is RGB plus a constant fourth channel, all mapped from 0..255 to -1..1 (the fourth
channel is 1 before the mapping, so -0.992 after). Of the 16 output maps the last 9 are kept: map 0 scores line
centres (a logit), maps 1..4 are the displacements from a centre to the segment's start (x, y) and end (x, y) in
half-resolution pixels.

Decoding, as the A1111 extension and controlnet_aux do: sigmoid the centre map, keep 3×3 local maxima, take the 200
best; a centre becomes a segment when its score is above the value threshold (threshold_a, default 0.1) and its
length (half-resolution pixels) is above the distance threshold (threshold_b, default 0.1). Segments are drawn as
white 1-px lines on black at the processor resolution (the network runs on the edge-padded image, no other resize).

Checkpoint keys: "backbone.features.0.{0,1}.*" (stem conv + BN), "backbone.features.1.conv.{0.0,0.1,1,2}.*",
"backbone.features.{2..13}.conv.{0.0,0.1,1.0,1.1,2,3}.*" (expand, depthwise, project), "block{15,17,19,21}.conv{1,2}
.{0,1}.*" (1×1 laterals), "block{16,18,20,22}.conv{1,2}.{0,1}.*" (3×3 refinements), "block23.conv{1,2}.{0,1}.*",
"block23.conv3.*"; every BatchNorm stores weight, bias, running_mean, running_var, num_batches_tracked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights

#: A1111's slider defaults: MLSD Value Threshold (centre score) and MLSD Distance Threshold (half-res pixels).
DEFAULT_VALUE_THRESHOLD = 0.1
DEFAULT_DISTANCE_THRESHOLD = 0.1
#: How many centre candidates are decoded, and the size of the local-maximum window.
TOP_K = 200
NMS_KERNEL = 3

#: MobileNetV2 stages kept by M-LSD: (expansion, output channels, blocks, first stride).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
#: Indices of `features` whose outputs feed the decoder (16, 24, 32, 64, 96 channels at 1/2 … 1/16, 1/16).
_TAPS = (1, 3, 6, 10, 13)


class _ConvBNReLU6(nn.Sequential):
    """Bias-free k×k conv, BatchNorm, ReLU6; stride 2 pads one zero row/column on the bottom/right (TFLite)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: [1×1 expand,] 3×3 depthwise, 1×1 linear projection; a skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [_ConvBNReLU6(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [_ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """(B, 4, H, W) → the five tapped feature maps: 16 ch at H/2, 24 at H/4, 32 at H/8, 64 and 96 at H/16."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNReLU6(4, 32, stride=2)]
        cin = 32
        for expansion, cout, blocks, stride in _STAGES:
            for i in range(blocks):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    """Conv (with bias, 'same' padding), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _Merge(nn.Module):
    """Skip (`conv2`, 1×1) and deeper features (`conv1`, 1×1, optionally upsampled ×2) concatenated, skip first."""

    def __init__(self, skip_channels: int, deep_channels: int, upsample: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(deep_channels, 64, 1)
        self.conv2 = _conv_bn_relu(skip_channels, 64, 1)
        self.upsample = upsample

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upsample:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class _Refine(nn.Module):
    """128 → 64 channels: a residual 3×3 conv, then a 3×3 conv."""

    def __init__(self, channels: int = 128, out_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels, 3)
        self.conv2 = _conv_bn_relu(channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class _Head(nn.Module):
    """64 → 16 maps: a dilated (5) 3×3 conv, a 3×3 conv, a plain 1×1 conv."""

    def __init__(self, channels: int = 64, out_channels: int = 16) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels, 3, dilation=5)
        self.conv2 = _conv_bn_relu(channels, channels, 3)
        self.conv3 = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MLSDLarge(nn.Module):
    """(B, 4, H, W) in -1..1, H and W multiples of 32 → (B, 9, H/2, W/2): centre logit, 4 displacements, 4 more."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetV2Encoder()
        self.block15 = _Merge(64, 96, upsample=False)
        self.block16 = _Refine()
        self.block17 = _Merge(32, 64)
        self.block18 = _Refine()
        self.block19 = _Merge(24, 64)
        self.block20 = _Refine()
        self.block21 = _Merge(16, 64)
        self.block22 = _Refine()
        self.block23 = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]


def load_mlsd_model(path: Path) -> MLSDLarge:
    """mlsd_large_512_fp32.pth → MLSDLarge (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = MLSDLarge()
    return load_exact(net, read_weights(path), path, "M-LSD large (mlsd_large_512_fp32.pth)", assign=True)


def network_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (1, 4, H, W) float32: RGB and a channel of ones, each v ↦ v / 127.5 − 1."""
    h, w = rgb.shape[:2]
    rgba = np.concatenate([rgb.astype(np.float32), np.ones((h, w, 1), np.float32)], axis=2)
    return torch.from_numpy(rgba / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()


def decode_segments(tp_map: torch.Tensor, value_threshold: float, distance_threshold: float, top_k: int = TOP_K,
                    kernel: int = NMS_KERNEL) -> np.ndarray:
    """Line segments from a (1, ≥5, h, w) output map → (N, 4) float64 x0, y0, x1, y1 in input pixels (2× the map).

    A segment per centre that is a local maximum (kernel × kernel) of sigmoid(map 0), among the `top_k` best, with a
    score above `value_threshold` and a length ‖start − end‖ (map pixels) above `distance_threshold`; its ends are
    the centre plus the displacements in maps 1..4.
    """
    heat = torch.sigmoid(tp_map[0, 0].float())
    peaks = F.max_pool2d(heat[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
    heat = torch.where(peaks == heat, heat, torch.zeros_like(heat))
    w = heat.shape[1]
    scores, index = torch.topk(heat.flatten(), min(top_k, heat.numel()))
    scores, index = scores.cpu().numpy(), index.cpu().numpy()
    ys, xs = index // w, index % w
    disp = tp_map[0, 1:5].float().cpu().numpy()[:, ys, xs].T  # (top_k, 4): start x, y, end x, y
    length = np.hypot(disp[:, 0] - disp[:, 2], disp[:, 1] - disp[:, 3])
    keep = (scores > value_threshold) & (length > distance_threshold)
    centres = np.stack([xs, ys, xs, ys], axis=1)[keep].astype(np.float64)
    return 2.0 * (centres + disp[keep].astype(np.float64))


def draw_segments(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """White 1-px lines on black (H, W) uint8; end points truncated towards zero to whole pixels."""
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in segments.tolist():
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return canvas


@torch.no_grad()
def detect_segments(net: MLSDLarge, rgb: np.ndarray, value_threshold: float,
                    distance_threshold: float) -> np.ndarray:
    """The segments (N, 4) x0, y0, x1, y1 in an RGB uint8 image whose sides are multiples of 32."""
    param = next(net.parameters())
    return decode_segments(net(network_input(rgb).to(param.device, param.dtype)), value_threshold,
                           distance_threshold)


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        threshold_a: float = -1, threshold_b: float = -1, **_: Any) -> np.ndarray:
    """mlsd at the processor resolution → (H, W) uint8 white lines on black (negative thresholds: the defaults)."""
    from .preprocess import resize_short_side

    value = threshold_a if threshold_a >= 0 else DEFAULT_VALUE_THRESHOLD
    distance = threshold_b if threshold_b >= 0 else DEFAULT_DISTANCE_THRESHOLD
    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    net = NETWORKS.get(files[0], device, load_mlsd_model)
    return unpad(draw_segments(detect_segments(net, padded, value, distance), *padded.shape[:2]))
