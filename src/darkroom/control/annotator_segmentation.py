"""ADE20K semantic segmentation (`segmentation`, A1111 alias seg_ufade20k) with UniFormer-S + UPerNet:
`upernet_global_small.pth`.

Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (2022), small model in its
"global" variant, with Xiao et al.'s UPerNet head (mmsegmentation's UPerHead and the auxiliary FCNHead used in
training), 150 ADE20K classes. The file is an mmsegmentation checkpoint (`state_dict` + `meta`):

- `backbone.patch_embed{1..4}.{proj,norm}`: convolutional patch embeddings (4×4 stride 4 from RGB, then 2×2 stride 2)
  at 64, 128, 320 and 512 channels, each followed by a LayerNorm over channels.
- `backbone.blocks1.{0..2}`, `backbone.blocks2.{0..3}`: convolution blocks (a 3×3 depthwise position encoding, then
  BatchNorm → 1×1 → 5×5 depthwise → 1×1 as local relation aggregator, BatchNorm → 1×1 MLP at 4×).
- `backbone.blocks3.{0..7}`, `backbone.blocks4.{0..2}`: self-attention blocks (the same position encoding, LayerNorm
  → global multi-head self-attention with 64-wide heads, LayerNorm → MLP at 4×).
- `backbone.norm{1..4}`: LayerNorms (eps 1e-6) on the four stage outputs, at 1/4, 1/8, 1/16 and 1/32 of the input.
- `decode_head.*`: the pyramid pooling module (`psp_modules.{0..3}.1`, pooled to 1, 2, 3 and 6 cells) on stage 4 and
  its `bottleneck`, the FPN (`lateral_convs.{0..2}`, `fpn_convs.{0..2}`, `fpn_bottleneck`), 512 channels, each a
  conv without bias + BatchNorm + ReLU (`.conv`, `.bn`), and the 1×1 classifier `conv_seg`.
- `auxiliary_head.*`: a 3×3 conv (320 → 256, BatchNorm, ReLU) and a classifier on stage 3; training only (it is
  loaded so that the file is checked whole, and is not run to make the map).

Inference as the A1111 extension: the picture is scaled so its short side is the processor resolution and
edge-padded to a multiple of 64; mmsegmentation's test pipeline then rescales it (bilinear, aspect kept) to fit
2048 × 512 (short side 512 for ordinary pictures) and normalises it with the ImageNet mean/std in 0..255. The
extension hands mmsegmentation an RGB array that mmsegmentation takes for BGR and "converts" to RGB, so the network
sees the channels reversed; darkroom does the same, so its maps match the extension's. The logits are resized
(bilinear) to the network input and then to the padded picture, the argmax is taken, the padding cut off, and each
class painted with its colour of the ADE20K palette (mmsegmentation's, the colours the ControlNet seg models read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights

#: UniFormer-S: channels and block counts of the four stages; attention heads are 64 wide.
EMBED_DIMS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD_DIM = 64
MLP_RATIO = 4
#: UPerHead: pyramid pooling grid sizes and channels; auxiliary FCN head channels (on stage 3).
POOL_SCALES = (1, 2, 3, 6)
HEAD_CHANNELS = 512
AUX_CHANNELS = 256
NUM_CLASSES = 150
#: mmsegmentation's test-time rescale: fit within (long side, short side), aspect kept.
MMSEG_SCALE = (2048, 512)
#: ImageNet mean and std in 0..255 (RGB order as the config writes them).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
#: Output rows resized and arg-maxed at a time (bounds memory: 150 float channels per pixel).
BAND_ROWS = 256

#: The 150 ADE20K class colours (RGB), in class order: wall, building, sky, floor, tree, ceiling, road, bed,
#: windowpane, grass, … (mmsegmentation's `ade_palette`). Road and skyscraper (6 and 48) share (140, 140, 140).
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


# ---------------------------------------------------------------------------------------------------------------
# UniFormer-S backbone


def _channel_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm over the channels of a (B, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _PatchEmbed(nn.Module):
    """(B, Cin, H, W) → (B, C, H/p, W/p): a p×p stride-p convolution, then a LayerNorm over channels."""

    def __init__(self, cin: int, cout: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, patch, stride=patch)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_layer_norm(self.norm, self.proj(x))


class _ConvMlp(nn.Module):
    """Per-pixel MLP as 1×1 convolutions: C → hidden → C with GELU, on (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _TokenMlp(nn.Module):
    """Token MLP: C → hidden → C with GELU, on (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _ConvBlock(nn.Module):
    """UniFormer's local block on (B, C, H, W): depthwise 3×3 position encoding, a local relation aggregator
    (BatchNorm, 1×1, depthwise 5×5, 1×1) and a BatchNorm + MLP, each added to the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = _ConvMlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class _SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of (B, N, C), heads `HEAD_DIM` wide."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √head_dim) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _AttentionBlock(nn.Module):
    """UniFormer's global block on (B, C, H, W): depthwise 3×3 position encoding, then a pre-norm transformer layer
    (LayerNorm eps 1e-6) over the H·W tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _SelfAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _TokenMlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class UniFormer(nn.Module):
    """UniFormer-S ("global"): (B, 3, H, W) normalised pixels → four maps (B, C_i, H/s_i, W/s_i), C = 64, 128, 320,
    512 at strides 4, 8, 16, 32 (sizes floored)."""

    def __init__(self) -> None:
        super().__init__()
        cins = (3, *EMBED_DIMS[:-1])
        for i, (cin, dim, depth) in enumerate(zip(cins, EMBED_DIMS, DEPTHS, strict=True), start=1):
            block = _ConvBlock if i <= 2 else _AttentionBlock
            setattr(self, f"patch_embed{i}", _PatchEmbed(cin, dim, 4 if i == 1 else 2))
            setattr(self, f"blocks{i}", nn.ModuleList([block(dim) for _ in range(depth)]))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, len(EMBED_DIMS) + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            outs.append(_channel_layer_norm(getattr(self, f"norm{i}"), x))
        return outs


# ---------------------------------------------------------------------------------------------------------------
# mmsegmentation heads


class _ConvNormReLU(nn.Module):
    """mmcv's ConvModule with BatchNorm: k×k convolution without bias (`conv`), BatchNorm (`bn`), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (align_corners=False, as mmsegmentation's heads)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """UPerNet decoder: four backbone maps → (B, classes, H/4, W/4) logits at the first map's size.

    Pyramid pooling on the last map (average-pooled to 1, 2, 3 and 6 cells, projected, upsampled, concatenated with
    it and fused by `bottleneck`), then an FPN: 1×1 laterals of the other maps plus the upsampled coarser level,
    3×3 convolutions, all levels upsampled to the finest and fused by `fpn_bottleneck`, then the 1×1 classifier.
    """

    def __init__(self, in_channels: tuple[int, ...] = EMBED_DIMS, channels: int = HEAD_CHANNELS,
                 classes: int = NUM_CLASSES) -> None:
        super().__init__()
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(s), _ConvNormReLU(top, channels, 1)) for s in POOL_SCALES])
        self.bottleneck = _ConvNormReLU(top + len(POOL_SCALES) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([_ConvNormReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([_ConvNormReLU(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = _ConvNormReLU(len(in_channels) * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def _pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), x.shape[2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=False)]
        levels.append(self._pyramid_pooling(feats[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: add each coarser level to the next finer one
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels, strict=False)] + [levels[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.conv_seg(fused)


class FCNHead(nn.Module):
    """mmsegmentation's auxiliary FCN head (one 3×3 ConvModule, no input concatenation): (B, C, h, w) stage-3 map →
    (B, classes, h, w) logits. Used in training only."""

    def __init__(self, cin: int = EMBED_DIMS[2], channels: int = AUX_CHANNELS, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.convs = nn.Sequential(_ConvNormReLU(cin, channels, 3))
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.convs(x))


class UperNetUniFormer(nn.Module):
    """mmsegmentation EncoderDecoder: (B, 3, H, W) normalised pixels → (B, 150, H, W) ADE20K class logits (the
    decoder's 1/4-scale logits resized bilinearly to the input). `auxiliary`: hold the training-only FCN head too."""

    def __init__(self, auxiliary: bool = True) -> None:
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UPerHead()
        if auxiliary:
            self.auxiliary_head = FCNHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _resize(self.decode_head(self.backbone(x)), x.shape[2:])


def load_segmentation_model(path: Path) -> UperNetUniFormer:
    """upernet_global_small.pth → UperNetUniFormer (AnnotatorFileError when the file is another network). Files with
    the auxiliary head stripped are accepted too."""
    sd = read_weights(path)
    with torch.device("meta"):
        net = UperNetUniFormer(auxiliary=any(k.startswith("auxiliary_head.") for k in sd))
    return load_exact(net, sd, path, "UniFormer-S UPerNet ADE20K segmentation", assign=True)


# ---------------------------------------------------------------------------------------------------------------
# inference


def mmseg_size(height: int, width: int, scale: tuple[int, int] = MMSEG_SCALE) -> tuple[int, int]:
    """(height, width) mmsegmentation rescales a picture to: the largest that fits (long, short) = `scale`, aspect
    kept, rounded half up (mmcv's rescale_size)."""
    k = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * k + 0.5), int(width * k + 0.5)


def network_input(rgb: np.ndarray, scale: tuple[int, int] = MMSEG_SCALE) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (1, 3, h, w) float32 as the extension's mmsegmentation pipeline makes it: rescaled
    (bilinear) to `mmseg_size`, channels reversed (see the module docstring), minus MEAN, over STD."""
    import cv2

    h, w = mmseg_size(rgb.shape[0], rgb.shape[1], scale)
    if (h, w) != rgb.shape[:2]:
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    x = (rgb[:, :, ::-1].astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def upsample_argmax(logits: torch.Tensor, height: int, width: int, band: int = BAND_ROWS) -> torch.Tensor:
    """argmax over classes of (1, C, h, w) logits resized bilinearly (align_corners=False) to height × width
    → (height, width) int64 classes; computed `band` output rows at a time with grid_sample, which samples at the
    same points as F.interpolate, so the full-size logits never exist at once."""
    dev = logits.device
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) / width * 2 - 1  # pixel centres in [-1, 1]
    labels = torch.empty(height, width, dtype=torch.long, device=dev)
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        ys = (torch.arange(y0, y1, device=dev, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].to(logits.dtype)
        part = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
        labels[y0:y1] = part[0].argmax(dim=0)
    return labels


@torch.no_grad()
def segment(net: UperNetUniFormer, rgb: np.ndarray, scale: tuple[int, int] = MMSEG_SCALE) -> np.ndarray:
    """ADE20K classes (H, W) uint8 (0..149) of an (H, W, 3) uint8 RGB picture."""
    param = next(net.parameters())
    logits = net(network_input(rgb, scale).to(param.device, param.dtype))
    return upsample_argmax(logits, rgb.shape[0], rgb.shape[1]).to(torch.uint8).cpu().numpy()


def colorize(classes: np.ndarray) -> np.ndarray:
    """(H, W) ADE20K class indices → (H, W, 3) uint8 RGB in the ADE20K palette."""
    return np.asarray(ADE20K_PALETTE, np.uint8)[classes]


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """segmentation at the processor resolution → (H, W, 3) uint8 ADE20K colour map."""
    from .preprocess import resize_short_side

    padded, unpad = pad_to_multiple(resize_short_side(image, resolution), 64)
    net = NETWORKS.get(files[0], device, load_segmentation_model)
    return colorize(unpad(segment(net, padded, MMSEG_SCALE)))
