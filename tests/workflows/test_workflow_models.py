"""LoRA chains, hires fix, SDXL base + refiner, area composition, and one workflow that runs every other node."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from darkroom.engine import pipeline
from darkroom.graph import NodeContext
from darkroom.nodes import ClipRef
from darkroom.nodes.conditioning import CLIPTextEncodeSDXL


def _lora_image(studio, strength_model: float, strength_clip: float, executor=None) -> np.ndarray:
    wf = studio.workflow("lora")
    wf["10"]["inputs"].update(strength_model=strength_model, strength_clip=strength_clip)
    (path,) = studio.saved(studio.run(wf, executor=executor), "9")
    return studio.pixels(path)


def test_lora_changes_the_image_reproducibly_and_is_taken_out_again(studio):
    plain = _lora_image(studio, 0, 0)
    both = _lora_image(studio, 1.0, 1.0)
    unet_only = _lora_image(studio, 1.0, 0)
    clip_only = _lora_image(studio, 0, 1.0)
    for a, b in ((plain, both), (plain, unet_only), (plain, clip_only), (both, unet_only), (both, clip_only)):
        assert np.abs(a - b).mean() > 0.5
    np.testing.assert_array_equal(_lora_image(studio, 1.0, 1.0, executor=studio.new_executor()), both)
    np.testing.assert_array_equal(_lora_image(studio, 0, 0, executor=studio.new_executor()), plain)

    # After LoRA runs the checkpoint's weights are back to the file's as soon as a LoRA-free model samples.
    wf = studio.workflow("txt2img")
    r = studio.run(wf, executor=studio.new_executor())
    ckpt = studio.engine.load("tiny-sd15.safetensors")
    assert studio.engine.patcher(ckpt).patched_slots == []
    loaded = r.node_outputs["4"][0]
    assert loaded.loras == () and loaded.checkpoint is ckpt


def test_lora_loader_returns_new_refs_and_keeps_the_inputs(studio):
    r = studio.run(studio.workflow("lora"))
    model, clip, _ = r.node_outputs["4"]
    new_model, new_clip = r.node_outputs["10"]
    assert model.loras == () and clip.loras == ()
    assert [u.strength for u in new_model.loras] == [1.0] and [u.strength for u in new_clip.loras] == [1.0]
    assert new_model.checkpoint is model.checkpoint and new_model.patcher is model.patcher


def test_hires_fix_upscales_the_latent_and_resamples(studio):
    r = studio.run(studio.workflow("hires_fix"))
    first = r.node_outputs["3"][0]["samples"]
    upscaled = r.node_outputs["10"][0]["samples"]
    assert first.shape == (1, 4, 8, 8) and upscaled.shape == (1, 4, 10, 12)
    torch.testing.assert_close(upscaled, torch.nn.functional.interpolate(first, size=(10, 12), mode="nearest-exact"))
    final = r.node_outputs["11"][0]["samples"]
    assert final.shape == (1, 4, 10, 12) and (final - upscaled).abs().mean() > 0.01
    (saved,) = studio.saved(r, "12")
    with Image.open(saved) as im:
        assert im.size == (96, 80) and "prompt" in im.text
    (preview,) = studio.saved(r, "9")
    item = r.outputs["9"]["images"][0]
    assert item["type"] == "temp" and item["filename"].startswith("ComfyUI_temp_")
    assert preview.parent == studio.temp_dir
    with Image.open(preview) as im:
        assert im.size == (64, 64)


def test_sdxl_base_then_refiner_with_two_advanced_samplers(studio):
    r = studio.run(studio.workflow("sdxl_refiner"))
    base = studio.engine.load("tiny-sdxl.safetensors")
    refiner = studio.engine.load("tiny-sdxl-refiner.safetensors")
    width_l, width_g = (int(te.config.hidden_size) for te in base.text_encoders)
    (pos,) = r.node_outputs["6"][0]
    assert pos.adm == {"width": 256, "height": 256, "crop_w": 0, "crop_h": 0, "target_width": 64,
                       "target_height": 64}
    assert pos.cross_attn.shape == (1, 77, width_l + width_g) and pos.pooled is not None
    (ref_neg,) = r.node_outputs["16"][0]
    assert ref_neg.adm == {"aesthetic_score": 2.5, "width": 256, "height": 256}
    assert ref_neg.cross_attn.shape[-1] == int(refiner.text_encoders[0].config.hidden_size)

    # text_l and text_g differ in the negative: each part of the channels comes from its own prompt.
    (neg,) = r.node_outputs["7"][0]
    l_part = pipeline.encode_text(base, "blurry", style="comfy")[0]
    g_part = pipeline.encode_text(base, "text, watermark", style="comfy")[0]
    torch.testing.assert_close(neg.cross_attn[..., :width_l], l_part.cross_attn[..., :width_l])
    torch.testing.assert_close(neg.cross_attn[..., width_l:], g_part.cross_attn[..., width_l:])
    torch.testing.assert_close(neg.pooled, g_part.pooled)

    # A longer text_l (two chunks) is matched by padding text_g's encoding with empty-prompt chunks.
    long_l = ", ".join(["a tiny red fox in the snow"] * 12)
    node_ctx = NodeContext(node_id="x", prompt_id="p", class_type="CLIPTextEncodeSDXL",
                           services={"engine": studio.engine})
    ((mixed,),) = CLIPTextEncodeSDXL().execute(node_ctx, ClipRef(base), 64, 64, 0, 0, 64, 64, "sky", long_l)
    assert mixed.cross_attn.shape == (1, 154, width_l + width_g)
    empty = pipeline.encode_text(base, "", style="comfy")[0].cross_attn
    sky = pipeline.encode_text(base, "sky", style="comfy")[0].cross_attn
    torch.testing.assert_close(mixed.cross_attn[:, :77, width_l:], sky[..., width_l:])
    torch.testing.assert_close(mixed.cross_attn[:, 77:, width_l:], empty[..., width_l:])

    # The base stops at step 3 of 4 with leftover noise; the refiner finishes without adding noise.
    base_out = r.node_outputs["10"][0]["samples"]
    direct = pipeline.ksample(base, torch.zeros((1, 4, 8, 8)), [pos], [neg], seed=721897303308196, steps=4,
                              cfg=8.0, sampler="euler", scheduler="normal", end_step=3, force_full_denoise=False)
    torch.testing.assert_close(base_out, direct, rtol=0, atol=1e-6)
    refined = r.node_outputs["11"][0]["samples"]
    assert refined.shape == base_out.shape and (refined - base_out).abs().mean() > 1e-3
    (path,) = studio.saved(r, "19")
    with Image.open(path) as im:
        assert im.size == (64, 64)


def test_area_composition_conditions_regions(studio):
    wf = studio.workflow("area_composition")
    r = studio.run(wf)
    (right,) = r.node_outputs["12"][0]
    assert right.area == (8, 8, 0, 8) and right.strength == 1.5
    assert [it.area for it in r.node_outputs["10"][0]] == [None, (8, 8, 0, 8), (8, 8, 0, 0)]
    (path,) = studio.saved(r, "9")
    with Image.open(path) as im:
        assert im.size == (128, 64)
    composed = r.node_outputs["3"][0]["samples"]
    wf["3"]["inputs"]["positive"] = ["6", 0]
    plain = studio.run(wf).node_outputs["3"][0]["samples"]
    assert (composed - plain).abs().mean() > 1e-3


def test_every_other_node_runs_in_one_workflow(studio):
    r = studio.run(studio.workflow("kitchen_sink"))
    assert r.node_outputs["2"][0].stop_at_clip_layer == -2 and r.node_outputs["2"][0].clip_skip() == 2
    assert r.node_outputs["4"][0].name == "tiny-vae.safetensors"
    timed = r.node_outputs["19"][0]
    assert len(timed) == 2 and all(it.extra["end_percent"] == 0.8 for it in timed)
    assert timed[1].extra["set_area_to_bounds"] is True and timed[1].mask.shape == (1, 64, 64)
    assert all(float(it.cross_attn.abs().max()) == 0 for it in r.node_outputs["21"][0])

    composite = r.node_outputs["33"][0]
    source = r.node_outputs["32"][0]
    assert composite.shape == (1, 64, 64, 3) and source.shape == (1, 48, 48, 3)
    background = torch.tensor([0x33, 0x66, 0xCC]) / 255.0
    torch.testing.assert_close(composite[0, 8, 8], 0.75 * source[0, 0, 0] + 0.25 * background)
    torch.testing.assert_close(composite[0, 0, 0], background)
    assert r.node_outputs["37"][0].shape == (2, 64, 64, 3)
    assert r.node_outputs["38"][0]["samples"].shape == (2, 4, 8, 8)
    assert r.node_outputs["39"][0]["samples"].shape == (4, 4, 8, 8)
    picked = r.node_outputs["40"][0]
    assert picked["batch_index"] == [1, 2] and picked["samples"].shape == (2, 4, 8, 8)
    assert r.node_outputs["41"][0]["samples"].shape == (2, 4, 12, 12)
    assert r.node_outputs["44"][0]["samples"].shape == (2, 4, 4, 4)
    assert r.node_outputs["46"][0].shape == (2, 96, 96, 3)
    assert r.node_outputs["48"][0].shape == (2, 48, 48)

    saved = studio.saved(r, "50")
    assert [p.name for p in saved] == ["final_00001_.png", "final_00002_.png"]
    previews = r.outputs["51"]["images"]
    assert len(previews) == 2 and all(p["type"] == "temp" for p in previews)
    for path in saved + studio.saved(r, "51"):
        with Image.open(path) as im:
            assert im.size == (48, 48)
