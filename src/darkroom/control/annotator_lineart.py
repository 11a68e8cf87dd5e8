"""Line art from photos with the informative-drawings generator: `sk_model.pth` (lineart) and `sk_model2.pth`
(lineart_coarse).

Chan, Durand & Isola, "Learning to generate line drawings that convey geometry and semantics" (CVPR 2022): a
ResNet-style image-to-image generator (7×7 stem, two stride-2 convolutions, 3 residual blocks at 256 channels, two
transposed convolutions, a 7×7 output convolution and a sigmoid; instance norm without learned parameters, reflection
padding). It draws dark lines on white from RGB in 0..1; ControlNet's line-art models want white lines on black, so the
map is inverted, as the A1111 extension does. Checkpoint keys: "model0.1.weight", "model1.0.weight", "model1.3.weight",
"model2.{0,1,2}.conv_block.{1,5}.weight", "model3.0.weight", "model3.3.weight", "model4.1.weight" (and biases).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights


class _Residual(nn.Module):
    """x + (pad, 3×3 conv, norm, ReLU, pad, 3×3 conv, norm)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """(B, 3, H, W) RGB in 0..1 → (B, 1, H, W) line drawing in 0..1 (dark lines on white); H, W multiples of 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, residual_blocks: int = 3) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, 64, 7), nn.InstanceNorm2d(64),
                                    nn.ReLU())
        down: list[nn.Module] = []
        for cin, cout in ((64, 128), (128, 256)):
            down += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.InstanceNorm2d(cout), nn.ReLU()]
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(residual_blocks)])
        up: list[nn.Module] = []
        for cin, cout in ((256, 128), (128, 64)):
            up += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(cout),
                   nn.ReLU()]
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, out_channels, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def load_lineart_model(path: Path) -> LineartGenerator:
    """sk_model.pth / sk_model2.pth → LineartGenerator (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = LineartGenerator()
    return load_exact(net, read_weights(path), path, f"line art generator ({Path(path).name})", assign=True)


@torch.no_grad()
def line_drawing(net: LineartGenerator, rgb: np.ndarray) -> np.ndarray:
    """The generator's drawing (H, W) uint8 of an RGB uint8 image (H, W multiples of 4): dark lines on white."""
    param = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(param.device, param.dtype).permute(2, 0, 1)[None] / 255.0
    line = net(x)[0, 0].float().cpu().numpy()
    return (line * 255.0).clip(0, 255).astype(np.uint8)


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """lineart / lineart_coarse at the processor resolution → (H, W) uint8, white lines on black."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    net = NETWORKS.get(files[0], device, load_lineart_model)
    return 255 - unpad(line_drawing(net, padded))
