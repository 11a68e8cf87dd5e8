"""Seamless tiling: circular padding in the UNet and VAE makes a generation commute with circular shifts (so the
left/right and top/bottom edges join like interior pixels), measurably better edge continuity than without, the
modules restored afterwards, and `Tiling: True` in the infotext."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from darkroom.engine import Engine, GenerationParams, pipeline
from darkroom.engine.tiling import circular_padding, padded_convs
from darkroom.metadata.infotext import params_from_infotext
from darkroom.settings import Settings
from darkroom.testing.tiny import shared_tiny_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("m")
    (root / "checkpoints").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    return Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"))


def _modes(*modules) -> list[str]:
    return [c.padding_mode for c in padded_convs(*modules)]


def test_circular_padding_switches_and_restores_only_padded_convs():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1),
                              torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with circular_padding(net) as n:
        assert n == 2 and [m.padding_mode for m in net] == ["circular", "zeros", "circular"]
        with circular_padding(net) as inner:  # nested: nothing left to switch, nothing restored early
            assert inner == 0
        assert net[0].padding_mode == "circular"
    assert [m.padding_mode for m in net] == ["zeros", "zeros", "reflect"]
    with circular_padding(net, enabled=False) as n:
        assert n == 0 and net[0].padding_mode == "zeros"
    with pytest.raises(RuntimeError, match="boom"), circular_padding(net, None):
        raise RuntimeError("boom")
    assert net[0].padding_mode == "zeros"  # restored on errors too


def test_tiled_generation_commutes_with_circular_shifts(engine):
    """With tiling the whole sampler + decoder is equivariant to rolling the noise (by whole UNet strides): the image
    is a torus, so its edges wrap exactly. Without tiling the zero padding breaks it at the borders."""
    ckpt = engine.load(None)
    pos = pipeline.encode_text(ckpt, "a red circle")
    neg = pipeline.encode_text(ckpt, "", negative=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    shift = (2, 4)  # latent pixels (the tiny UNet downsamples once); ×8 in pixels

    def image(n: torch.Tensor) -> torch.Tensor:
        latent = pipeline.ksample(ckpt, torch.zeros(1, 4, 8, 8), pos, neg, seed=0, steps=3, cfg=5.0,
                                  sampler="euler", scheduler="normal", noise=n)
        return pipeline.decode(ckpt, latent)  # (1, 64, 64, 3)

    with circular_padding(ckpt.unet, ckpt.vae):
        a = image(noise)
        b = image(torch.roll(noise, shift, dims=(2, 3)))
    rolled = torch.roll(a, (8 * shift[0], 8 * shift[1]), dims=(1, 2))
    torch.testing.assert_close(b, rolled, atol=2e-4, rtol=0)
    plain_a, plain_b = image(noise), image(torch.roll(noise, shift, dims=(2, 3)))
    assert (plain_b - torch.roll(plain_a, (16, 32), dims=(1, 2))).abs().max() > 0.05


def _seam_ratio(img) -> float:
    """Mean jump across the wrap seams (right→left, bottom→top) over the mean jump between neighbouring pixels."""
    a = np.asarray(img).astype(np.float64)
    seams = np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean()
    inner = np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean()
    return float(seams / inner)


def test_engine_tiling_option_wraps_edges_and_restores_the_model(engine):
    ckpt = engine.load(None)
    before = _modes(ckpt.unet, ckpt.vae)
    assert set(before) == {"zeros"} and len(before) > 20
    ratios = {False: [], True: []}
    for tiling in (False, True):
        for seed in range(3):
            r = engine.generate(GenerationParams(prompt="a red circle", width=64, height=64, steps=3, seed=seed,
                                                 tiling=tiling))
            ratios[tiling].append(_seam_ratio(r.images[0]))
            assert ("Tiling: True" in r.infotexts[0]) is tiling
            assert _modes(ckpt.unet, ckpt.vae) == before  # restored after every generation
    # tiled seams are about as smooth as any interior step (ratio ≈ 1); untiled ones jump more
    assert np.mean(ratios[True]) < 0.85 * np.mean(ratios[False]), ratios
    params, extras = params_from_infotext(r.infotexts[0])
    assert params.tiling is True and "Tiling" not in extras
    assert params_from_infotext("a cat\nSteps: 20, Seed: 1, Size: 64x64")[0].tiling is False
