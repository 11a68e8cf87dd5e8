"""object_info of darkroom's nodes against ComfyUI's (shared/reference/comfyui-protocol.md §3 and ComfyUI 0.3.x
source): input names in order, types, defaults, ranges, choices and outputs, so the official frontend and shared
API workflows see the same nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom.graph import object_info
from darkroom.nodes import NODE_CLASSES, default_registry
from darkroom.sampling import SAMPLER_NAMES, SCHEDULER_NAMES

M = 16384
COMBO = "COMBO"
# class -> (required inputs [(name, type, {option: value})], outputs, output node)
EXPECTED: dict[str, tuple[list[tuple[str, str, dict]], list[str], bool]] = {
    "CheckpointLoaderSimple": ([("ckpt_name", COMBO, {})], ["MODEL", "CLIP", "VAE"], False),
    "VAELoader": ([("vae_name", COMBO, {})], ["VAE"], False),
    "LoraLoader": ([("model", "MODEL", {}), ("clip", "CLIP", {}), ("lora_name", COMBO, {}),
                    ("strength_model", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
                    ("strength_clip", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0})], ["MODEL", "CLIP"], False),
    "LoraLoaderModelOnly": ([("model", "MODEL", {}), ("lora_name", COMBO, {}),
                             ("strength_model", "FLOAT", {"default": 1.0})], ["MODEL"], False),
    "CLIPSetLastLayer": ([("clip", "CLIP", {}), ("stop_at_clip_layer", "INT", {"default": -1, "min": -24, "max": -1})],
                         ["CLIP"], False),
    "CLIPTextEncode": ([("text", "STRING", {"multiline": True, "dynamicPrompts": True}), ("clip", "CLIP", {})],
                       ["CONDITIONING"], False),
    "CLIPTextEncodeSDXL": ([("clip", "CLIP", {}), ("width", "INT", {"default": 1024}),
                            ("height", "INT", {"default": 1024}), ("crop_w", "INT", {"default": 0}),
                            ("crop_h", "INT", {"default": 0}), ("target_width", "INT", {"default": 1024}),
                            ("target_height", "INT", {"default": 1024}), ("text_g", "STRING", {"multiline": True}),
                            ("text_l", "STRING", {"multiline": True})], ["CONDITIONING"], False),
    "CLIPTextEncodeSDXLRefiner": ([("ascore", "FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0}),
                                   ("width", "INT", {"default": 1024}), ("height", "INT", {"default": 1024}),
                                   ("text", "STRING", {}), ("clip", "CLIP", {})], ["CONDITIONING"], False),
    "ConditioningCombine": ([("conditioning_1", "CONDITIONING", {}), ("conditioning_2", "CONDITIONING", {})],
                            ["CONDITIONING"], False),
    "ConditioningSetArea": ([("conditioning", "CONDITIONING", {}), ("width", "INT", {"default": 64, "step": 8}),
                             ("height", "INT", {"default": 64, "step": 8}), ("x", "INT", {"default": 0, "step": 8}),
                             ("y", "INT", {"default": 0, "step": 8}), ("strength", "FLOAT", {"default": 1.0})],
                            ["CONDITIONING"], False),
    "ConditioningSetMask": ([("conditioning", "CONDITIONING", {}), ("mask", "MASK", {}),
                             ("strength", "FLOAT", {"default": 1.0}), ("set_cond_area", ["default", "mask bounds"], {})],
                            ["CONDITIONING"], False),
    "ConditioningAverage": ([("conditioning_to", "CONDITIONING", {}), ("conditioning_from", "CONDITIONING", {}),
                             ("conditioning_to_strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})],
                            ["CONDITIONING"], False),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING", {})], ["CONDITIONING"], False),
    "ConditioningSetTimestepRange": ([("conditioning", "CONDITIONING", {}), ("start", "FLOAT", {"default": 0.0}),
                                      ("end", "FLOAT", {"default": 1.0})], ["CONDITIONING"], False),
    "KSampler": ([("model", "MODEL", {}),
                  ("seed", "INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}),
                  ("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
                  ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}),
                  ("sampler_name", list(SAMPLER_NAMES), {}), ("scheduler", list(SCHEDULER_NAMES), {}),
                  ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("latent_image", "LATENT", {}),
                  ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})], ["LATENT"], False),
    "KSamplerAdvanced": ([("model", "MODEL", {}), ("add_noise", ["enable", "disable"], {}),
                          ("noise_seed", "INT", {"default": 0}), ("steps", "INT", {"default": 20}),
                          ("cfg", "FLOAT", {"default": 8.0}), ("sampler_name", list(SAMPLER_NAMES), {}),
                          ("scheduler", list(SCHEDULER_NAMES), {}), ("positive", "CONDITIONING", {}),
                          ("negative", "CONDITIONING", {}), ("latent_image", "LATENT", {}),
                          ("start_at_step", "INT", {"default": 0}), ("end_at_step", "INT", {"default": 10000}),
                          ("return_with_leftover_noise", ["disable", "enable"], {})], ["LATENT"], False),
    "EmptyLatentImage": ([("width", "INT", {"default": 512, "min": 16, "max": M, "step": 8}),
                          ("height", "INT", {"default": 512, "min": 16, "max": M, "step": 8}),
                          ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})], ["LATENT"], False),
    "VAEDecode": ([("samples", "LATENT", {}), ("vae", "VAE", {})], ["IMAGE"], False),
    "VAEEncode": ([("pixels", "IMAGE", {}), ("vae", "VAE", {})], ["LATENT"], False),
    "VAEDecodeTiled": ([("samples", "LATENT", {}), ("vae", "VAE", {}), ("tile_size", "INT", {"default": 512}),
                        ("overlap", "INT", {"default": 64}), ("temporal_size", "INT", {"default": 64}),
                        ("temporal_overlap", "INT", {"default": 8})], ["IMAGE"], False),
    "VAEEncodeTiled": ([("pixels", "IMAGE", {}), ("vae", "VAE", {}), ("tile_size", "INT", {"default": 512}),
                        ("overlap", "INT", {"default": 64}), ("temporal_size", "INT", {"default": 64}),
                        ("temporal_overlap", "INT", {"default": 8})], ["LATENT"], False),
    "VAEEncodeForInpaint": ([("pixels", "IMAGE", {}), ("vae", "VAE", {}), ("mask", "MASK", {}),
                             ("grow_mask_by", "INT", {"default": 6, "min": 0, "max": 64})], ["LATENT"], False),
    "SetLatentNoiseMask": ([("samples", "LATENT", {}), ("mask", "MASK", {})], ["LATENT"], False),
    "LatentUpscale": ([("samples", "LATENT", {}),
                       ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"], {}),
                       ("width", "INT", {"default": 512, "min": 0, "step": 8}),
                       ("height", "INT", {"default": 512, "min": 0, "step": 8}),
                       ("crop", ["disabled", "center"], {})], ["LATENT"], False),
    "LatentUpscaleBy": ([("samples", "LATENT", {}),
                         ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"], {}),
                         ("scale_by", "FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0})], ["LATENT"], False),
    "LatentComposite": ([("samples_to", "LATENT", {}), ("samples_from", "LATENT", {}), ("x", "INT", {"default": 0}),
                         ("y", "INT", {"default": 0}), ("feather", "INT", {"default": 0})], ["LATENT"], False),
    "LatentFromBatch": ([("samples", "LATENT", {}), ("batch_index", "INT", {"default": 0, "max": 63}),
                         ("length", "INT", {"default": 1, "max": 64})], ["LATENT"], False),
    "RepeatLatentBatch": ([("samples", "LATENT", {}), ("amount", "INT", {"default": 1, "max": 64})], ["LATENT"], False),
    "LoadImage": ([("image", COMBO, {"image_upload": True})], ["IMAGE", "MASK"], False),
    "LoadImageMask": ([("image", COMBO, {"image_upload": True}), ("channel", ["alpha", "red", "green", "blue"], {})],
                      ["MASK"], False),
    "SaveImage": ([("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"})], [], True),
    "PreviewImage": ([("images", "IMAGE", {})], [], True),
    "ImageScale": ([("image", "IMAGE", {}),
                    ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
                    ("width", "INT", {"default": 512}), ("height", "INT", {"default": 512}),
                    ("crop", ["disabled", "center"], {})], ["IMAGE"], False),
    "ImageScaleBy": ([("image", "IMAGE", {}),
                      ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
                      ("scale_by", "FLOAT", {"default": 1.0})], ["IMAGE"], False),
    "ImageInvert": ([("image", "IMAGE", {})], ["IMAGE"], False),
    "ImageBatch": ([("image1", "IMAGE", {}), ("image2", "IMAGE", {})], ["IMAGE"], False),
    "EmptyImage": ([("width", "INT", {"default": 512}), ("height", "INT", {"default": 512}),
                    ("batch_size", "INT", {"default": 1}), ("color", "INT", {"default": 0, "max": 0xFFFFFF})],
                   ["IMAGE"], False),
    "ImagePadForOutpaint": ([("image", "IMAGE", {}), ("left", "INT", {"default": 0, "step": 8}),
                             ("top", "INT", {"default": 0, "step": 8}), ("right", "INT", {"default": 0, "step": 8}),
                             ("bottom", "INT", {"default": 0, "step": 8}), ("feathering", "INT", {"default": 40})],
                            ["IMAGE", "MASK"], False),
    "ImageCompositeMasked": ([("destination", "IMAGE", {}), ("source", "IMAGE", {}), ("x", "INT", {"default": 0}),
                              ("y", "INT", {"default": 0}), ("resize_source", "BOOLEAN", {"default": False})],
                             ["IMAGE"], False),
    "SolidMask": ([("value", "FLOAT", {"default": 1.0}), ("width", "INT", {"default": 512}),
                   ("height", "INT", {"default": 512})], ["MASK"], False),
    "InvertMask": ([("mask", "MASK", {})], ["MASK"], False),
    "GrowMask": ([("mask", "MASK", {}), ("expand", "INT", {"default": 0, "min": -M, "max": M}),
                  ("tapered_corners", "BOOLEAN", {"default": True})], ["MASK"], False),
    "FeatherMask": ([("mask", "MASK", {}), ("left", "INT", {"default": 0}), ("top", "INT", {"default": 0}),
                     ("right", "INT", {"default": 0}), ("bottom", "INT", {"default": 0})], ["MASK"], False),
    "MaskToImage": ([("mask", "MASK", {})], ["IMAGE"], False),
    "ImageToMask": ([("image", "IMAGE", {}), ("channel", ["red", "green", "blue", "alpha"], {})], ["MASK"], False),
    "UpscaleModelLoader": ([("model_name", COMBO, {})], ["UPSCALE_MODEL"], False),
    "ImageUpscaleWithModel": ([("upscale_model", "UPSCALE_MODEL", {}), ("image", "IMAGE", {})], ["IMAGE"], False),
    "ControlNetLoader": ([("control_net_name", COMBO, {})], ["CONTROL_NET"], False),
    "DiffControlNetLoader": ([("model", "MODEL", {}), ("control_net_name", COMBO, {})], ["CONTROL_NET"], False),
    "ControlNetApplyAdvanced": ([("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
                                 ("control_net", "CONTROL_NET", {}), ("image", "IMAGE", {}),
                                 ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}),
                                 ("start_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
                                 ("end_percent", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})],
                                ["CONDITIONING", "CONDITIONING"], False),
    "ControlNetApply": ([("conditioning", "CONDITIONING", {}), ("control_net", "CONTROL_NET", {}),
                         ("image", "IMAGE", {}), ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})],
                        ["CONDITIONING"], False),
    "Canny": ([("image", "IMAGE", {}), ("low_threshold", "FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99}),
               ("high_threshold", "FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99})], ["IMAGE"], False),
}


#: darkroom's own nodes, beside ComfyUI's core set.
DARKROOM_NODES = {"CLIPTextEncodeA1111", "T2IAdapterLoader", "ControlNetApplyA1111", "ControlNetPreprocessor",
                  "OpenPoseRender", "SeamlessTiling", "CLIPVisionLoader", "CLIPVisionEncode",
                  "IPAdapterModelLoader", "IPAdapterAdvanced",
                  "UltimateSDUpscale", "UltimateSDUpscaleNoUpscale"}  # the custom node's names (issue #7)


def test_every_expected_node_is_registered_in_order():
    info = object_info(default_registry())
    assert set(info) == set(EXPECTED) | DARKROOM_NODES
    assert len(NODE_CLASSES) == len(EXPECTED) + len(DARKROOM_NODES) == 64
    assert info["CLIPTextEncodeA1111"]["python_module"].startswith("darkroom_nodes")
    tiling = info["SeamlessTiling"]
    assert tiling["python_module"].startswith("darkroom_nodes")
    assert list(tiling["input"]["required"]) == ["model", "vae", "enabled"]
    assert tiling["input"]["required"]["enabled"][0] == "BOOLEAN" and tiling["output"] == ["MODEL", "VAE"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_comfyui(name):
    info = object_info(default_registry())[name]
    inputs, outputs, output_node = EXPECTED[name]
    required = info["input"]["required"]
    assert list(required) == [n for n, _, _ in inputs]
    assert info["input_order"]["required"] == list(required)
    for input_name, kind, options in inputs:
        head, opts = required[input_name]
        if kind == COMBO:
            assert isinstance(head, list)
        else:
            assert head == kind, f"{name}.{input_name}"
        for key, value in options.items():
            assert opts.get(key) == value, f"{name}.{input_name}: {key} = {opts.get(key)!r}, expected {value!r}"
    assert info["output"] == outputs
    assert info["output_node"] is output_node
    assert info["name"] == name and info["python_module"] == "nodes"


def test_hidden_and_optional_inputs():
    info = object_info(default_registry())
    for name in ("SaveImage", "PreviewImage"):
        assert info[name]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["ImageCompositeMasked"]["input"]["optional"] == {"mask": ["MASK", {}]}
    assert info["KSamplerAdvanced"]["display_name"] == "KSampler (Advanced)"
    assert info["CheckpointLoaderSimple"]["display_name"] == "Load Checkpoint"


class _Models:
    def __init__(self, files: dict[str, list[str]]) -> None:
        self.files = files

    def list(self, kind: str) -> list[str]:
        return self.files.get(kind, [])


def test_bound_registry_lists_model_files_and_input_images(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.webp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    models = _Models({"checkpoints": ["sd15.safetensors", "xl/base.safetensors"], "loras": ["style.safetensors"],
                      "vae": ["ft-mse.safetensors"]})
    info = object_info(default_registry(models=models, input_dir=tmp_path))
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sd15.safetensors",
                                                                                  "xl/base.safetensors"]
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    assert info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == ["ft-mse.safetensors"]
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["a.jpg", "b.png", "sub/c.webp"]
    models.files["checkpoints"].append("new.safetensors")  # lists are read when asked, not at registration
    again = object_info(default_registry(models=models, input_dir=tmp_path), "CheckpointLoaderSimple")
    assert "new.safetensors" in again["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
