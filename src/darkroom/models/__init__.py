"""darkroom.models: model files and the loaded models.

- `family`   — Family, ModelKind, UnsupportedModelError (what a checkpoint is)
- `bundle`   — Checkpoint (a loaded model: UNet, VAE, text encoders, tokenizers, schedule), BetaSchedule
- `detect`   — read_header, detect_kind, detect_file: kind from keys/shapes only
- `config`   — shipped diffusers configs per family (`darkroom/configs/`) and inference from shapes
- `convert`  — all key renaming: LDM/A1111 single file ↔ diffusers; save_single_file
- `loader`   — load_checkpoint, load_vae (meta-device build, lazy safetensors, pickle policy)
- `hashing`  — A1111 model hash and LoRA addnet hash with an on-disk cache
- `registry` — ModelRegistry: listing/finding installed models, describe()
- `errors`   — ModelFileError, UnsafeModelFileError, ModelNotFoundError
- `lora*`    — LoRA files and patching
"""
