"""ComfyUI's default txt2img graph end to end, the same latent as the engine's pipeline, img2img, caching between
runs, interrupting, and clear errors for broken workflows."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.engine import pipeline
from darkroom.engine.vae import tensor_to_pil
from darkroom.graph import PromptValidationError


def test_default_graph_writes_png_with_metadata_and_is_deterministic(studio):
    wf = studio.workflow("txt2img")
    wf["9"]["inputs"]["filename_prefix"] = "default/run"
    ui_workflow = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "version": 0.4}
    r1 = studio.run(wf, executor=studio.new_executor(), extra_data={"extra_pnginfo": {"workflow": ui_workflow}})
    assert r1.outputs["9"] == {"images": [{"filename": "run_00001_.png", "subfolder": "default", "type": "output"}]}
    (path1,) = studio.saved(r1, "9")
    with Image.open(path1) as im:
        assert im.size == (64, 64) and im.format == "PNG"
        assert json.loads(im.text["prompt"]) == wf
        assert json.loads(im.text["workflow"]) == ui_workflow

    r2 = studio.run(wf, executor=studio.new_executor())  # nothing cached: everything runs again
    (path2,) = studio.saved(r2, "9")
    assert path2.name == "run_00002_.png"  # the first file is never overwritten
    np.testing.assert_array_equal(studio.pixels(path1), studio.pixels(path2))

    wf["3"]["inputs"]["seed"] += 1
    (path3,) = studio.saved(studio.run(wf), "9")
    assert np.abs(studio.pixels(path3) - studio.pixels(path1)).mean() > 1.0


def test_ksampler_node_equals_pipeline_ksample_with_batch_noise(studio):
    wf = studio.workflow("txt2img")
    wf["5"]["inputs"]["batch_size"] = 2
    wf["6"]["inputs"]["text"] = "a (red:1.3) circle, [literal brackets]"
    wf["3"]["inputs"].update(seed=1234, sampler_name="dpmpp_2m", scheduler="karras")
    r = studio.run(wf, executor=studio.new_executor())
    latent = r.node_outputs["3"][0]["samples"]
    assert latent.shape == (2, 4, 8, 8)

    engine = studio.engine
    ckpt = engine.load("tiny-sd15.safetensors")
    engine.patcher(ckpt).apply([])
    pos = pipeline.encode_text(ckpt, wf["6"]["inputs"]["text"], style="comfy", embeddings=engine.embeddings())
    neg = pipeline.encode_text(ckpt, wf["7"]["inputs"]["text"], style="comfy", embeddings=engine.embeddings())
    ref = pipeline.ksample(ckpt, torch.zeros((2, 4, 8, 8)), pos, neg, seed=1234, steps=4, cfg=8.0,
                           sampler="dpmpp_2m", scheduler="karras")
    torch.testing.assert_close(latent, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(latent[0], latent[1])  # one randn of the whole batch: images differ
    images = [studio.pixels(p) for p in studio.saved(r, "9")]
    expected = tensor_to_pil(pipeline.decode(ckpt, ref))
    for got, want in zip(images, expected):
        np.testing.assert_array_equal(got, np.asarray(want, dtype=np.int16))


def test_img2img_crops_to_multiple_of_8_and_denoise_controls_change(studio):
    wf = studio.workflow("img2img")
    r = studio.run(wf)
    (path,) = studio.saved(r, "9")
    assert path.parent.name == "img2img"
    with Image.open(path) as im:
        assert im.size == (72, 48)  # 74x50 input cropped to multiples of 8
    source = r.node_outputs["12"][0]["samples"]
    assert source.shape == (1, 4, 6, 9)
    strong = r.node_outputs["3"][0]["samples"]
    wf["3"]["inputs"]["denoise"] = 0.2
    weak = studio.run(wf).node_outputs["3"][0]["samples"]
    assert (weak - source).abs().mean() < (strong - source).abs().mean()


def test_second_run_with_new_seed_reuses_loader_and_text_encoders(studio):
    executor = studio.new_executor()
    wf = studio.workflow("txt2img")
    wf["9"]["inputs"]["filename_prefix"] = "cache/run"
    events: list[tuple[str, dict]] = []
    first = studio.run(wf, executor=executor, on_event=lambda e, d: events.append((e, d)))
    assert sorted(first.executed) == ["3", "4", "5", "6", "7", "8", "9"]
    assert [d["nodes"] for e, d in events if e == "execution_cached"] == [[]]

    events.clear()
    wf["3"]["inputs"]["seed"] = 99
    second = studio.run(wf, executor=executor, on_event=lambda e, d: events.append((e, d)))
    assert [d["nodes"] for e, d in events if e == "execution_cached"] == [["4", "5", "6", "7"]]
    assert sorted(second.executed) == ["3", "8", "9"]
    ran = [d["node"] for e, d in events if e == "executing"]
    assert sorted(n for n in ran if n is not None) == ["3", "8", "9"]
    progress = [d for e, d in events if e == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and {p["max"] for p in progress} == {4}
    assert any(e == "preview" and d["image"].size == (8, 8) for e, d in events)

    events.clear()
    third = studio.run(wf, executor=executor, on_event=lambda e, d: events.append((e, d)))
    assert third.executed == []  # identical prompt: everything cached, no new file
    assert third.outputs["9"] == second.outputs["9"]
    assert [d["output"] for e, d in events if e == "executed"] == [second.outputs["9"]]
    assert len(list((studio.output_dir / "cache").iterdir())) == 2


def test_interrupt_stops_sampling_and_saves_nothing(studio):
    wf = studio.workflow("txt2img")
    wf["9"]["inputs"]["filename_prefix"] = "interrupted/run"
    stop = threading.Event()
    events: list[tuple[str, dict]] = []

    def on_event(event: str, data: dict) -> None:
        events.append((event, data))
        if event == "progress" and data["value"] == 2:
            stop.set()

    r = studio.run(wf, executor=studio.new_executor(), check=False, on_event=on_event, interrupt=stop)
    assert r.status == "interrupted"
    assert r.error["node_id"] == "3" and r.error["node_type"] == "KSampler"
    assert [d["value"] for e, d in events if e == "progress"] == [1, 2]
    assert any(e == "execution_interrupted" for e, _ in events)
    assert "9" not in r.outputs and not (studio.output_dir / "interrupted").exists()


def test_unknown_class_is_named_in_the_error(studio):
    wf = studio.workflow("txt2img")
    wf["10"] = {"class_type": "ReActorFaceSwap", "inputs": {"image": ["8", 0]}, "_meta": {"title": "Upscale"}}
    with pytest.raises(PromptValidationError, match="ReActorFaceSwap") as info:
        studio.run(wf)
    assert info.value.error["extra_info"]["class_type"] == "ReActorFaceSwap"
    assert info.value.error["extra_info"]["node_id"] == "10"


def test_missing_model_and_image_fail_validation_with_names(studio):
    wf = studio.workflow("txt2img")
    wf["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"
    with pytest.raises(PromptValidationError) as info:
        studio.run(wf)
    (err,) = info.value.node_errors["4"]["errors"]
    assert err["type"] == "value_not_in_list" and "v1-5-pruned-emaonly.safetensors" in err["details"]
    assert "tiny-sd15.safetensors" in err["details"]

    wf = studio.workflow("img2img")
    wf["10"]["inputs"]["image"] = "../outside.png"
    with pytest.raises(PromptValidationError) as info:
        studio.run(wf)
    assert info.value.node_errors["10"]["class_type"] == "LoadImage"


def test_runtime_error_reports_the_failing_node(studio):
    wf = studio.workflow("txt2img")
    wf["10"] = {"class_type": "ImageToMask", "inputs": {"image": ["8", 0], "channel": "alpha"}}
    wf["11"] = {"class_type": "MaskToImage", "inputs": {"mask": ["10", 0]}}
    wf["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}}
    r = studio.run(wf, check=False, outputs_to_execute=["12"])
    assert r.status == "error"
    assert r.error["node_id"] == "10" and r.error["node_type"] == "ImageToMask"
    assert "no alpha channel" in r.error["exception_message"]
