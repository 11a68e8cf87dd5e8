"""Upscaler architectures written for darkroom: ESRGAN's RRDBNet and Real-ESRGAN's compact SRVGGNet.

Module names follow the Real-ESRGAN/BasicSR key layout (`conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1`,
`conv_hr`, `conv_last`; `body.N` for the compact net), so those files load with `load_state_dict` directly and the
other layouts are renamed onto them by `darkroom.upscale.loader`.

- RRDBNet: Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks"; Real-ESRGAN
  (Wang et al. 2021) feeds ×2/×1 models a pixel-unshuffled input to the same ×4 trunk.
- SRVGGNetCompact: Real-ESRGAN's compact VGG-style net (realesr-general-x4v3, realesr-animevideov3): convs + PReLU
  at low resolution, one pixel shuffle, plus the nearest-upsampled input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; returns x + 0.2·conv5([x, x1 … x4])."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv(nf, gc)
        self.conv2 = _conv(nf + gc, gc)
        self.conv3 = _conv(nf + 2 * gc, gc)
        self.conv4 = _conv(nf + 3 * gc, gc)
        self.conv5 = _conv(nf + 4 * gc, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: x + 0.2·rdb3(rdb2(rdb1(x)))."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator: conv_first → nb RRDBs (+ conv_body, residual) → n_up × (nearest ×2, conv, lrelu) → conv_hr
    → conv_last. `shuffle` > 1 pixel-unshuffles the input first (Real-ESRGAN ×2: 2, ×1: 4), so the net's scale is
    2**n_up / shuffle."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, n_up: int = 2,
                 shuffle: int = 1) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.n_up = n_up
        self.conv_first = _conv(in_ch, nf)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = _conv(nf, nf)
        for i in range(1, n_up + 1):
            setattr(self, f"conv_up{i}", _conv(nf, nf))
        self.conv_hr = _conv(nf, nf)
        self.conv_last = _conv(nf, out_ch)

    @property
    def scale(self) -> int:
        return 2**self.n_up // self.shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C_out, H·scale, W·scale)."""
        h, w = x.shape[-2:]
        if self.shuffle > 1:
            s = self.shuffle
            ph, pw = (-h) % s, (-w) % s
            if ph or pw:  # reflect-pad to a multiple of the shuffle factor, cropped again below
                x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
            x = F.pixel_unshuffle(x, s)  # (B, C·s², H/s, W/s)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.n_up + 1):
            up = getattr(self, f"conv_up{i}")
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        if self.shuffle > 1:
            out = out[..., : h * self.scale, : w * self.scale]
        return out


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN compact net: body = [conv, PReLU, (conv, PReLU) × num_conv, conv → C·s²], pixel shuffle ×s,
    plus the nearest-upsampled input (the net learns the residual)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nf: int = 64, num_conv: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [_conv(in_ch, nf), nn.PReLU(nf)]
        for _ in range(num_conv):
            layers += [_conv(nf, nf), nn.PReLU(nf)]
        layers.append(_conv(nf, out_ch * scale * scale))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H·scale, W·scale)."""
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)  # (B, C, H·s, W·s)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")
