"""Surface normals with NormalBAE (`scannet.pt`): normal_bae.

Bae, Budvytis & Cipolla, "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal Estimation" (ICCV
2021), the ScanNet-trained network the A1111 extension and controlnet_aux run as `annotator/normalbae` (NNET with
the batch-norm decoder). The file stores `{"model": state_dict}`:

- `encoder.original_model.*`: gen-efficientnet's `tf_efficientnet_b5_ap` without its classifier — a 48-channel
  3×3 stride-2 stem (`conv_stem`, `bn1`), 7 stages of 3/5/5/7/7/9/3 blocks under `blocks.{stage}.{block}` (a
  depthwise-separable block, then inverted residuals with 6× expansion, all with squeeze-excitation `se.conv_reduce`
  / `se.conv_expand`) reaching 24/40/64/128/176/304/512 channels, and a 1×1 head to 2048 (`conv_head`, `bn2`).
  TensorFlow "same" padding, batch norm eps 1e-3, swish.
- `decoder.*`: a 1×1 `conv2` on the head's output (before `bn2`, as the original reads it), four `up{1..4}._net`
  blocks (bilinear ×2, concatenate the encoder's 1/16, 1/8, 1/4, 1/2 features, twice 3×3 conv + BN + leaky ReLU),
  `out_conv_res8` (3×3 → 4 channels at 1/8) and three per-pixel MLPs `out_conv_res{4,2,1}` (1×1 Conv1d layers
  `.0/.2/.4/.6`) that refine the prediction at 1/4, 1/2 and full resolution from the upsampled features and the
  previous prediction.

Each prediction is 4 channels: a unit normal (x, y, z; the first three, L2-normalised) and the concentration κ of
its angular uncertainty (elu + 1.01). In training the refinement runs only at points sampled where κ is low
(uncertainty-guided sampling); in evaluation, as here and in the annotator, it runs at every pixel.

As the A1111 extension: the picture's short side is scaled to the processor resolution and edge-padded to a multiple
of 64; RGB in 0..1 is ImageNet-normalised; the full-resolution normal maps to colour as (n + 1) / 2 · 255 (R = x,
G = y, B = z), clipped and truncated to uint8.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_depth import MEAN, STD
from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights

#: EfficientNet-B0's stages: (kernel, stride, output channels, blocks); B5 scales widths ×1.6 and depths ×2.2.
B0_STAGES = ((3, 1, 16, 1), (3, 2, 24, 2), (5, 2, 40, 2), (3, 2, 80, 3), (5, 1, 112, 3), (5, 2, 192, 4),
             (3, 1, 320, 1))
WIDTH, DEPTH = 1.6, 2.2
EXPANSION = 6  # inverted residuals widen by 6 (the first stage's depthwise-separable blocks do not)
SE_RATIO = 0.25  # squeeze-excitation width: a quarter of the block's input channels
TF_BN_EPS = 1e-3
#: Encoder stages (0-based) whose outputs the decoder takes as skips: 1/2, 1/4, 1/8 and 1/16 resolution.
SKIP_STAGES = (0, 1, 2, 4)
MIN_KAPPA = 0.01


def round_channels(channels: float) -> int:
    """A scaled channel count rounded to a multiple of 8 (never more than 10% below), as EfficientNet does."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


def b5_stages() -> list[tuple[int, int, int, int]]:
    """EfficientNet-B5's stages: (kernel, stride, output channels, blocks)."""
    return [(k, s, round_channels(c * WIDTH), math.ceil(n * DEPTH)) for k, s, c, n in B0_STAGES]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one axis: (before, after), the odd pixel after; output is ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow "same" padding computed from the input size (zeros)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _pointwise(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=TF_BN_EPS)


class _SqueezeExcite(nn.Module):
    """x · sigmoid(expand(swish(reduce(spatial mean of x)))), per channel."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class _DepthwiseSeparable(nn.Module):
    """Depthwise k×k (+ BN, swish), squeeze-excitation, 1×1 projection (+ BN); residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.conv_dw = SameConv2d(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.se = _SqueezeExcite(cin, round(cin * SE_RATIO))
        self.conv_pw = _pointwise(cin, cout)
        self.bn2 = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return x + y if self.residual else y


class _InvertedResidual(nn.Module):
    """1×1 expansion, depthwise k×k (each + BN, swish), squeeze-excitation, 1×1 projection (+ BN); residual when
    the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * EXPANSION
        self.residual = stride == 1 and cin == cout
        self.conv_pw = _pointwise(cin, mid)
        self.bn1 = _bn(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = _SqueezeExcite(mid, round(cin * SE_RATIO))
        self.conv_pwl = _pointwise(mid, cout)
        self.bn3 = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class EfficientNetB5(nn.Module):
    """tf_efficientnet_b5(_ap) without pooling and classifier: (B, 3, H, W) → the decoder's five features.

    H and W multiples of 32. `bn2` (the head's batch norm) is part of the checkpoint but not of the features.
    """

    def __init__(self) -> None:
        super().__init__()
        stem = round_channels(32 * WIDTH)
        self.conv_stem = SameConv2d(3, stem, 3, stride=2)
        self.bn1 = _bn(stem)
        stages: list[nn.Module] = []
        cin = stem
        for i, (kernel, stride, cout, repeats) in enumerate(b5_stages()):
            block = _DepthwiseSeparable if i == 0 else _InvertedResidual
            stages.append(nn.Sequential(*[block(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1)
                                          for j in range(repeats)]))
            cin = cout
        self.blocks = nn.Sequential(*stages)
        head = round_channels(1280 * WIDTH)
        self.conv_head = _pointwise(cin, head)
        self.bn2 = _bn(head)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage 0, 1, 2, 4 outputs (24, 40, 64, 176 channels at 1/2 … 1/16) and the 1×1 head (2048 at 1/32)."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        skips = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in SKIP_STAGES:
                skips.append(x)
        return skips + [self.conv_head(x)]


class _Encoder(nn.Module):
    """The checkpoint's `encoder` wrapper around the EfficientNet (`encoder.original_model.*`)."""

    def __init__(self) -> None:
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.original_model(x)


class _UpSampleBN(nn.Module):
    """Bilinear resize (align_corners) to the skip's size, concatenate, twice (3×3 conv, BN, leaky ReLU 0.01)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


def _pixel_mlp(cin: int) -> nn.Sequential:
    """Four 1×1 Conv1d layers (cin → 128 → 128 → 128 → 4) with ReLUs between: a per-pixel MLP."""
    return nn.Sequential(nn.Conv1d(cin, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def normalize_prediction(out: torch.Tensor) -> torch.Tensor:
    """(B, 4, …) raw → (unit normal x, y, z, κ = elu(raw κ) + 1 + 0.01) along dim 1 (norm offset 1e-10)."""
    xyz, kappa = out[:, :3], out[:, 3:]
    norm = torch.sqrt((xyz ** 2).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([xyz / norm, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


def refine(mlp: nn.Sequential, features: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """The next prediction at twice the resolution: features and prediction upsampled ×2 (bilinear, align_corners),
    concatenated, and `mlp` applied at every pixel → (B, 4, 2h, 2w), normalised."""
    feats = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
    init = F.interpolate(prediction, scale_factor=2, mode="bilinear", align_corners=True)
    x = torch.cat([feats, init], dim=1)
    b, c, h, w = x.shape
    return normalize_prediction(mlp(x.reshape(b, c, h * w))).reshape(b, 4, h, w)


class NormalBaeDecoder(nn.Module):
    """The encoder's five features → (B, 4, H, W) normal + κ at the input resolution (evaluation mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        self.up1 = _UpSampleBN(2048 + 176, 1024)  # + the 1/16 skip
        self.up2 = _UpSampleBN(1024 + 64, 512)  # + 1/8
        self.up3 = _UpSampleBN(512 + 40, 256)  # + 1/4
        self.up4 = _UpSampleBN(256 + 24, 128)  # + 1/2
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _pixel_mlp(512 + 4)
        self.out_conv_res2 = _pixel_mlp(256 + 4)
        self.out_conv_res1 = _pixel_mlp(128 + 4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        half, quarter, eighth, sixteenth, head = features
        d1 = self.up1(self.conv2(head), sixteenth)
        d2 = self.up2(d1, eighth)  # 1/8
        d3 = self.up3(d2, quarter)  # 1/4
        d4 = self.up4(d3, half)  # 1/2
        out = normalize_prediction(self.out_conv_res8(d2))
        out = refine(self.out_conv_res4, d2, out)
        out = refine(self.out_conv_res2, d3, out)
        return refine(self.out_conv_res1, d4, out)


class NormalBaeNet(nn.Module):
    """NNET: (B, 3, H, W) ImageNet-normalised RGB, H and W multiples of 32 → (B, 4, H, W) unit normal + κ."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = NormalBaeDecoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def load_normalbae_model(path: Path) -> NormalBaeNet:
    """scannet.pt → NormalBaeNet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = NormalBaeNet()
    return load_exact(net, read_weights(path), path, f"NormalBAE network ({Path(path).name})", assign=True)


def normals_to_rgb(normal: np.ndarray) -> np.ndarray:
    """(…, 3) normals in [-1, 1] → uint8 colours (n + 1) / 2 · 255, clipped and truncated (R = x, G = y, B = z)."""
    return (((normal.astype(np.float32) + 1.0) * 0.5).clip(0, 1) * 255.0).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def predict_normals(net: NormalBaeNet, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 unit normals of an RGB uint8 image whose sides are multiples of 32."""
    param = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(param.device, torch.float32).permute(2, 0, 1)[None] / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    out = net(((x - mean) / std).to(param.dtype))
    return out[0, :3].permute(1, 2, 0).float().cpu().numpy()


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """normal_bae at the processor resolution → (H, W, 3) uint8 normal colours."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    net = NETWORKS.get(files[0], device, load_normalbae_model)
    return unpad(normals_to_rgb(predict_normals(net, padded)))
