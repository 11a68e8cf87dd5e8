"""A1111 model hash and LoRA addnet hash, and the on-disk cache that avoids re-reading large files."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from darkroom.models import hashing
from darkroom.models.errors import ModelFileError
from darkroom.models.hashing import HashCache, addnet_hash_file, lora_hash, model_hash, sha256_file, short_hash


@pytest.fixture()
def st_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a.lora_down.weight": torch.randn(4, 300, generator=g), "a.lora_up.weight": torch.randn(300, 4)},
              str(path), metadata={"ss_network_dim": "4"})
    return path


def test_sha256_and_short_hash(st_file):
    want = hashlib.sha256(st_file.read_bytes()).hexdigest()
    assert sha256_file(st_file) == want
    assert short_hash(want) == want[:10]
    assert model_hash(st_file) == want[:10]


def test_addnet_hash_skips_the_header(st_file, tmp_path):
    raw = st_file.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    want = hashlib.sha256(raw[8 + n:]).hexdigest()
    assert addnet_hash_file(st_file) == want
    assert lora_hash(st_file) == want[:12]
    # same tensors, other metadata: same addnet hash, different file hash
    other = tmp_path / "renamed.safetensors"
    from safetensors.torch import load_file

    save_file(load_file(str(st_file)), str(other), metadata={"ss_network_dim": "4", "ss_output_name": "x"})
    assert addnet_hash_file(other) == want and sha256_file(other) != sha256_file(st_file)


def test_cache_reuse_does_not_read_the_file(st_file, tmp_path, monkeypatch):
    cache_file = tmp_path / "cache" / "hashes.json"
    first = HashCache(cache_file).model_hash(st_file)
    entry = json.loads(cache_file.read_text())[str(st_file.resolve())]
    assert entry["sha256"].startswith(first) and entry["size"] == st_file.stat().st_size

    def boom(*a, **k):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(hashing, "_hash_file", boom)
    assert HashCache(cache_file).model_hash(st_file) == first  # a new process-like cache object, same answer
    assert model_hash(st_file, cache_file) == first
    monkeypatch.undo()

    # a changed file (size/mtime) is hashed again
    st_file.write_bytes(st_file.read_bytes() + b"")  # same bytes, new mtime
    os.utime(st_file, ns=(1, 1))
    calls = []
    real = hashing._hash_file
    monkeypatch.setattr(hashing, "_hash_file", lambda p, o=0: calls.append(p) or real(p, o))
    assert HashCache(cache_file).model_hash(st_file) == first and len(calls) == 1
    # addnet hashes share the cache entry
    lora = HashCache(cache_file).lora_hash(st_file)
    assert len(calls) == 2 and HashCache(cache_file).lora_hash(st_file) == lora and len(calls) == 2
    assert not list(cache_file.parent.glob(".hashes-*"))  # no temporary files left behind


def test_damaged_cache_is_ignored(st_file, tmp_path):
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{not json")
    assert HashCache(cache_file).model_hash(st_file) == hashlib.sha256(st_file.read_bytes()).hexdigest()[:10]
    assert json.loads(cache_file.read_text())  # rewritten valid


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="gone.safetensors"):
        HashCache(tmp_path / "h.json").model_hash(tmp_path / "gone.safetensors")
