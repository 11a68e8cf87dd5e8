"""darkroom.upscale.tiled_img2img: the tile grid's weights are a partition of unity, blending adds no seams, denoise 0
is the plain upscale, one window is a plain img2img, the order matters, conditioning is cropped per tile."""

from __future__ import annotations

import pytest
import torch

from darkroom.engine import pipeline
from darkroom.engine.denoiser import CondItem
from darkroom.engine.resize import common_upscale
from darkroom.models.loader import load_checkpoint
from darkroom.testing.tiny import shared_tiny_checkpoint
from darkroom.testing.upscalers import compact_state_dict
from darkroom.upscale import model_from_state_dict, upscale_image
from darkroom.upscale.tiled_img2img import (TileGrid, crop_conditioning, sd_upscale, tiled_img2img,
                                            upscale_to)

torch.set_num_threads(1)
SAMPLING = dict(seed=7, steps=2, cfg=5.0, sampler="euler", scheduler="normal")


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(shared_tiny_checkpoint("sd15"), dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def conds(ckpt):
    return pipeline.encode_text(ckpt, "a red circle"), pipeline.encode_text(ckpt, "blurry", negative=True)


def picture(h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("size", "tile", "overlap"), [
    ((96, 80), (48, 48), 16), ((200, 136), (64, 48), 24), ((1000, 1000), (512, 512), 256), ((64, 64), (96, 96), 32),
    ((512, 776), (128, 256), 0), ((248, 120), (72, 40), 16),
])
def test_weights_sum_to_one_everywhere(size, tile, overlap) -> None:
    grid = TileGrid.plan(*size, *tile, overlap)
    total = grid.total()
    assert torch.allclose(total, torch.ones(size), atol=1e-6, rtol=0), (total.min(), total.max())
    for i, j in grid.order():
        y, x, h, w = grid.box(i, j)
        assert y % 8 == 0 and x % 8 == 0 and h % 8 == 0 and w % 8 == 0
        assert y + h <= size[0] and x + w <= size[1] and h <= max(tile[0], 8) and w <= max(tile[1], 8)
        assert grid.weight(i, j).min() >= 0
    if size[0] > tile[0] and overlap:  # neighbours blend: inside an overlap both tiles have some weight
        (y1, h1), (y2, _) = grid.ys[0], grid.ys[1]
        assert 0 < grid.wy[0][y2 - y1 + (y1 + h1 - y2) // 2] < 1


def test_chess_order_is_a_checkerboard() -> None:
    grid = TileGrid.plan(96, 96, 48, 48, 16)  # 3 × 3 windows
    assert grid.order("linear") == [(i, j) for i in range(3) for j in range(3)]
    chess = grid.order("chess")
    assert chess[:5] == [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)] and sorted(chess) == grid.order("linear")
    with pytest.raises(ValueError, match="unknown tile order 'spiral'"):
        grid.order("spiral")


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="tile width must be a positive multiple of 8"):
        TileGrid.plan(64, 64, 64, 60, 8)
    with pytest.raises(ValueError, match="overlap must be between 0 and half"):
        TileGrid.plan(64, 64, 64, 64, 40)


class _Identity:
    """A tile sampler that changes nothing (so only the blending touches the pixels) and records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, latent, index, box, canvas_hw):
        self.calls.append((index, box, canvas_hw, tuple(latent.shape)))
        return latent


class _FlatVae:
    """A stand-in VAE for the blending checks: encode keeps the pixels, decode returns them (1/1 'latents')."""

    def __init__(self) -> None:
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"shift_factor": None})()

    def parameters(self):
        return iter([self.p])


def test_blending_a_constant_image_stays_constant(monkeypatch) -> None:
    import darkroom.engine.vae as vae_mod

    def enc(vae, images):
        return images.permute(0, 3, 1, 2).clone()

    def dec(vae, latent):
        return torch.full_like(latent.permute(0, 2, 3, 1), 0.3125)  # every tile comes back the same flat grey

    monkeypatch.setattr(vae_mod, "vae_encode", enc)
    monkeypatch.setattr(vae_mod, "vae_decode", dec)
    flat = torch.full((2, 80, 104, 3), 0.75)
    sampler = _Identity()
    out = tiled_img2img(flat, vae=_FlatVae(), sample_tile=sampler, tile_width=48, tile_height=32, overlap=16)
    assert torch.equal(out, torch.full_like(flat, 0.3125))  # seams of a constant image stay constant
    grid = TileGrid.plan(80, 104, 32, 48, 16)
    assert len(sampler.calls) == 2 * len(grid) and len(grid) > 4
    assert {c[0] for c in sampler.calls} == {0, 1} and all(c[2] == (80, 104) for c in sampler.calls)

    monkeypatch.setattr(vae_mod, "vae_decode", lambda vae, latent: latent.permute(0, 2, 3, 1))
    img = picture(36, 52)  # not multiples of 8: edge-padded for the work, cropped back
    same = tiled_img2img(img, vae=_FlatVae(), sample_tile=_Identity(), tile_width=24, tile_height=24, overlap=8,
                         order="chess")
    assert same.shape == img.shape
    assert torch.allclose(same, img, atol=1e-6)  # unchanged tiles blend back to the input: weights sum to one


def test_denoise_zero_is_the_plain_upscale(ckpt, conds) -> None:
    img = picture()
    out = sd_upscale(ckpt, img, *conds, width=64, height=48, denoise=0.0, tile_width=32, tile_height=32, overlap=8,
                     **SAMPLING)
    plain = common_upscale(img.movedim(-1, 1), 64, 48, "lanczos").movedim(1, -1)
    assert torch.equal(out, plain)
    model = model_from_state_dict(compact_state_dict(scale=2, seed=3), "tiny-x2")
    out = sd_upscale(ckpt, img, *conds, width=96, height=72, denoise=0.0, upscale_model=model, **SAMPLING)
    twice = upscale_image(model, upscale_image(model, img))  # ×2 twice reaches 96 × 72 and more
    assert torch.equal(out, common_upscale(twice.movedim(-1, 1), 96, 72, "lanczos").movedim(1, -1))
    assert torch.equal(upscale_to(img, 64, 48, model=model), upscale_image(model, img))  # exactly ×2: no resize


def test_one_window_is_a_plain_img2img_of_the_upscale(ckpt, conds) -> None:
    img = picture()
    big = upscale_to(img, 64, 48)
    out = sd_upscale(ckpt, img, *conds, width=64, height=48, denoise=0.6, tile_width=64, tile_height=64, overlap=16,
                     **SAMPLING)
    latent = pipeline.ksample(ckpt, pipeline.encode(ckpt, big), *conds, denoise=0.6, **SAMPLING)
    assert torch.equal(out, pipeline.decode(ckpt, latent))


def test_tiles_redraw_everything_and_the_order_matters(ckpt, conds) -> None:
    img = picture(40, 40)
    args = dict(width=80, height=80, denoise=0.7, tile_width=48, tile_height=48, overlap=16, **SAMPLING)
    linear = sd_upscale(ckpt, img, *conds, order="linear", **args)
    chess = sd_upscale(ckpt, img, *conds, order="chess", **args)
    big = upscale_to(img, 80, 80)
    assert linear.shape == (1, 80, 80, 3)
    changed = (linear - big).abs().amax(dim=-1)[0]  # every pixel was redrawn
    assert (changed > 1 / 255).float().mean() > 0.95
    assert not torch.equal(linear, chess)  # later tiles see their redrawn neighbours
    assert torch.equal(linear, sd_upscale(ckpt, img, *conds, order="linear", **args))  # deterministic
    other = sd_upscale(ckpt, img, *conds, order="linear", **{**args, "seed": 8})
    assert not torch.equal(linear, other)


def test_conditioning_is_cropped_to_the_tile() -> None:
    cross = torch.zeros(1, 77, 8)
    mask = torch.arange(16.0).reshape(1, 4, 4)  # mask at 1/16 of a 64 × 64 canvas
    items = [CondItem(cross), CondItem(cross, area=(4, 4, 0, 0)), CondItem(cross, mask=mask)]
    out = crop_conditioning(items, (32, 32, 32, 32), (64, 64))  # the bottom-right quarter
    assert len(out) == 2 and out[0] is items[0]  # the top-left area misses the tile and is dropped
    assert torch.equal(out[1].mask, mask[:, 2:, 2:])
    out = crop_conditioning(items, (16, 0, 32, 32), (64, 64))
    assert out[1].area == (2, 4, 0, 0)  # area rows 2..3 of latent rows 2..5 of the tile
    assert torch.equal(out[2].mask, mask[:, 1:3, 0:2])


def test_control_hints_are_cropped_and_stay_shared() -> None:
    from darkroom.control.apply import AppliedControl

    hint = torch.rand(1, 32, 32, 3)
    unit = AppliedControl(model=None, image=hint)  # type: ignore[arg-type]
    pos = [CondItem(torch.zeros(1, 77, 8), extra={"control": [unit]})]
    neg = [CondItem(torch.zeros(1, 77, 8), extra={"control": [unit]})]
    memo: dict = {}
    p = crop_conditioning(pos, (0, 32, 64, 32), (64, 64), memo)
    n = crop_conditioning(neg, (0, 32, 64, 32), (64, 64), memo)
    (cp,), (cn,) = p[0].extra["control"], n[0].extra["control"]
    assert cp is cn and cp is not unit and torch.equal(cp.image, hint[:, :, 16:])
