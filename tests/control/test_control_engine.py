"""ControlNet units in typed requests: Engine.generate applies them and the embedded workflow reproduces the image
exactly (txt2img, diff ControlNet, A1111 soft mode, hires with hr_option, img2img, T2I-Adapter); A1111 unit
parsing accepts the extension's field forms and refuses bad ones by field."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cn_studio import shared_control_studio  # noqa: E402
from cn_tiny import square_picture  # noqa: E402

from darkroom.control.units import ControlNetUnit, ControlUnitError, a1111_units, parse_a1111_unit  # noqa: E402
from darkroom.engine import GenerationParams, HiresParams, RequestError  # noqa: E402
from darkroom.nodes import run_workflow  # noqa: E402


@pytest.fixture(scope="module")
def control_studio():
    """The shared tiny models folder with ControlNets (built once per process)."""
    return shared_control_studio()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cn-pic") / "shape.png"
    square_picture(96, 20, 70).save(path)
    return path


def reproduce(studio, result, picture: Path, tmp_path: Path, extra: list[Path] = ()) -> np.ndarray:
    inp = tmp_path / "input"
    inp.mkdir(exist_ok=True)
    for p in (picture, *extra):
        shutil.copy(p, inp / p.name)
    out = tmp_path / "output"
    res = run_workflow(result.workflows[0], engine=studio.engine, input_dir=inp, output_dir=out,
                       temp_dir=tmp_path / "temp")
    assert res.status == "success", res.error
    (png,) = list(out.rglob("*.png"))
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB"))


CASES = {
    "canny": dict(units=[dict(model="control_sd15_tiny [00000000]", module="canny", weight=0.8, guidance_end=0.7)]),
    "diff, soft mode, two units": dict(units=[
        dict(model="diff_control_sd15_tiny", module="none", control_mode="My prompt is more important",
             resize_mode="Resize and Fill"),
        dict(model="control_sd15_tiny_diffusers", module="invert", control_mode="ControlNet is more important")]),
    "hires, low res only": dict(hires=HiresParams(scale=1.5, steps=1, denoise=0.6), units=[
        dict(model="control_sd15_tiny.safetensors", module="scribble_xdog", hr_option="Low res only"),
        dict(model="t2iadapter_tiny_sd15", module="lineart_standard", weight=0.7, hr_option="High res only")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_embedded_workflow_reproduces_controlled_images(control_studio, picture, tmp_path, case):
    spec = CASES[case]
    units = [ControlNetUnit(image=picture, **u) for u in spec["units"]]
    params = GenerationParams(prompt="a square", negative_prompt="blurry", width=64, height=64, steps=3, cfg=5.0,
                              seed=13, hires=spec.get("hires"), controlnets=units)
    result = control_studio.engine.generate(params)
    np.testing.assert_array_equal(np.asarray(result.images[0]), reproduce(control_studio, result, picture, tmp_path))
    if case == "canny":  # (the other cases' effect is covered by the node and apply tests)
        plain = control_studio.engine.generate(GenerationParams(prompt="a square", negative_prompt="blurry",
                                                                width=64, height=64, steps=3, cfg=5.0, seed=13))
        assert np.abs(np.asarray(result.images[0], int) - np.asarray(plain.images[0], int)).max() > 3
    wf = result.workflows[0]
    assert sum(n["class_type"] == "DiffControlNetLoader" for n in wf.values()) == len(units)
    assert all(f"ControlNet {i}: " in result.infotexts[0] for i in range(len(units)))
    if case == "hires, low res only":  # each pass gets only its own unit
        first, second = wf["3"]["inputs"]["positive"][0], next(
            n for n in wf.values() if n["_meta"]["title"] == "KSampler (hires)")["inputs"]["positive"][0]
        assert first != second and wf[first]["inputs"]["positive"] == ["6", 0]
        assert wf[second]["inputs"]["positive"] == ["6", 0]


def test_img2img_inpaint_unit_with_mask_reproduces(control_studio, picture, tmp_path):
    from PIL import Image

    mask = tmp_path / "hole.png"
    arr = np.zeros((96, 96), np.uint8)
    arr[:, 48:] = 255
    Image.fromarray(arr).save(mask)
    unit = ControlNetUnit(model="control_sd15_tiny", image=picture, mask=mask, module="inpaint_only")
    params = GenerationParams(prompt="a square", width=64, height=64, steps=3, seed=2, init_image=picture,
                              denoise=0.7, controlnets=[unit])
    result = control_studio.engine.generate(params)
    got = reproduce(control_studio, result, picture, tmp_path, extra=[mask])
    np.testing.assert_array_equal(np.asarray(result.images[0]), got)


def test_engine_refuses_bad_units_by_name(control_studio, picture):
    base = dict(prompt="x", width=64, height=64, steps=1, seed=1)
    with pytest.raises(RequestError, match="ControlNet: .*weight"):
        control_studio.engine.generate(GenerationParams(**base, controlnets=[
            ControlNetUnit(model="control_sd15_tiny", image=picture, weight=-1)]))
    with pytest.raises(Exception, match="no controlnet model named 'nope'"):
        control_studio.engine.generate(GenerationParams(**base, controlnets=[ControlNetUnit(model="nope",
                                                                                            image=picture)]))


# -- A1111 units ---------------------------------------------------------------------------------------------------


def test_a1111_unit_forms_and_aliases():
    u = parse_a1111_unit({"input_image": "AAAA", "module": "t2ia_color_grid", "model": "m [12345678]",
                          "weight": "0.5", "resize_mode": 2, "control_mode": 1, "guidance": 0.6,
                          "lowvram": True, "pixel_perfect": True, "processor_res": 256}, 0)
    assert u.image_b64 == "AAAA" and u.mask_b64 is None
    assert (u.unit.module, u.unit.weight, u.unit.resize_mode, u.unit.control_mode, u.unit.guidance_end) == \
        ("t2ia_color_grid", 0.5, "Resize and Fill", "prompt", 0.6)
    assert u.unit.preprocessor == "color" and u.unit.processor_res == 256
    both = parse_a1111_unit({"image": {"image": "IMG", "mask": "MASK"}, "model": "m"}, 1)
    assert (both.image_b64, both.mask_b64) == ("IMG", "MASK")
    assert parse_a1111_unit({"image": "I", "mask": "M", "model": "m"}).mask_b64 == "M"
    assert parse_a1111_unit({"enabled": False, "model": "m"}) is None
    assert parse_a1111_unit({"model": "None", "module": "canny"}) is None
    units = a1111_units({"ControlNet": {"args": [{"model": "a", "image": "x"}, False, {"model": "b"}]},
                         "refiner": {"args": []}})
    assert [x.unit.model for x in units] == ["a", "b"]


@pytest.mark.parametrize("raw, field", [
    (["canny", "model"], "args[0]"),
    ({"model": "m", "weight": "heavy"}, "weight"),
    ({"model": "m", "guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start"),
    ({"model": "m", "resize_mode": 7}, "resize_mode"),
    ({"model": "m", "hr_option": "Sometimes"}, "hr_option"),
    ({"model": "m", "image": 5}, "image"),
])
def test_bad_a1111_units_name_their_field(raw, field):
    with pytest.raises(ControlUnitError) as ex:
        parse_a1111_unit(raw, 0)
    assert field in (ex.value.field or "") and field in str(ex.value)


def test_unit_round_trips_through_json(picture):
    import json

    from darkroom.server.sdapi import params_from_dict, params_to_dict

    unit = ControlNetUnit(model="m", image=picture, mask=Path("sdapi/m.png"), module="canny", weight=0.4,
                          control_mode="control", hr_option="High res only")
    params = GenerationParams(prompt="p", controlnets=[unit])
    back = params_from_dict(json.loads(json.dumps(params_to_dict(params))))
    assert back.controlnets == [unit] and isinstance(back.controlnets[0].image, Path)
    assert unit.input_name(unit.image) == picture.name and unit.input_name(unit.mask) == "sdapi/m.png"
    assert unit.infotext("m [abcdef12]") == (
        "Module: canny, Model: m [abcdef12], Weight: 0.4, Resize Mode: Crop and Resize, Processor Res: 512, "
        "Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, "
        "Control Mode: ControlNet is more important, Hr Option: High res only")


def test_control_models_are_reused_across_requests_until_their_file_changes(control_studio, picture, monkeypatch):
    import os

    import darkroom.control.loader as loader

    loads: list[str] = []
    real = loader.load_control_model

    def counting(path, **kw):
        loads.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(loader, "load_control_model", counting)
    engine = control_studio.engine
    engine.unload_all()

    def run(model: str) -> np.ndarray:
        unit = ControlNetUnit(image=picture, model=model, module="none")
        params = GenerationParams(prompt="a square", width=64, height=64, steps=2, seed=3, controlnets=[unit])
        return np.asarray(engine.generate(params).images[0])

    first = run("control_sd15_tiny")
    np.testing.assert_array_equal(run("control_sd15_tiny"), first)  # same model object, same pixels
    assert loads == ["control_sd15_tiny.safetensors"]
    run("diff_control_sd15_tiny")
    run("diff_control_sd15_tiny")  # diff ControlNets are built from the UNet as it is now: every time
    assert loads[1:] == ["diff_control_sd15_tiny.safetensors"] * 2
    path = engine.registry.find("controlnet", "control_sd15_tiny.safetensors")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a replaced file is read again
    run("control_sd15_tiny")
    assert loads[3:] == ["control_sd15_tiny.safetensors"]
