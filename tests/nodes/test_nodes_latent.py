"""Latent nodes and the resize/tiling helpers, checked against ComfyUI's formulas on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from darkroom.graph import NodeContext
from darkroom.nodes.latent import (
    EmptyLatentImage,
    LatentComposite,
    LatentFromBatch,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
    crop_to_multiple,
)
from darkroom.engine.resize import bislerp, center_crop, common_upscale, lanczos, tiled_scale


def ctx(name: str = "Test") -> NodeContext:
    return NodeContext(node_id="1", prompt_id="p", class_type=name)


def test_empty_latent_is_zeros_at_an_eighth_of_the_size():
    (out,) = EmptyLatentImage().execute(ctx(), width=100, height=72, batch_size=2)
    assert out["samples"].shape == (2, 4, 9, 12) and out["samples"].abs().sum() == 0


def test_latent_upscale_sizes_follow_comfyui():
    z = torch.randn(1, 4, 8, 12)
    latent = {"samples": z, "noise_mask": torch.ones(1, 1, 64, 96)}
    (same,) = LatentUpscale().execute(ctx(), latent, "bilinear", 0, 0, "disabled")
    assert same is latent
    (by_height,) = LatentUpscale().execute(ctx(), latent, "nearest-exact", 0, 128, "disabled")
    assert by_height["samples"].shape == (1, 4, 16, 24) and by_height["noise_mask"] is latent["noise_mask"]
    (small,) = LatentUpscale().execute(ctx(), latent, "bilinear", 16, 0, "disabled")  # at least 64 px
    assert small["samples"].shape == (1, 4, 8, 8)
    (cropped,) = LatentUpscale().execute(ctx(), latent, "area", 64, 64, "center")
    torch.testing.assert_close(cropped["samples"], z[:, :, :, 2:10])
    (by,) = LatentUpscaleBy().execute(ctx(), latent, "bicubic", 1.5)
    assert by["samples"].shape == (1, 4, 12, 18)
    assert "samples" in latent and latent["samples"] is z  # inputs untouched


def test_bislerp_keeps_the_grid_and_slerps_between_taps():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 3, 5)
    torch.testing.assert_close(bislerp(z, 5, 3), z)
    up = bislerp(z, 10, 3)
    assert up.shape == (1, 4, 3, 10)
    # Output column 1 sits at source x = 0.25 between columns 0 and 1 (bilinear's align_corners=False taps).
    a, b = z[0, :, 0, 0], z[0, :, 0, 1]
    na, nb = a.norm(), b.norm()
    omega = torch.acos(torch.dot(a / na, b / nb))
    expected = (torch.sin(0.75 * omega) * a / na + torch.sin(0.25 * omega) * b / nb) / torch.sin(omega)
    expected = expected * (0.75 * na + 0.25 * nb)
    torch.testing.assert_close(up[0, :, 0, 1], expected, rtol=1e-4, atol=1e-5)


def test_common_upscale_center_crop_and_lanczos():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    assert center_crop(x, 4, 4).shape == (2, 3, 4, 4) and torch.equal(center_crop(x, 4, 4), x[..., 1:5])
    assert common_upscale(x, 3, 2, "nearest-exact", "center").shape == (2, 3, 2, 3)
    img = torch.rand(1, 3, 8, 8)
    out = lanczos(img, 16, 16)
    assert out.shape == (1, 3, 16, 16) and torch.all((out * 255 - (out * 255).round()).abs() < 1e-3)
    with pytest.raises(ValueError, match="unknown upscale method"):
        common_upscale(x, 3, 2, "magic", "disabled")


@pytest.mark.parametrize("tile,overlap", [((4, 4), 1), ((3, 6), 2), ((8, 2), 1)])
def test_tiled_scale_blends_back_to_the_untiled_result(tile, overlap):
    torch.manual_seed(1)
    z = torch.randn(2, 3, 7, 9)

    def up(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, scale_factor=8, mode="nearest")

    torch.testing.assert_close(tiled_scale(z, up, tile, overlap, 8, 3), up(z))
    x = torch.randn(1, 3, 48, 40)

    def down(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, 8)

    torch.testing.assert_close(tiled_scale(x, down, (16, 24), 8, 1 / 8, 3), down(x), rtol=1e-5, atol=1e-6)


def test_latent_composite_pastes_with_feathered_edges():
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 4, 4)}
    (hard,) = LatentComposite().execute(ctx(), to, src, 16, 16, 0)
    assert hard["samples"][0, 0, 2:6, 2:6].min() == 1 and hard["samples"].sum() == 16
    (soft,) = LatentComposite().execute(ctx(), to, src, 16, 16, 16)
    s = soft["samples"][0, 0]
    assert s[2, 2] == 0.25 and s[2, 3] == 0.5 and s[3, 3] == 1.0 and s[5, 5] == 0.25
    (edge,) = LatentComposite().execute(ctx(), to, src, 0, 48, 16)  # touching the left and bottom borders
    e = edge["samples"][0, 0]
    assert e[6, 0] == 0.5 and e[7, 0] == 1.0 and e[7, 3] == 0.5 and e[6, 3] == 0.25 and e[:6].sum() == 0
    assert to["samples"].sum() == 0


def test_batch_nodes_track_batch_index_and_masks():
    z = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 4, 2, 2).clone()
    latent = {"samples": z, "noise_mask": torch.ones(1, 1, 16, 16)}
    (picked,) = LatentFromBatch().execute(ctx(), latent, 1, 2)
    assert picked["batch_index"] == [1, 2] and picked["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert picked["noise_mask"].shape == (1, 1, 16, 16)
    (clamped,) = LatentFromBatch().execute(ctx(), latent, 9, 5)
    assert clamped["batch_index"] == [3] and clamped["samples"].shape[0] == 1
    (rep,) = RepeatLatentBatch().execute(ctx(), picked, 3)
    assert rep["samples"].shape[0] == 6 and rep["batch_index"] == [1, 2, 3, 4, 5, 6]
    masks = {"samples": z[:2], "noise_mask": torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])}
    (rep2,) = RepeatLatentBatch().execute(ctx(), masks, 2)
    assert rep2["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0] and "batch_index" not in rep2


def test_set_latent_noise_mask_reshapes_and_crop_to_multiple():
    (out,) = SetLatentNoiseMask().execute(ctx(), {"samples": torch.zeros(1, 4, 8, 8)}, torch.ones(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64)
    px = torch.rand(1, 50, 74, 3)
    cropped, y0, x0 = crop_to_multiple(px, 8)
    assert cropped.shape == (1, 48, 72, 3) and (y0, x0) == (1, 1) and torch.equal(cropped, px[:, 1:49, 1:73])
    with pytest.raises(ValueError, match="smaller than one latent pixel"):
        crop_to_multiple(torch.rand(1, 4, 4, 3), 8)
    assert math.isclose(float(out["noise_mask"].mean()), 1.0)
