"""Model registry: names with sub-folders, A1111/ComfyUI folder names, diffusers folders, built-ins, lookups."""

from __future__ import annotations

import hashlib

import pytest

from darkroom.models.errors import ModelNotFoundError
from darkroom.models.registry import ModelRegistry
from darkroom.settings import Settings
from darkroom.testing.tiny import shared_tiny_checkpoint


def touch(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def tree(tmp_path):
    models = tmp_path / "models"
    touch(models / "checkpoints" / "b.safetensors")
    touch(models / "checkpoints" / "sdxl" / "Juggernaut.safetensors")
    touch(models / "checkpoints" / "old.ckpt")
    touch(models / "checkpoints" / "notes.txt")
    touch(models / "checkpoints" / ".hidden.safetensors")
    touch(models / "checkpoints" / "pipe" / "model_index.json", b"{}")
    touch(models / "checkpoints" / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    touch(models / "loras" / "style" / "ink.safetensors")
    a1111 = tmp_path / "a1111" / "models"
    touch(a1111 / "Stable-diffusion" / "a1111-model.safetensors")
    touch(a1111 / "Stable-diffusion" / "b.safetensors")  # shadowed by the main root's b.safetensors
    touch(a1111 / "Lora" / "detail.safetensors")
    touch(a1111 / "VAE" / "vae-ft-mse.safetensors")
    settings = Settings(models_dir=models, extra_model_paths=[a1111], data_dir=tmp_path / "data")
    return settings, models, a1111


def test_lists_with_subfolders_and_a1111_names(tree):
    settings, models, a1111 = tree
    reg = ModelRegistry(settings, builtin_checkpoints=[])
    assert reg.checkpoints() == ["a1111-model.safetensors", "b.safetensors", "old.ckpt", "pipe",
                                 "sdxl/Juggernaut.safetensors"]
    assert reg.entries("checkpoints")["b.safetensors"] == models / "checkpoints" / "b.safetensors"
    assert reg.list("loras") == ["detail.safetensors", "style/ink.safetensors"]
    assert reg.list("vae") == ["vae-ft-mse.safetensors"]
    assert reg.list("embeddings") == []
    with pytest.raises(ValueError, match="unknown model kind"):
        reg.list("weights")


def test_find_forms(tree, tmp_path):
    settings, models, a1111 = tree
    reg = ModelRegistry(settings, builtin_checkpoints=[])
    jug = models / "checkpoints" / "sdxl" / "Juggernaut.safetensors"
    assert reg.find("checkpoints", "sdxl/Juggernaut.safetensors") == jug
    assert reg.find("checkpoints", "sdxl/Juggernaut") == jug
    assert reg.find("checkpoints", "Juggernaut.safetensors") == jug  # unique file name without its folder
    assert reg.find("checkpoints", "Juggernaut") == jug
    assert reg.find("checkpoints", "sdxl\\Juggernaut.safetensors") == jug  # Windows separators
    assert reg.find("checkpoints", "sdxl/Juggernaut.safetensors [0123456789]") == jug  # A1111 title
    assert reg.find("checkpoints", str(jug)) == jug
    outside = touch(tmp_path / "elsewhere" / "x.safetensors")
    assert reg.find("checkpoints", outside) == outside
    assert reg.find("checkpoints", "pipe") == models / "checkpoints" / "pipe"
    assert reg.find("loras", "detail") == a1111 / "Lora" / "detail.safetensors"


def test_not_found_lists_names(tree):
    settings, _, _ = tree
    reg = ModelRegistry(settings, builtin_checkpoints=[])
    with pytest.raises(ModelNotFoundError) as err:
        reg.find("loras", "missing")
    msg = str(err.value)
    assert "no loras model named 'missing'" in msg and "detail.safetensors, style/ink.safetensors" in msg
    assert isinstance(err.value, LookupError)


def test_builtin_only_when_nothing_installed(tmp_path):
    builtin = touch(tmp_path / "pkg" / "darkroom-default.safetensors")
    empty = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    reg = ModelRegistry(empty, builtin_checkpoints=[builtin])
    assert reg.checkpoints() == ["darkroom-default.safetensors"]
    touch(tmp_path / "models" / "checkpoints" / "mine.safetensors")
    assert reg.checkpoints() == ["mine.safetensors"]
    assert reg.find("checkpoints", "darkroom-default") == builtin  # always findable by name
    with pytest.raises(ModelNotFoundError, match="Available: mine.safetensors"):
        reg.find("checkpoints", "other")


def test_describe(tmp_path):
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    ckpt = touch(tmp_path / "models" / "checkpoints" / "tiny.safetensors",
                 shared_tiny_checkpoint("sdxl-base").read_bytes())
    lora = touch(tmp_path / "models" / "loras" / "l.safetensors", b"")
    from safetensors.torch import save_file
    import torch

    save_file({"lora_unet_a.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    pickle = touch(tmp_path / "models" / "checkpoints" / "p.ckpt")
    reg = ModelRegistry(settings, builtin_checkpoints=[])
    info = reg.describe(ckpt)
    assert (info.name, info.kind, info.size, info.builtin) == ("tiny.safetensors", "SDXL", ckpt.stat().st_size, False)
    assert not (tmp_path / "data" / "cache" / "hashes.json").exists()  # lazy: nothing hashed yet
    assert info.short_hash == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    assert (tmp_path / "data" / "cache" / "hashes.json").exists()
    assert reg.describe(lora, "loras").kind == "a LoRA"
    assert reg.describe(lora).kind == "unsupported: looks like a LoRA"
    assert reg.describe(pickle).kind == "pickle file (not inspected)"
    assert [i.name for i in reg.describe_all()] == ["p.ckpt", "tiny.safetensors"]
