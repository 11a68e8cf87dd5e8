"""Reading metadata from images made the way ComfyUI, A1111 and NovelAI make them; corrupt files; format_info."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from darkroom.metadata.comfy_summary import summarize_comfy_prompt
from darkroom.metadata.png import (ImageMetadataError, format_info, read_image_metadata, user_comment_exif,
                                   write_png)
from darkroom.metadata.reading import decode_user_comment

# A ComfyUI API prompt as the frontend queues it: LoRA chain, a primitive seed node, hires second pass.
COMFY_PROMPT = {
    "3": {"inputs": {"seed": ["12", 0], "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                     "denoise": 1, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0]}, "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "4": {"inputs": {"ckpt_name": "dreamshaper_8.safetensors"}, "class_type": "CheckpointLoaderSimple"},
    "5": {"inputs": {"width": 512, "height": 768, "batch_size": 2}, "class_type": "EmptyLatentImage"},
    "6": {"inputs": {"text": "a lighthouse at dawn, (dramatic sky:1.2)", "clip": ["10", 1]},
          "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": "blurry, watermark", "clip": ["10", 1]}, "class_type": "CLIPTextEncode"},
    "8": {"inputs": {"samples": ["14", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
    "10": {"inputs": {"lora_name": "add_detail.safetensors", "strength_model": 0.8, "strength_clip": 0.6,
                      "model": ["4", 0], "clip": ["4", 1]}, "class_type": "LoraLoader"},
    "12": {"inputs": {"seed": 884422}, "class_type": "Seed (rgthree)"},
    "13": {"inputs": {"upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["3", 0]},
           "class_type": "LatentUpscaleBy"},
    "14": {"inputs": {"seed": ["12", 0], "steps": 12, "cfg": 6.5, "sampler_name": "euler", "scheduler": "normal",
                      "denoise": 0.5, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
                      "latent_image": ["13", 0]}, "class_type": "KSampler"},
}
COMFY_WORKFLOW = {"last_node_id": 14, "last_link_id": 20, "nodes": [{"id": 3, "type": "KSampler"}] * 11,
                  "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4}
A1111_INFO = ("best quality, a knight in armor\nNegative prompt: lowres\nSteps: 20, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 64x48, Model hash: 6ce0161689, "
              "Model: v1-5-pruned-emaonly, Version: v1.10.1")


def _img(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _comfy_png(prompt=COMFY_PROMPT, workflow=COMFY_WORKFLOW) -> bytes:
    """Bytes written exactly as ComfyUI's SaveImage does (PngInfo text chunks, compress_level 4)."""
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(prompt))
    meta.add_text("workflow", json.dumps(workflow))
    buf = io.BytesIO()
    _img().save(buf, format="PNG", pnginfo=meta, compress_level=4)
    return buf.getvalue()


def test_read_comfyui_png_summary():
    meta = read_image_metadata(_comfy_png())
    assert meta.source == "comfyui" and meta.format == "PNG" and (meta.width, meta.height) == (64, 48)
    assert meta.prompt == COMFY_PROMPT and meta.workflow == COMFY_WORKFLOW and meta.parameters is None
    c = meta.comfy
    assert c["positive"] == "a lighthouse at dawn, (dramatic sky:1.2)" and c["negative"] == "blurry, watermark"
    assert (c["seed"], c["steps"], c["cfg"], c["sampler_name"], c["scheduler"], c["denoise"]) == \
        (884422, 25, 6.5, "dpmpp_2m", "karras", 1)
    assert c["checkpoint"] == "dreamshaper_8.safetensors"
    assert c["loras"] == [{"name": "add_detail.safetensors", "strength_model": 0.8, "strength_clip": 0.6}]
    assert (c["width"], c["height"], c["batch_size"]) == (512, 768, 2)
    assert c["samplers"] == 2 and c["sampler_node"] == "3"
    assert c["second_pass"] == {"steps": 12, "denoise": 0.5, "sampler_name": "euler", "scheduler": "normal"}
    text = format_info(meta)
    assert "made by comfyui" in text and "Prompt: a lighthouse at dawn" in text
    assert "Checkpoint: dreamshaper_8.safetensors" in text and "Seed: 884422" in text
    assert "LoRA: add_detail.safetensors" in text and "Second pass: 12 steps at denoise 0.5" in text


def test_comfy_summary_follows_conditioning_and_img2img():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "a fox", "text_l": "a fox", "clip": ["1", 1],
                                                              "width": 1024, "height": 1024}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["9", 0], "clip": ["1", 1]}},
        "9": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "in snow"}},
        "4": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["3", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["1", 1]}},
        "6": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["4", 0], "negative": ["5", 0],
                                                                  "control_net": ["7", 0], "image": ["8", 0],
                                                                  "strength": 1.0}},
        "8": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}},
        "10": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["1", 2]}},
        "11": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 7, "steps": 30, "cfg": 5,
                                                             "sampler_name": "euler", "scheduler": "normal",
                                                             "model": ["1", 0], "positive": ["6", 0],
                                                             "negative": ["6", 1], "latent_image": ["10", 0]}},
    }
    c = summarize_comfy_prompt(prompt)
    assert c["positive"] == "a fox\nin snow" and c["negative"] == "ugly"
    assert c["seed"] == 7 and c["init_image"] == "pose.png" and "width" not in c and "denoise" not in c
    assert c["class_type"] == "KSamplerAdvanced"
    assert summarize_comfy_prompt({"nodes": []}) == {}
    assert summarize_comfy_prompt({"1": {"class_type": "SaveImage", "inputs": {}}}) == {"samplers": 0}


def test_read_a1111_png():
    info = PngInfo()
    info.add_text("parameters", A1111_INFO)
    buf = io.BytesIO()
    _img().save(buf, format="PNG", pnginfo=info)
    meta = read_image_metadata(buf.getvalue())
    assert meta.source == "a1111" and meta.parameters == A1111_INFO
    assert meta.infotext["Sampler"] == "DPM++ 2M" and meta.infotext["Size-1"] == "64"
    text = format_info(meta)
    assert "made by a1111" in text and "Prompt: best quality, a knight in armor" in text
    assert "  Model: v1-5-pruned-emaonly" in text and "Negative prompt: lowres" in text


def test_read_text_chunk_after_image_data(tmp_path):
    """Some tools append tEXt after IDAT; it must still be found."""
    buf = io.BytesIO()
    _img().save(buf, format="PNG")
    data = buf.getvalue()
    import struct
    import zlib

    body = b"parameters\0" + A1111_INFO.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    meta = read_image_metadata(data[:iend] + chunk + data[iend:])
    assert meta.parameters == A1111_INFO


def test_read_a1111_jpeg_exif_user_comment_both_byte_orders():
    buf = io.BytesIO()
    _img().save(buf, format="JPEG", exif=user_comment_exif(A1111_INFO + ", Emoji: 🙂"))  # piexif's big-endian layout
    meta = read_image_metadata(buf.getvalue())
    assert meta.format == "JPEG" and meta.source == "a1111"
    assert meta.parameters == A1111_INFO + ", Emoji: 🙂"
    # a little-endian EXIF (Pillow's default) with UTF-16LE, as some other writers do
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "ein Ritter\nSteps: 5, Sampler: Euler, Seed: 1".encode("utf-16-le")
    buf = io.BytesIO()
    _img().save(buf, format="JPEG", exif=exif)
    meta = read_image_metadata(buf.getvalue())
    assert meta.infotext["Prompt"] == "ein Ritter" and meta.infotext["Steps"] == "5"


def test_decode_user_comment_prefixes():
    assert decode_user_comment(b"ASCII\0\0\0hello\0") == "hello"
    assert decode_user_comment(b"UNICODE\0" + "grüß".encode("utf-16-be")) == "grüß"
    assert decode_user_comment(b"UNICODE\0" + "grüß".encode("utf-16-le")) == "grüß"
    assert decode_user_comment(b"\0" * 8 + "plain".encode()) == "plain"  # undefined charset: UTF-8
    assert decode_user_comment("already text") == "already text"


def test_read_jpeg_comment_and_comfy_webp_exif():
    buf = io.BytesIO()
    _img().save(buf, format="JPEG", comment=A1111_INFO.encode())
    assert read_image_metadata(buf.getvalue()).parameters == A1111_INFO
    # ComfyUI's SaveAnimatedWEBP: EXIF IFD0 Model = "prompt:{json}", Make = "workflow:{json}"
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(COMFY_PROMPT)
    exif[0x010F] = "workflow:" + json.dumps(COMFY_WORKFLOW)
    buf = io.BytesIO()
    _img().save(buf, format="WEBP", exif=exif)
    meta = read_image_metadata(buf.getvalue())
    assert meta.source == "comfyui" and meta.prompt == COMFY_PROMPT and meta.workflow == COMFY_WORKFLOW
    assert meta.comfy["seed"] == 884422


def test_read_novelai_png():
    info = PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "1girl, silver hair")
    info.add_text("Comment", json.dumps({"steps": 28, "sampler": "k_euler_ancestral", "seed": 31, "scale": 11,
                                         "uc": "lowres, bad anatomy", "strength": 0.7}))
    buf = io.BytesIO()
    _img().save(buf, format="PNG", pnginfo=info)
    meta = read_image_metadata(buf.getvalue())
    assert meta.source == "novelai"
    assert meta.parameters == ("1girl, silver hair\nNegative prompt: lowres, bad anatomy\nSteps: 28, Sampler: Euler a,"
                               " CFG scale: 11, Seed: 31, Size: 64x48, Clip skip: 2, ENSD: 31337")
    assert meta.infotext["ENSD"] == "31337" and meta.infotext["Negative prompt"] == "lowres, bad anatomy"


def test_no_metadata_is_empty_not_an_error(tmp_path):
    path = tmp_path / "plain.png"
    _img().save(path)
    meta = read_image_metadata(path)
    assert meta.empty and meta.source is None and meta.path == str(path)
    assert format_info(meta).startswith("PNG 64x48, no generation metadata")


def test_bad_json_chunk_is_a_warning(tmp_path):
    out = write_png(_img(), tmp_path / "w.png", extra={"prompt2": "x"})
    meta = read_image_metadata(out)
    assert meta.empty
    info = PngInfo()
    info.add_text("prompt", "{not json")
    info.add_text("workflow", "[1, 2]")
    buf = io.BytesIO()
    _img().save(buf, format="PNG", pnginfo=info)
    meta = read_image_metadata(buf.getvalue())
    assert meta.prompt is None and meta.workflow is None and len(meta.warnings) == 2
    assert "warning: 'prompt' text is not JSON" in format_info(meta)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "text", "bad_crc"])
def test_corrupt_file_error_names_it(tmp_path, kind):
    good = _comfy_png()
    data = {"truncated": good[: len(good) // 2], "garbage": bytes(range(256)) * 4,
            "text": b"Steps: 20, Sampler: Euler\n", "bad_crc": good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]}[kind]
    path = tmp_path / f"broken_{kind}.png"
    path.write_bytes(data)
    with pytest.raises(ImageMetadataError, match=f"broken_{kind}.png"):
        read_image_metadata(path)
    with pytest.raises(ImageMetadataError, match="image data"):
        read_image_metadata(data)
    with pytest.raises(FileNotFoundError):
        read_image_metadata(tmp_path / "missing.png")


def test_darkroom_png_source_and_params(tmp_path):
    info = "cube\nSteps: 4, Sampler: Euler, CFG scale: 2, Seed: 3, Size: 64x48, Version: darkroom 0.1.0"
    out = write_png(_img(), tmp_path / "d.png", parameters=info, prompt=COMFY_PROMPT)
    meta = read_image_metadata(out)
    assert meta.source == "darkroom"
    text = format_info(meta)
    assert "made by darkroom" in text and "ComfyUI workflow: 11 nodes, 2 sampler(s)" in text
