"""The canny ControlNet shipped beside the default model: an SD1.x ControlNet in the original layout, listed as a
built-in, and through the engine it puts a shape where its canny map says although the prompt does not say where.

The cases and the generation come from training/measure_control.py (the script that measured the model card's
numbers), so the test and the card measure the same thing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from darkroom import default_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))

import measure_control as mc  # noqa: E402

#: Placement floor (issue #7) and how far above the no-ControlNet rate it must be.
PLACEMENT_FLOOR = 0.85
MIN_GAIN = 0.3
#: 24 generations: each kind at the four edges and two corners, one seed each.
POSITIONS = ["left", "right", "top", "bottom", "top left", "bottom right"]
#: Through the canny preprocessor (a picture, not a ready map), at the other corners.
CANNY_POSITIONS = ["top right", "bottom left"]


def controlnet_path() -> Path:
    """The shipped ControlNet: the built-in model's file name with `-canny`."""
    return default_model.path().with_name(default_model.path().stem + "-canny.safetensors")


@pytest.fixture(scope="module")
def engine():
    return mc.make_engine(threads=1)


@pytest.fixture(scope="module")
def hint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cn-hints")


def test_file_is_an_sd1_controlnet_in_the_original_layout(engine) -> None:
    from darkroom.control.loader import describe_control_file, load_control_model
    from darkroom.models.family import Family

    path = controlnet_path()
    assert path.is_file(), f"{path.name} is not built (training/train_default_controlnet.py)"
    assert path.stat().st_size < 20 * 2**20
    info = describe_control_file(path)
    assert (info.kind, info.layout, info.prefix, info.family, info.diff) == (
        "controlnet", "ldm", "control_model.", Family.SD1, False)
    model = load_control_model(path)
    assert model.label == "SD1.x ControlNet" and model.kind == "controlnet"
    assert model.hint_scale == 8 and model.hint_channels == 3  # 64×64 hint for the 8×8 latent
    base = engine.load(None)  # the built-in checkpoint (engine's cache, reused by the generation tests)
    assert base.path.resolve() == default_model.path().resolve()
    model.check_context(base.unet.config.cross_attention_dim)
    # the ControlNet's copy of the encoder has the base UNet's shapes (ControlNetModel.from_unet)
    assert model.module.config.block_out_channels == base.unet.config.block_out_channels
    assert model.module.config.attention_head_dim == base.unet.config.attention_head_dim


def test_listed_as_a_builtin_controlnet_when_none_is_installed(tmp_path) -> None:
    from darkroom.control.names import control_model_titles
    from darkroom.models.registry import ModelRegistry, default_builtin_checkpoints, default_builtin_controlnets
    from darkroom.settings import load_settings

    path = controlnet_path()
    assert path.resolve() in [p.resolve() for p in default_builtin_controlnets()]
    assert path.resolve() not in [p.resolve() for p in default_builtin_checkpoints()]
    reg = ModelRegistry(load_settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data"))
    assert reg.checkpoints() == [default_model.FILE_NAME]
    assert reg.list("controlnet") == [path.name]
    info = reg.describe(path, "controlnet")
    assert info.builtin and "ControlNet" in info.kind
    assert [t.rsplit(" [", 1)[0] for t in control_model_titles(reg)] == [path.stem]
    assert reg.find("controlnet", path.stem) == path
    # an installed ControlNet replaces the built-in one in listings; the built-in stays findable by name
    (tmp_path / "models" / "controlnet").mkdir(parents=True)
    (tmp_path / "models" / "controlnet" / "mine.safetensors").write_bytes(path.read_bytes())
    assert reg.list("controlnet") == ["mine.safetensors"]
    assert reg.find("controlnet", path.stem) == path


def test_places_shapes_where_the_canny_map_says(engine, hint_dir) -> None:
    cases = mc.control_cases(POSITIONS)  # 24: four kinds × six positions, prompts without positions
    assert len(cases) == 24 and all(c.position not in c.prompt for c in cases)
    with_cn = [mc.placed(mc.generate(engine, c, controlnet=controlnet_path(), folder=hint_dir), c) for c in cases]
    without = [mc.placed(mc.generate(engine, c, controlnet=None), c) for c in cases]
    rate, baseline = float(np.mean(with_cn)), float(np.mean(without))
    assert rate >= PLACEMENT_FLOOR, (rate, baseline)
    assert rate >= baseline + MIN_GAIN, (rate, baseline)


def test_canny_preprocessor_on_a_picture_steers_too(engine, hint_dir) -> None:
    cases = mc.control_cases(CANNY_POSITIONS, first_seed=300)
    hits = [mc.placed(mc.generate(engine, c, controlnet=controlnet_path(), mode="canny", folder=hint_dir), c)
            for c in cases]
    assert sum(hits) >= len(cases) - 1, hits


def test_strength_zero_equals_no_controlnet(engine, hint_dir) -> None:
    case = mc.control_cases(["left"], kinds=["square"])[0]
    off = mc.generate(engine, case, controlnet=controlnet_path(), weight=0.0, folder=hint_dir)
    none = mc.generate(engine, case, controlnet=None)
    on = mc.generate(engine, case, controlnet=controlnet_path(), folder=hint_dir)
    assert np.array_equal(np.asarray(off), np.asarray(none))
    assert np.abs(np.asarray(on, np.int16) - np.asarray(none, np.int16)).mean() > 1.0
