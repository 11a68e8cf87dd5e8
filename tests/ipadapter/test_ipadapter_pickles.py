"""Pickled IP-Adapters (h94/IP-Adapter's `.bin`, the A1111 ControlNet extension's `.pth` copies: a torch.save of
`{"image_proj": {...}, "ip_adapter": {...}}`) follow the pickle policy: refused with `unsafe_pickle_error`'s message
(plus a conversion that keeps the nested tensors) unless allow_unsafe_pickle; allowed, they load to the tensors of
the same adapter saved as `.safetensors` and give its pixels through the nodes and the engine. Listing: every file in
models/ipadapter is an IP-Adapter; a pickle in models/controlnet only when allowed, and the ControlNet lists and A1111's
/controlnet/model_list stay as they were."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ipa_studio import ENCODER, REFERENCE, reference_picture
from ipa_tiny import ipadapter_state_dict, nested, tiny_clip_vision, write_clip_vision
from PIL import Image
from safetensors.torch import save_file
from test_ipadapter_nodes import BASE, with_ipadapter

from darkroom.control.units import ControlNetUnit
from darkroom.engine import GenerationParams, RequestError
from darkroom.ipadapter.model import load_ipadapter, read_ipadapter_state_dict
from darkroom.ipadapter.units import AdapterInfo, adapter_info, ipadapter_files
from darkroom.models import registry as registry_module
from darkroom.models.errors import ModelFileError, UnsafeModelFileError
from darkroom.models.files import unsafe_pickle_error
from darkroom.nodes import run_workflow
from darkroom.testing.studio import CHECKPOINT, make_tiny_studio, start_live_server

BIN = "ip-adapter_sd15.bin"  # h94/IP-Adapter's name, in models/ipadapter
SAFE = "ip-adapter_sd15-converted.safetensors"  # the same tensors, in models/ipadapter
LIGHT_PTH = "ip-adapter_sd15_light.pth"  # a pickle under the extension's suffix, in models/ipadapter
PLUS_SAFE = "ip-adapter-plus_sd15.safetensors"  # in models/ipadapter
PLUS_PTH = "ip-adapter_sd15_plus.pth"  # the A1111 extension's copy of the same tensors, in models/controlnet
CANNY_PTH = "control_v11p_sd15_canny.pth"  # a pickled ControlNet, in models/controlnet
SETTING = "allow_unsafe_pickle"


def tiny_unet():
    from darkroom.testing.tiny import shared_tiny_components

    return shared_tiny_components("sd15")["unet"]


@pytest.fixture(scope="module", autouse=True)
def ipadapter_pth_listed():
    """models/ipadapter lists `.pth` files (kept whether or not the registry lists them already)."""
    with pytest.MonkeyPatch.context() as mp:
        exts = registry_module.EXTENSIONS["ipadapter"]
        mp.setitem(registry_module.EXTENSIONS, "ipadapter", tuple(dict.fromkeys([*exts, ".pth"])))
        yield


@pytest.fixture(scope="module")
def studio():
    """A tiny studio with the adapters above, a CLIP vision encoder and a reference picture."""
    st = make_tiny_studio("darkroom-ipa-pickles-", threads=1)
    unet = tiny_unet()
    write_clip_vision(st.root / "clip_vision" / ENCODER, tiny_clip_vision(seed=3))
    plain, plus = ipadapter_state_dict(unet, "plain", seed=4), ipadapter_state_dict(unet, "plus", seed=9)
    (st.root / "ipadapter").mkdir()
    (st.root / "controlnet").mkdir()
    save_file(plain, str(st.root / "ipadapter" / SAFE))
    torch.save(nested(plain), st.root / "ipadapter" / BIN)
    torch.save(nested(ipadapter_state_dict(unet, "plain", seed=6)), st.root / "ipadapter" / LIGHT_PTH)
    save_file(plus, str(st.root / "ipadapter" / PLUS_SAFE))
    torch.save(nested(plus), st.root / "controlnet" / PLUS_PTH)
    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
                "control_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, st.root / "controlnet" / CANNY_PTH)
    reference_picture().save(st.input_dir / REFERENCE)
    return st


@pytest.fixture
def allow(studio, monkeypatch):
    """Turn the studio's allow_unsafe_pickle on or off for one test."""
    return lambda on: monkeypatch.setattr(studio.engine.settings, SETTING, on)


class NotATensor:
    """An object torch.load(weights_only=True) must refuse to build."""


def test_pickle_loads_to_the_safetensors_tensors_and_is_refused_unless_allowed(tmp_path, monkeypatch):
    unet = tiny_unet()
    for kind, seed, name in (("plain", 4, BIN), ("plus", 9, PLUS_PTH), ("full", 2, "ip-adapter-full-face_sd15.bin")):
        sd = ipadapter_state_dict(unet, kind, seed=seed)
        safe, pickled = tmp_path / f"{kind}.safetensors", tmp_path / name
        save_file(sd, str(safe))
        torch.save(nested(sd), pickled)
        flat = read_ipadapter_state_dict(pickled, allow_unsafe_pickle=True)
        assert sorted(flat) == sorted(sd) and sum(k.startswith("image_proj.") for k in flat) == \
            {"plain": 4, "plus": 51, "full": 6}[kind]
        assert all(torch.equal(flat[k], sd[k]) for k in sd)
        from_pickle, from_safe = load_ipadapter(pickled, allow_unsafe_pickle=True), load_ipadapter(safe)
        assert from_pickle.kind == from_safe.kind == kind and from_pickle.name == Path(name).stem
        ref, got = from_safe.state_dict(), from_pickle.state_dict()
        assert sorted(got) == sorted(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
        assert adapter_info(pickled, allow_unsafe_pickle=True) == adapter_info(safe) != None  # noqa: E711
        assert adapter_info(pickled) is None  # not unpickled to tell
        with pytest.raises(UnsafeModelFileError) as refused:
            load_ipadapter(pickled)
        message = str(refused.value)
        assert message.startswith(str(unsafe_pickle_error(pickled))) and str(pickled) in message
        assert "allow_unsafe_pickle" in message and "weights_only=True" in message
        # the IP-Adapter conversion the message gives keeps the nested tensors
        monkeypatch.chdir(tmp_path)
        exec(re.findall(r'python -c "(.*)"', message)[-1], {})  # noqa: S102 — the command the user would run
        converted = read_ipadapter_state_dict(pickled.with_suffix(".safetensors"))
        assert sorted(converted) == sorted(sd) and all(torch.equal(converted[k], sd[k]) for k in sd)
    assert adapter_info(tmp_path / BIN, allow_unsafe_pickle=True) == AdapterInfo(
        "plain", unet.config.cross_attention_dim, 32)
    # weights_only=True: a pickle of anything but tensors and containers is not unpickled; garbage is named
    torch.save({"image_proj": {"proj.weight": NotATensor()}}, tmp_path / "evil.bin")
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle at all")
    for bad in ("evil.bin", "garbage.pth"):
        with pytest.raises(ModelFileError, match=re.escape(str(tmp_path / bad)) + ".*weights_only=True"):
            load_ipadapter(tmp_path / bad, allow_unsafe_pickle=True)
        assert adapter_info(tmp_path / bad, allow_unsafe_pickle=True) is None


def run(studio, wf: dict, out: Path) -> np.ndarray:
    out.mkdir()
    result = run_workflow(wf, engine=studio.engine, input_dir=studio.input_dir, output_dir=out, temp_dir=out / "t")
    assert result.status == "success", result.error
    (png,) = out.rglob("*.png")
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)


def loading(name: str) -> dict:
    wf = with_ipadapter(1.0, start=0.0, end=0.7)
    wf["12"]["inputs"]["ipadapter_file"] = name
    return wf


def test_node_loads_the_bin_to_the_safetensors_pixels(studio, allow, tmp_path):
    allow(False)
    refused = run_workflow(loading(BIN), engine=studio.engine, input_dir=studio.input_dir, output_dir=tmp_path,
                           temp_dir=tmp_path / "t")
    assert refused.status != "success"
    assert str(studio.root / "ipadapter" / BIN) in str(refused.error) and SETTING in str(refused.error)
    safe = run(studio, loading(SAFE), tmp_path / "safe")
    assert np.abs(safe - run(studio, copy.deepcopy(BASE), tmp_path / "plain")).max() > 3  # the adapter acts
    allow(True)
    assert np.array_equal(run(studio, loading(BIN), tmp_path / "bin"), safe)


def generate(studio, model: str) -> np.ndarray:
    unit = ControlNetUnit(model=model, module="ip-adapter-auto", image=studio.input_dir / REFERENCE)
    res = studio.engine.generate(GenerationParams(prompt="a cat", negative_prompt="blurry", seed=13, width=64,
                                                  height=64, steps=3, cfg=5.0, model=CHECKPOINT, controlnets=[unit]))
    return np.asarray(res.images[0], dtype=np.int16)


def test_engine_reads_the_extension_pth_in_models_controlnet(studio, allow):
    allow(False)
    for model, folder in ((PLUS_PTH, "controlnet"), ("ip-adapter_sd15", "ipadapter")):  # .pth by name, .bin by stem
        with pytest.raises(RequestError) as refused:
            generate(studio, model)
        assert "refusing to load" in str(refused.value) and SETTING in str(refused.value)
        assert str(studio.root / folder) in str(refused.value)
    safe = generate(studio, PLUS_SAFE)
    allow(True)
    assert np.array_equal(generate(studio, PLUS_PTH), safe)


def test_listing_and_a1111_model_list(studio, allow, tmp_path):
    (tmp_path / "server").mkdir()
    server = start_live_server(studio.engine, tmp_path / "server")
    try:
        def lists() -> dict:
            types = server.get("/controlnet/control_types").json()["control_types"]
            return {
                "model_list": server.get("/controlnet/model_list").json()["model_list"],
                "all": types["All"]["model_list"],
                "ip_type": types["IP-Adapter"]["model_list"],
                "controlnet_loader": server.get("/object_info/ControlNetLoader").json()["ControlNetLoader"]
                ["input"]["required"]["control_net_name"][0],
                "ipadapter_loader": server.get("/object_info/IPAdapterModelLoader").json()["IPAdapterModelLoader"]
                ["input"]["required"]["ipadapter_file"][0],
            }

        allow(False)
        off = lists()
        assert sorted(ipadapter_files(studio.engine.registry)) == sorted([BIN, LIGHT_PTH, PLUS_SAFE, SAFE])
        allow(True)
        on = lists()
        assert sorted(ipadapter_files(studio.engine.registry)) == sorted([BIN, LIGHT_PTH, PLUS_PTH, PLUS_SAFE, SAFE])
    finally:
        server.stop()
    stems = [Path(n).stem for n in (BIN, CANNY_PTH, LIGHT_PTH, PLUS_PTH, PLUS_SAFE, SAFE)]
    for got in (off, on):  # control models and IP-Adapters alike, each once as "name [hash]"
        assert [t.rsplit(" [", 1)[0] for t in got["model_list"]] == sorted(stems, key=str.lower)
        assert got["all"] == ["None", *got["model_list"]]
        assert sorted(got["controlnet_loader"]) == sorted([CANNY_PTH, PLUS_PTH])
    assert off["model_list"] == on["model_list"] and off["controlnet_loader"] == on["controlnet_loader"]
    ip_stems = [Path(n).stem for n in (BIN, LIGHT_PTH, PLUS_SAFE, SAFE)]
    assert [t.rsplit(" [", 1)[0] for t in off["ip_type"]] == ["None", *sorted(ip_stems, key=str.lower)]
    assert [t.rsplit(" [", 1)[0] for t in on["ip_type"]] == ["None", *sorted([*ip_stems, Path(PLUS_PTH).stem],
                                                                              key=str.lower)]
    assert sorted(off["ipadapter_loader"]) == sorted([BIN, LIGHT_PTH, PLUS_SAFE, SAFE])
    assert sorted(on["ipadapter_loader"]) == sorted([BIN, LIGHT_PTH, PLUS_PTH, PLUS_SAFE, SAFE])
