"""darkroom.ipadapter: IP-Adapter reference images (SD1.x / SDXL; plain, plus, plus-face and full-face models).

    vision = load_clip_vision(path)                      # models/clip_vision/*.safetensors (HF CLIP vision layout)
    adapter = load_ipadapter(path, device=..., dtype=...) # models/ipadapter/*.safetensors (image_proj.* + ip_adapter.*);
                                                         # .bin/.pth pickles with allow_unsafe_pickle
    use = reference_use(adapter, vision, image, weight=0.8, weight_type="style transfer", sdxl=True)  # nodes.ipadapter
    # or: make_use(adapter, cond_embeds, uncond_embeds, weight=…, start_at=…, end_at=…)  (attention module)
    model = replace(model_ref, ipadapters=(*model_ref.ipadapters, use))

While sampling, `installed(unet, uses)` puts `IPAttnProcessor`s on the UNet's cross-attention layers (restored after)
and `attach` marks the conditioning items; the denoiser passes each call's image-prompt tokens per row through
`unet_kwargs` (cross_attention_kwargs["ip_hidden_states"]). `units` serves requests: A1111 ControlNet-extension units
with ip-adapter modules (encoder and adapter files found, workflow nodes, the engine's side). Submodules import torch;
this module imports nothing.
"""
