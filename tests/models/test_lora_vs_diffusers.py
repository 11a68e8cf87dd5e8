"""Cross-check LoraPatcher against diffusers' own kohya LoRA loading (PEFT backend); skipped when peft is absent."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("peft")

from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin  # noqa: E402
from diffusers.utils.peft_utils import set_weights_and_activate_adapters  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

from darkroom.models.lora import LoraPatcher, load_lora_file  # noqa: E402
from darkroom.testing.lora_files import tiny_text_encoder, tiny_unet, write_kohya_lora  # noqa: E402


def _merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a PEFT-wrapped model after merging, under the original parameter names."""
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    return {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_same_weights_as_diffusers_kohya_loader(tmp_path, layout):
    unet = tiny_unet(layout)
    te = tiny_text_encoder(projection=True)  # diffusers' TE loader needs the nested `text_model.` layout
    encoders = [te] if layout == "sd1" else [tiny_text_encoder(), te]
    # diffusers applies per-module alphas of attention layers wrongly (its alpha names keep `processor.to_q_lora`),
    # so the cross-check uses one alpha for all modules, as kohya's trainer writes them.
    path = write_kohya_lora(tmp_path / "l.safetensors", unet, encoders, targets="all", alpha=2.0, seed=1,
                            dtype=torch.float32, unet_naming="ldm" if layout == "sdxl" else "diffusers")
    ref_u, ref_t = copy.deepcopy(unet), copy.deepcopy(te)
    if layout == "sd1":
        sd, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(path))[:2]
        StableDiffusionLoraLoaderMixin.load_lora_into_unet(sd, alphas, ref_u, adapter_name="a")
        StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(sd, alphas, ref_t, adapter_name="a")
    else:
        sd, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(str(path), unet_config=unet.config)[:2]
        StableDiffusionXLLoraLoaderMixin.load_lora_into_unet(sd, alphas, ref_u, adapter_name="a")
        StableDiffusionXLLoraLoaderMixin.load_lora_into_text_encoder(sd, alphas, ref_t, prefix="text_encoder_2",
                                                                     adapter_name="a")
    ref_u.set_adapters(["a"], weights=[0.6])
    set_weights_and_activate_adapters(ref_t, ["a"], [0.3])
    want_u, want_t = _merged_state(ref_u), _merged_state(ref_t)

    original = {k: v.clone() for k, v in unet.state_dict().items()}
    LoraPatcher(unet, encoders).apply([(load_lora_file(path), 0.3, 0.6)])
    for model, want in ((unet, want_u), (te, want_t)):
        got = model.state_dict()
        assert set(got) == set(want)
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")
    changed = sum(not torch.equal(v, original[k]) for k, v in unet.state_dict().items())
    assert changed > 40  # the comparison is not vacuous
