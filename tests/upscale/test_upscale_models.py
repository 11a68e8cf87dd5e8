"""Upscaler loading: tiny random weights in each real key layout (old ESRGAN, BSRGAN, Real-ESRGAN x4plus/x2plus,
Compact) load with the right scale and output size; layouts of the same weights agree exactly; full-size layouts
are detected with the real hyper-parameters; tiled output matches untiled; bad files give clear errors."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from darkroom.models.errors import ModelFileError, UnsafeModelFileError
from darkroom.models.family import UnsupportedModelError
from darkroom.testing.upscalers import compact_state_dict, esrgan_state_dict, write_upscaler
from darkroom.upscale import (
    RRDBNet,
    SRVGGNetCompact,
    UpscaleModelError,
    load_upscale_model,
    model_from_state_dict,
    tile_spans,
    upscale_image,
    upscale_tensor,
)
from darkroom.upscale.loader import build_compact, build_rrdbnet

torch.set_num_threads(2)

CASES = [  # (layout, scale, architecture label)
    ("old", 4, "ESRGAN"), ("old", 2, "ESRGAN"), ("old", 1, "ESRGAN"), ("old", 8, "ESRGAN"),
    ("new", 4, "ESRGAN"), ("new", 2, "Real-ESRGAN (RRDBNet, pixel-unshuffle)"),
    ("new", 1, "Real-ESRGAN (RRDBNet, pixel-unshuffle)"), ("bsrgan", 4, "ESRGAN"), ("bsrgan", 2, "ESRGAN"),
]


@pytest.mark.parametrize("layout,scale,label", CASES)
def test_esrgan_layouts_load_with_scale_and_size(tmp_path, layout, scale, label):
    path = write_upscaler(tmp_path / f"{layout}x{scale}.safetensors", esrgan_state_dict(layout, scale=scale, nb=2))
    model = load_upscale_model(path)
    assert (model.scale, model.architecture, model.backend, model.input_channels) == (scale, label, "darkroom", 3)
    assert model.tags == ("8nf", "2nb")
    images = torch.rand(2, 13, 10, 3)  # odd sizes: the x2plus/x1 pixel-unshuffle pads and crops
    out = upscale_image(model, images)
    assert out.shape == (2, 13 * scale, 10 * scale, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("scale", [4, 2])
def test_compact_loads_with_scale_and_size(tmp_path, scale):
    path = write_upscaler(tmp_path / "realesr-general-x4v3.safetensors", compact_state_dict(scale=scale, num_conv=3))
    model = load_upscale_model(path)
    assert (model.scale, model.architecture, model.tags) == (scale, "Real-ESRGAN Compact", ("8nf", "3nc"))
    out = upscale_image(model, torch.rand(1, 9, 11, 3))
    assert out.shape == (1, 9 * scale, 11 * scale, 3)


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_old_new_and_bsrgan_layouts_of_the_same_weights_give_identical_output(scale):
    x = torch.rand(1, 3, 12, 12)
    outs = []
    for layout in ("new", "old", "bsrgan"):
        sd = esrgan_state_dict(layout, scale=scale, nb=2, seed=7, unshuffle=False)
        outs.append(model_from_state_dict(sd)(x))
    assert outs[0].shape == (1, 3, 12 * scale, 12 * scale)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_real_key_names_of_the_old_layout():
    """4x-UltraSharp's sequential names: upsample convs at model.3/6, HR conv model.8, last conv model.10."""
    sd = esrgan_state_dict("old", full_size=True)
    assert {k for k in sd if ".sub." not in k} == {f"model.{i}.{p}" for i in (0, 3, 6, 8, 10)
                                                 for p in ("weight", "bias")}
    assert "model.1.sub.23.weight" in sd and "model.1.sub.22.RDB3.conv5.0.weight" in sd
    assert tuple(sd["model.1.sub.0.RDB1.conv1.0.weight"].shape) == (32, 64, 3, 3)


@pytest.mark.parametrize("layout,scale,in_ch,shuffle", [("old", 4, 3, 1), ("new", 4, 3, 1), ("new", 2, 12, 2),
                                                         ("bsrgan", 4, 3, 1)])
def test_full_size_hyperparameters_detected(layout, scale, in_ch, shuffle):
    """RealESRGAN_x4plus / x2plus / 4x-UltraSharp / BSRGAN shapes (meta tensors): nf 64, nb 23, gc 32."""
    sd = esrgan_state_dict(layout, scale=scale, full_size=True)
    with torch.device("meta"):
        net, own = build_rrdbnet(sd)
    assert (len(net.body), net.conv_first.out_channels, net.body[0].rdb1.conv1.out_channels) == (23, 64, 32)
    assert (net.conv_first.in_channels, net.shuffle, net.scale) == (in_ch, shuffle, scale)
    assert set(own) == set(net.state_dict())
    with torch.device("meta"):
        compact = build_compact(compact_state_dict(full_size=True))  # realesr-general-x4v3: 32 convs
    assert (len(compact.body), compact.scale, compact.body[0].out_channels) == (2 * 32 + 3, 4, 64)


def test_architecture_semantics():
    """Compact learns a residual over nearest upsampling; RRDBNet ends in conv_last; x2plus sees unshuffled input."""
    x = torch.rand(1, 3, 6, 7)
    compact = SRVGGNetCompact(nf=4, num_conv=1, scale=2)
    with torch.no_grad():
        for p in compact.parameters():
            p.zero_()
    assert torch.equal(compact(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    net = RRDBNet(nf=4, nb=1, gc=2, n_up=2)
    with torch.no_grad():
        net.conv_last.weight.zero_()
        net.conv_last.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(net(x), torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 24, 28))
    x2 = RRDBNet(in_ch=12, nf=4, nb=1, gc=2, n_up=2, shuffle=2)
    seen = []
    x2.conv_first.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    assert x2(torch.rand(1, 3, 8, 10)).shape == (1, 3, 16, 20)
    assert seen[0].shape == (1, 12, 4, 5)


def test_tiled_output_equals_untiled_within_tolerance():
    x = torch.rand(1, 3, 48, 57)
    # Compact with 2 body convs sees 4 px around a pixel: with overlap 16 the discarded w/4 = 4 px margin covers it,
    # so tiles reproduce the whole-image output up to float rounding.
    compact = model_from_state_dict(compact_state_dict(scale=4, seed=3, std=1.0, num_conv=2))
    whole = upscale_tensor(compact, x, tile=64)
    assert torch.equal(whole, compact(x))  # one tile: the plain forward
    assert float(whole.std()) > 0.1  # the model does something, so the comparison means something
    torch.testing.assert_close(upscale_tensor(compact, x, tile=32, overlap=16), whole, atol=2e-5, rtol=0)
    # ESRGAN's receptive field (~17 px) is wider than the margin: seams are feathered, errors stay small
    esrgan = model_from_state_dict(esrgan_state_dict("old", scale=4, nb=1, seed=3, std=1.0))
    whole = upscale_tensor(esrgan, x, tile=64)
    spread = float(whole.std())
    for tile, overlap, mean_tol, max_tol in ((20, 8, 0.01, 0.25), (32, 16, 1e-4, 0.005), (40, 20, 1e-5, 3e-4)):
        tiled = upscale_tensor(esrgan, x, tile=tile, overlap=overlap)
        err = (tiled - whole).abs()
        assert tiled.shape == whole.shape == (1, 3, 192, 228)
        assert float(err.mean()) < mean_tol * spread and float(err.max()) < max_tol * spread, (tile, overlap)
    # Real-ESRGAN x2plus: tiles start on even pixels (pixel-unshuffle) and the overlap doubles
    x2 = model_from_state_dict(esrgan_state_dict("new", scale=2, nb=1, seed=3, std=1.0))
    assert x2.size_multiple == 2 and tile_spans(57, 20, 8, 2) == [(0, 20), (12, 20), (24, 20), (36, 21)]
    whole = upscale_tensor(x2, x, tile=64)
    err = (upscale_tensor(x2, x, tile=40, overlap=10) - whole).abs()
    assert float(err.mean()) < 1e-3 * float(whole.std())


def test_tile_shrinks_after_gpu_out_of_memory(caplog):
    """Tiles larger than the model 'fits' raise OutOfMemoryError; the run restarts with halved tiles."""
    base = model_from_state_dict(compact_state_dict(scale=2, seed=1))
    sizes = []

    class Picky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = base.module

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            sizes.append(max(t.shape[-2:]))
            if max(t.shape[-2:]) > 32:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
            return self.inner(t)

    model = model_from_state_dict(compact_state_dict(scale=2, seed=1))
    model.module = Picky()
    x = torch.rand(1, 3, 70, 70)
    out = upscale_tensor(model, x, tile=128, overlap=4, min_tile=16)
    assert out.shape == (1, 3, 140, 140) and sizes[:2] == [70, 64] and max(sizes[2:]) <= 32
    assert "retrying with 64 px tiles" in caplog.text and "retrying with 32 px tiles" in caplog.text
    torch.testing.assert_close(out, upscale_tensor(base, x, tile=32, overlap=4))
    with pytest.raises(torch.OutOfMemoryError):
        upscale_tensor(model, x, tile=128, overlap=4, min_tile=64)


def test_bad_files_and_inputs_give_clear_errors(tmp_path):
    sd = esrgan_state_dict("new", scale=4)
    pth = write_upscaler(tmp_path / "RealESRGAN_x4plus.pth", sd, wrap="params_ema")
    with pytest.raises(UnsafeModelFileError, match="refusing to load .*pickles"):
        load_upscale_model(pth)
    model = load_upscale_model(pth, allow_unsafe_pickle=True)  # weights_only=True, params_ema unwrapped
    assert model.scale == 4 and model.architecture == "ESRGAN"
    good = write_upscaler(tmp_path / "good.safetensors", sd)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_upscale_model(truncated)
    with pytest.raises(ModelFileError, match="not found"):
        load_upscale_model(tmp_path / "missing.safetensors")
    swin = write_upscaler(tmp_path / "swinir.safetensors", {"layers.0.residual_group.blocks.0.norm1.weight":
                                                            torch.ones(4)})
    with pytest.raises(UnsupportedModelError, match="spandrel"):
        load_upscale_model(swin, backend="darkroom")
    missing = {k: v for k, v in sd.items() if k != "conv_hr.weight"}
    with pytest.raises(UpscaleModelError, match="missing conv_hr.weight"):
        model_from_state_dict(missing, "broken")
    plus = {**esrgan_state_dict("old"), "model.1.sub.0.RDB1.conv1x1.weight": torch.ones(4, 8, 1, 1)}
    with pytest.raises(UpscaleModelError, match=r"ESRGAN\+"):
        model_from_state_dict(plus, "esrgan+")
    odd = {**compact_state_dict(), "body.6.weight": torch.ones(20, 8, 3, 3), "body.6.bias": torch.ones(20)}
    with pytest.raises(UpscaleModelError, match="not 3·scale²"):
        model_from_state_dict(odd, "odd")
    with pytest.raises(ValueError, match="takes 3-channel images"):
        upscale_tensor(model, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        upscale_tensor(model, torch.rand(1, 3, 8, 8), tile=64, overlap=40)


def test_spandrel_is_used_for_other_architectures_when_it_imports(monkeypatch):
    """A stand-in `spandrel` module (test only) shows the dispatch: unknown keys go to spandrel's ModelLoader."""
    fake = types.ModuleType("spandrel")

    class ImageModelDescriptor:
        def __init__(self, sd):
            self.model = torch.nn.Conv2d(3, 3 * 4, 1)
            self.scale, self.input_channels, self.output_channels, self.tags = 2, 3, 3, ["x"]
            self.architecture = types.SimpleNamespace(name="SwinIR")
            self.sd = sd

        def eval(self):
            return self

        def to(self, *a):
            self.model.to(*a)
            return self

        def __call__(self, x):
            return F.pixel_shuffle(self.model(x), 2)

    class ModelLoader:
        def load_from_state_dict(self, sd):
            return ImageModelDescriptor(sd)

    fake.ImageModelDescriptor, fake.ModelLoader = ImageModelDescriptor, ModelLoader
    monkeypatch.setitem(sys.modules, "spandrel", fake)
    model = model_from_state_dict({"module.layers.0.x": torch.ones(1)}, "swinir")
    assert (model.backend, model.architecture, model.scale) == ("spandrel", "SwinIR", 2)
    assert upscale_image(model, torch.rand(1, 5, 6, 3)).shape == (1, 10, 12, 3)
    # our own families stay on darkroom's loaders unless spandrel is asked for
    assert model_from_state_dict(esrgan_state_dict("old")).backend == "darkroom"
    assert model_from_state_dict(esrgan_state_dict("old"), backend="spandrel").backend == "spandrel"
