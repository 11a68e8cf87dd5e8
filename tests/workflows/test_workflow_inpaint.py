"""Inpainting (VAEEncodeForInpaint, SetLatentNoiseMask) and outpainting (ImagePadForOutpaint): masks are built
as ComfyUI builds them and sampling keeps the unmasked latent exactly."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from darkroom.engine import pipeline
from darkroom.engine.vae import tensor_to_pil


def _latent_mask(noise_mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The mask KSampler uses at latent resolution (bilinear, as ComfyUI's prepare_mask)."""
    m = noise_mask.reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1]).float()
    return torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear")[0, 0]


def test_vae_encode_for_inpaint_greys_pixels_grows_mask_and_keeps_the_rest(studio):
    r = studio.run(studio.workflow("inpaint_vae_encode"))
    image, mask = r.node_outputs["20"]
    y0, y1, x0, x1 = studio.mask_box
    assert mask.shape == (1, 64, 64) and mask[0, y0:y1, x0:x1].min() == 1 and mask.sum() == (y1 - y0) * (x1 - x0)

    encoded = r.node_outputs["11"][0]
    noise_mask = encoded["noise_mask"]
    assert noise_mask.shape == (1, 1, 64, 64)
    expected = torch.zeros((64, 64))
    expected[y0 - 2 : y1 + 3, x0 - 2 : x1 + 3] = 1  # 6x6 box growth, padding 3, as ComfyUI's conv
    torch.testing.assert_close(noise_mask[0, 0], expected)

    ckpt = studio.engine.load("tiny-sd15.safetensors")
    grey = image.clone()
    grey[:, y0:y1, x0:x1, :] = 0.5
    torch.testing.assert_close(encoded["samples"], pipeline.encode(ckpt, grey), rtol=0, atol=1e-5)

    out = r.node_outputs["3"][0]["samples"]
    keep = _latent_mask(noise_mask, 8, 8) == 0
    assert keep.sum() == 64 - 9 and not keep[2:5, 2:5].any()
    # uni_pc combines several x0 predictions, so the kept latents drift a little (as in ComfyUI, which does not
    # paste the source back after sampling); the regenerated area changes far more.
    kept = (out[..., keep] - encoded["samples"][..., keep]).abs()
    changed = (out[..., ~keep] - encoded["samples"][..., ~keep]).abs()
    assert kept.max() < 0.05 and changed.mean() > 10 * kept.mean()
    (path,) = studio.saved(r, "9")
    with Image.open(path) as im:
        assert im.size == (64, 64)


def test_set_latent_noise_mask_changes_only_the_masked_area(studio):
    r = studio.run(studio.workflow("inpaint_noise_mask"))
    source = r.node_outputs["10"][0]["samples"]
    masked = r.node_outputs["12"][0]
    assert masked["noise_mask"].shape == (1, 1, 64, 64) and torch.equal(masked["samples"], source)
    out = r.node_outputs["3"][0]["samples"]
    keep = _latent_mask(masked["noise_mask"], 8, 8) == 0
    assert not keep[2:5, 2:5].any() and keep[0].all() and keep[:, 7].all()
    torch.testing.assert_close(out[..., keep], source[..., keep], rtol=0, atol=1e-5)
    assert (out[..., ~keep] - source[..., ~keep]).abs().mean() > 0.05

    # In pixels the decoder spreads each latent over its receptive field, so only compare magnitudes: the masked
    # area changed far more than rows away from it.
    ckpt = studio.engine.load("tiny-sd15.safetensors")
    (path,) = studio.saved(r, "9")
    got = studio.pixels(path)
    unchanged = np.asarray(tensor_to_pil(pipeline.decode(ckpt, source))[0], dtype=np.int16)
    diff = np.abs(got - unchanged).mean(axis=-1)
    y0, y1, x0, x1 = studio.mask_box
    assert diff[y0:y1, x0:x1].mean() > 2 * diff[:8, :].mean()


def test_outpaint_pads_with_grey_and_a_feathered_mask(studio):
    r = studio.run(studio.workflow("outpaint"))
    padded, mask = r.node_outputs["30"]
    assert padded.shape == (1, 80, 80, 3) and mask.shape == (1, 80, 80)
    source = r.node_outputs["20"][0]
    torch.testing.assert_close(padded[:, 16:, :64], source)
    assert (padded[:, :16] == 0.5).all() and (padded[:, :, 64:] == 0.5).all()
    assert (mask[0, :16] == 1).all() and (mask[0, :, 64:] == 1).all()
    assert mask[0, 16, 0] == 1.0  # first original row: distance 0 to the padded top edge
    assert mask[0, 20, 10] == 0.25  # distance 4 of feathering 8: ((8 - 4) / 8) ** 2
    assert (mask[0, 24:, :56] == 0).all()

    encoded = r.node_outputs["26"][0]
    keep = _latent_mask(encoded["noise_mask"], 10, 10) == 0
    assert keep[5:, :5].all() and not keep[:2].any() and not keep[:, 8:].any()
    out = r.node_outputs["3"][0]["samples"]
    torch.testing.assert_close(out[..., keep], encoded["samples"][..., keep], rtol=0, atol=1e-5)
    (path,) = studio.saved(r, "9")
    with Image.open(path) as im:
        assert im.size == (80, 80)
