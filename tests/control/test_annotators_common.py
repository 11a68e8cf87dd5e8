"""What every annotator network shares: which preprocessors run, reading weight files, the LRU of loaded networks,
the 64-pixel padding, the device choice, and the errors for what is missing or not implemented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from darkroom.control import annotators as an
from darkroom.control.preprocess import get_preprocessor


def test_implemented_networks_are_known_preprocessors_with_their_files():
    assert set(an.RUNNERS) == {"openpose", "openpose_hand", "openpose_face", "openpose_faceonly",
                               "openpose_full", "dw_openpose_full", "hed", "hed_safe", "scribble_hed", "lineart",
                               "lineart_coarse", "depth_anything", "depth_anything_v2", "depth", "normal_map",
                               "normal_bae", "pidinet", "pidinet_safe", "pidinet_sketch", "pidinet_scribble", "mlsd",
                               "lineart_anime", "lineart_anime_denoise", "segmentation"}
    for name in an.RUNNERS:
        assert name in an.ANNOTATORS and get_preprocessor(name).run is None  # still "needs weights"


def test_a_network_darkroom_does_not_run_says_so(tmp_path):
    (tmp_path / "250_16_swin_l_oneformer_ade20k_160k.pth").write_bytes(b"x")
    with pytest.raises(an.AnnotatorUnavailableError,
                       match="found .*250_16_swin_l_oneformer_ade20k_160k.pth.*cannot run the OneFormer"):
        an.run_annotator("oneformer_ade20k", [tmp_path], tmp_path, np.zeros((8, 8, 3), np.uint8))


def test_a_missing_file_is_named_with_where_it_goes(tmp_path):
    home = tmp_path / "models" / "annotators"
    with pytest.raises(an.AnnotatorMissingError) as ex:
        an.run_annotator("lineart_coarse", [], home, np.zeros((8, 8, 3), np.uint8))
    assert "sk_model2.pth" in str(ex.value) and str(home / "sk_model2.pth") in str(ex.value)


def test_read_weights_unwraps_and_reads_both_formats(tmp_path):
    t = torch.arange(4.0)
    torch.save({"state_dict": {"module.a.weight": t}}, tmp_path / "wrapped.pth")
    assert list(an.read_weights(tmp_path / "wrapped.pth")) == ["a.weight"]
    save_file({"a.weight": t}, str(tmp_path / "plain.safetensors"))
    assert torch.equal(an.read_weights(tmp_path / "plain.safetensors")["a.weight"], t)
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    with pytest.raises(an.AnnotatorFileError, match="cannot read annotator weights .*broken.pth"):
        an.read_weights(tmp_path / "broken.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(an.AnnotatorFileError, match="not a state dict"):
        an.read_weights(tmp_path / "list.pth")


def test_load_exact_checks_keys_and_shapes_and_casts_to_float32(tmp_path):
    module = nn.Linear(3, 2)
    good = {"weight": torch.ones(2, 3, dtype=torch.float16), "bias": torch.zeros(2, dtype=torch.float16)}
    an.load_exact(module, good, tmp_path / "f.pth", "toy")
    assert module.weight.dtype == torch.float32 and module.weight.sum().item() == 6.0
    with pytest.raises(an.AnnotatorFileError, match=r"f.pth is not a toy checkpoint \(missing: bias; unexpected: x"):
        an.load_exact(module, {"weight": good["weight"], "x": good["bias"]}, tmp_path / "f.pth", "toy")


def test_network_cache_is_a_small_lru_per_file_and_device(tmp_path):
    cache = an.NetworkCache(max_items=2)
    built: list[str] = []

    def build(path):
        built.append(path.name)
        return nn.Linear(1, 1)

    files = []
    for name in ("a.pth", "b.pth", "c.pth"):
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    cpu = torch.device("cpu")
    a = cache.get(files[0], cpu, build)
    assert cache.get(files[0], cpu, build) is a and not a.training
    cache.get(files[1], cpu, build)
    cache.get(files[0], cpu, build)  # a is now the most recent
    cache.get(files[2], cpu, build)  # evicts b
    assert len(cache) == 2 and built == ["a.pth", "b.pth", "c.pth"]
    cache.get(files[1], cpu, build)
    assert built[-1] == "b.pth"
    (tmp_path / "a.pth").write_bytes(b"changed")  # a replaced file is loaded again
    cache.get(files[0], cpu, build)
    assert built[-1] == "a.pth"
    cache.clear()
    assert len(cache) == 0


def test_padding_to_64_repeats_the_edge_and_is_undone():
    img = np.arange(70 * 100 * 3, dtype=np.uint32).reshape(70, 100, 3).astype(np.uint8)
    padded, unpad = an.pad_to_multiple(img, 64)
    assert padded.shape == (128, 128, 3)
    assert np.array_equal(padded[69:, :100], np.repeat(img[-1:], 59, axis=0))
    assert np.array_equal(padded[:70, 99:], np.repeat(img[:, -1:], 29, axis=1))
    assert np.array_equal(unpad(padded), img)
    same, _ = an.pad_to_multiple(np.zeros((64, 128), np.uint8), 64)
    assert same.shape == (64, 128)


def test_device_choice():
    assert an.annotator_device("cpu") == torch.device("cpu")
    assert an.annotator_device(torch.device("cpu")) == torch.device("cpu")
    assert an.annotator_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        an.annotator_device("tpu")
