"""Anime line art: `netG.pth` (lineart_anime, Anime2Sketch) and `erika.pth` (lineart_anime_denoise,
MangaLineExtraction).

lineart_anime — Anime2Sketch (github.com/Mukosame/Anime2Sketch; Xiang et al., "Adversarial Open Domain Adaptation
for Sketch-to-Photo Synthesis", WACV 2022): a pix2pix U-Net generator with 8 levels (64, 128, 256, 512 × 5 channels),
4×4 stride-2 convolutions down (LeakyReLU 0.2) and transposed convolutions up (ReLU), instance norm without learned
parameters, skip connections by concatenation and a tanh output. Its input is RGB in -1..1 whose sides are multiples
of 256 (the image is stretched there and back, bicubic); it draws dark lines on white in -1..1. Checkpoint keys (32
tensors, 54.4 M parameters), one nesting level per U-Net level: "model.model.0" (3→64 conv), "model.model.3"
(128→1 transposed conv), "model.model.1.model.{1,5}" (64↔128), "model.model.1.model.3.model.{1,5}" (128↔256), …
down to the innermost "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.{1,3}" (512↔512).

lineart_anime_denoise — Li, Liu & Wong, "Deep Extraction of Manga Structural Lines" (SIGGRAPH 2017), the PyTorch
port (github.com/ljsabc/MangaLineExtraction_PyTorch): a residual U-Net on grey 0..255 (no normalisation). Five
encoder stages of pre-activation residual blocks (batch norm eps 1e-3, LeakyReLU 0.2, 3×3 conv; 24, 48, 96, 192,
384 channels; 2, 3, 5, 7, 12 blocks, each stage after the first halving the size in its last block), four decoder
stages (192, 96, 48, 24 channels; 7, 5, 3, 2 blocks, the first upsampling ×2 nearest) each added to the encoder
output of its size, two 16-channel blocks and a 1×1 output: a clean drawing, 255 = paper. Checkpoint keys
"block{0..9}.model.{i}.{conv1,residual}.model.{0,2}.*" (batch norm at 0, conv at 2), "….shortcut.model.0.*" (1×1
projections where the size or width changes) and "conv15.model.{0,2}.*" (707 tensors with the 97 batch norms'
num_batches_tracked counters, 610 without; 43.1 M parameters).

ControlNet's line-art models want white lines on black: netG's drawing is inverted, erika's output subtracted from
255, as the A1111 extension does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights

# ---------------------------------------------------------------------------------------------------------------
# lineart_anime: the Anime2Sketch U-Net (netG.pth)


class _UnetLevel(nn.Module):
    """One U-Net level: down-convolve, run the inner levels, up-convolve; concatenate the level's input in front.

    `self.model` indices match the checkpoint: innermost (no submodule) [LeakyReLU, conv, ReLU, convT, norm];
    outermost [conv, inner, ReLU, convT, tanh]; others [LeakyReLU, conv, norm, inner, ReLU, convT, norm]. The skip
    carries the LeakyReLU'd input, as in pix2pix, whose in-place LeakyReLU overwrites the tensor it concatenates.
    """

    def __init__(self, outer: int, inner: int, submodule: _UnetLevel | None = None, in_channels: int | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1)
        layers: list[nn.Module]
        if submodule is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1),
                      nn.InstanceNorm2d(outer)]
        elif outermost:
            layers = [down, submodule, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1),
                      nn.Tanh()]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        skip = self.model[0](x)
        return torch.cat([skip, self.model[1:](skip)], dim=1)


class AnimeLineartUnet(nn.Module):
    """(B, 3, H, W) RGB in -1..1 → (B, 1, H, W) drawing in -1..1 (dark lines on white); H, W multiples of 2^levels.

    Anime2Sketch's UnetGenerator(3, 1, num_downs=8, ngf=64) with parameter-free instance norm and no dropout.
    """

    def __init__(self, levels: int = 8, width: int = 64) -> None:
        super().__init__()
        level = _UnetLevel(width * 8, width * 8)
        for _ in range(levels - 5):
            level = _UnetLevel(width * 8, width * 8, level)
        for mult in (4, 2, 1):
            level = _UnetLevel(width * mult, width * mult * 2, level)
        self.model = _UnetLevel(1, width, level, in_channels=3, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def load_anime_model(path: Path) -> AnimeLineartUnet:
    """netG.pth → AnimeLineartUnet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = AnimeLineartUnet()
    return load_exact(net, read_weights(path), path, "Anime2Sketch line art U-Net (netG.pth)", assign=True)


@torch.no_grad()
def anime_drawing(net: AnimeLineartUnet, rgb: np.ndarray) -> np.ndarray:
    """The U-Net's drawing (H, W) uint8 of an RGB uint8 image: stretched to multiples of 256 and back (bicubic),
    dark lines on white."""
    import cv2

    h, w = rgb.shape[:2]
    hn, wn = -(-h // 256) * 256, -(-w // 256) * 256
    stretched = cv2.resize(rgb, (wn, hn), interpolation=cv2.INTER_CUBIC)
    param = next(net.parameters())
    x = torch.from_numpy(stretched).to(param.device, param.dtype).permute(2, 0, 1)[None] / 127.5 - 1.0
    line = net(x)[0, 0].float().cpu().numpy() * 127.5 + 127.5
    return cv2.resize(line, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# lineart_anime_denoise: the MangaLineExtraction residual U-Net (erika.pth)


def _bn_act_conv(cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> nn.Sequential:
    """Batch norm (eps 1e-3), LeakyReLU 0.2, a `kernel`² convolution (same padding), then ×2 nearest if `upsample`."""
    layers: list[nn.Module] = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2),
                               nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return nn.Sequential(*layers)


class _Wrapped(nn.Module):
    """A sequential kept under `.model` (the checkpoint's nesting)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Shortcut(nn.Module):
    """y + x, or y + a 1×1 projection of x (strided or upsampled) when the block changes width or size."""

    def __init__(self, cin: int, cout: int, stride: int, upsample: bool) -> None:
        super().__init__()
        self.model: nn.Sequential | None = None
        if cin != cout or stride != 1:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride=stride)]
            if upsample:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + (x if self.model is None else self.model(x))


class _ResidualBlock(nn.Module):
    """Pre-activation residual block: x → shortcut(x) + residual(conv1(x)); conv1 strides 2 or upsamples ×2."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = _Wrapped(_bn_act_conv(cin, cout, 3, stride, upsample))
        self.residual = _Wrapped(_bn_act_conv(cout, cout, 3))
        self.shortcut = _Shortcut(cin, cout, stride, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x, self.residual(self.conv1(x)))


def _stage(cin: int, cout: int, blocks: int, down: bool = False, up: bool = False) -> _Wrapped:
    """`blocks` residual blocks cin→cout; `down`: the last one halves the size, `up`: the first one doubles it."""
    return _Wrapped(nn.Sequential(*[
        _ResidualBlock(cin if i == 0 else cout, cout, stride=2 if down and i == blocks - 1 else 1,
                       upsample=up and i == 0)
        for i in range(blocks)]))


class MangaLineNet(nn.Module):
    """(B, 1, H, W) grey in 0..255 → (B, 1, H, W) clean drawing (about 0..255, 255 = paper); H, W multiples of 16.

    MangaLineExtraction's res_skip: encoder stages block0..block4, decoder stages block5..block8 (each added to the
    encoder output of its size), block9 and the 1×1 output conv15.
    """

    def __init__(self) -> None:
        super().__init__()
        self.block0 = _stage(1, 24, 2)
        self.block1 = _stage(24, 48, 3, down=True)
        self.block2 = _stage(48, 96, 5, down=True)
        self.block3 = _stage(96, 192, 7, down=True)
        self.block4 = _stage(192, 384, 12, down=True)
        self.block5 = _stage(384, 192, 7, up=True)
        self.block6 = _stage(192, 96, 5, up=True)
        self.block7 = _stage(96, 48, 3, up=True)
        self.block8 = _stage(48, 24, 2, up=True)
        self.block9 = _stage(24, 16, 2)
        self.conv15 = _Wrapped(_bn_act_conv(16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.block0(x)
        x1 = self.block1(x0)
        x2 = self.block2(x1)
        x3 = self.block3(x2)
        h = self.block5(self.block4(x3)) + x3
        h = self.block6(h) + x2
        h = self.block7(h) + x1
        h = self.block8(h) + x0
        return self.conv15(self.block9(h))


def load_manga_line_model(path: Path) -> MangaLineNet:
    """erika.pth → MangaLineNet (AnnotatorFileError when the file is another network).

    The batch norms' num_batches_tracked counters (unused at inference) may be absent from the file; they start at 0.
    """
    with torch.device("meta"):
        net = MangaLineNet()
    sd = read_weights(path)
    counters = [k for k in net.state_dict() if k.endswith(".num_batches_tracked")]
    if not any(k in sd for k in counters):
        sd = {**sd, **{k: torch.zeros((), dtype=torch.long) for k in counters}}
    return load_exact(net, sd, path, "MangaLineExtraction network (erika.pth)", assign=True)


@torch.no_grad()
def manga_lines(net: MangaLineNet, rgb: np.ndarray) -> np.ndarray:
    """White lines on black (H, W) uint8 of an RGB uint8 image (H, W multiples of 16): 255 − the clean drawing."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    param = next(net.parameters())
    x = torch.from_numpy(grey).to(param.device, param.dtype)[None, None]
    drawing = net(x)[0, 0].float().cpu().numpy()
    return (255.0 - drawing).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# the preprocessors


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """lineart_anime / lineart_anime_denoise at the processor resolution → (H, W) uint8, white lines on black."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    if preprocessor == "lineart_anime_denoise":
        return unpad(manga_lines(NETWORKS.get(files[0], device, load_manga_line_model), padded))
    return unpad(255 - anime_drawing(NETWORKS.get(files[0], device, load_anime_model), padded))
