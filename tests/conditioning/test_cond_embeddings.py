"""Textual-inversion files in every supported layout, the lazily scanned library, and the fitting rules."""

import hashlib
import os
import pickle
import time

import pytest
import torch
from safetensors.torch import save_file

from darkroom.conditioning.embeddings import (
    Embedding,
    EmbeddingError,
    EmbeddingLibrary,
    load_embedding,
    ti_hashes_infotext,
)


def _a1111_pt(path, vec, name="x"):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": 10,
                "sd_checkpoint": None, "sd_checkpoint_name": None}, path)


def test_formats(tmp_path):
    v = torch.randn(3, 8)
    _a1111_pt(tmp_path / "a.pt", v)
    save_file({"emb_params": v}, str(tmp_path / "b.safetensors"))
    save_file({"clip_l": torch.randn(2, 8), "clip_g": torch.randn(2, 12)}, str(tmp_path / "c.safetensors"))
    torch.save({"<my-concept>": torch.randn(8)}, tmp_path / "d.bin")  # diffusers learned_embeds.bin
    a, b, c, d = (load_embedding(tmp_path / f) for f in ("a.pt", "b.safetensors", "c.safetensors", "d.bin"))
    assert a.name == "a" and torch.equal(a.vectors["*"], v) and a.num_vectors == 3
    assert torch.equal(b.vectors["*"], v)
    assert set(c.vectors) == {"clip_l", "clip_g"} and c.num_vectors == 2
    assert d.vectors["*"].shape == (1, 8) and d.name == "d"


def test_parameter_saved_pt_loads(tmp_path):
    _a1111_pt(tmp_path / "p.pt", torch.nn.Parameter(torch.ones(2, 4)))
    assert torch.equal(load_embedding(tmp_path / "p.pt").vectors["*"], torch.ones(2, 4))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Evil()}}, f, protocol=2)
    with pytest.raises(EmbeddingError, match="cannot be loaded safely"):
        load_embedding(path)


def test_bad_layouts(tmp_path):
    save_file({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(EmbeddingError, match="unrecognised"):
        load_embedding(tmp_path / "two.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(2, 2, 2)}}, tmp_path / "3d.pt")
    with pytest.raises(EmbeddingError, match=r"\(N, D\)"):
        load_embedding(tmp_path / "3d.pt")
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(EmbeddingError, match="not an embedding file"):
        load_embedding(tmp_path / "x.txt")


def test_fitting_rules():
    single = Embedding("s", {"*": torch.zeros(2, 768)})
    xl = Embedding("x", {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)})
    sd1, sdxl, refiner = [("clip_l", 768)], [("clip_l", 768), ("clip_g", 1280)], [("clip_g", 1280)]
    # A1111: total width must match the model
    assert single.for_model(sd1) is not None and single.for_model(sdxl) is None
    assert xl.for_model(sdxl) is not None and xl.for_model(sd1) is None and xl.for_model(refiner) is None
    assert single.for_model([("clip_h", 1024)]) is None
    # ComfyUI: per encoder, by key, else the single tensor, and the width must match
    assert xl.for_encoder("clip_g", 1280) is xl.vectors["clip_g"]
    assert xl.for_encoder("clip_l", 768) is xl.vectors["clip_l"]
    assert single.for_encoder("clip_l", 768) is single.vectors["*"]
    assert single.for_encoder("clip_g", 1280) is None
    with pytest.raises(EmbeddingError):
        Embedding("bad", {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(3, 1280)})


def test_library_scan_lazy_and_refresh(tmp_path):
    d1, d2 = tmp_path / "e1", tmp_path / "e2"
    (d1 / "sub").mkdir(parents=True)
    d2.mkdir()
    _a1111_pt(d1 / "Alpha.pt", torch.ones(1, 4))
    save_file({"emb_params": torch.full((2, 4), 2.0)}, str(d1 / "sub" / "beta.safetensors"))
    save_file({"emb_params": torch.full((1, 4), 3.0)}, str(d2 / "Alpha.safetensors"))  # same stem: d1 wins
    (d1 / "empty.pt").write_bytes(b"")  # zero-size files are ignored, like A1111
    (d1 / "notes.txt").write_text("x")
    lib = EmbeddingLibrary([d1, d2, tmp_path / "missing"], rescan_interval=0)
    assert lib._files is None  # nothing scanned before first use
    assert lib.names() == ["Alpha", "beta"]
    assert torch.equal(lib.get("Alpha").vectors["*"], torch.ones(1, 4))
    assert lib.get("alpha") is None and lib.get("nope") is None
    # ComfyUI references: stem, relative path, with or without extension
    assert lib.resolve("beta").num_vectors == 2
    assert lib.resolve("sub/beta") is lib.resolve("sub/beta.safetensors") is lib.resolve("beta")
    assert lib.resolve("../x") is None
    # a new file shows up once the folder changes
    time.sleep(0.01)
    _a1111_pt(d2 / "gamma.pt", torch.zeros(1, 4))
    os.utime(d2, None)
    assert "gamma" in lib and len(lib) == 3
    # an unreadable file is skipped with a warning, not an exception
    (d2 / "broken.safetensors").write_bytes(b"garbage!")
    os.utime(d2, None)
    assert lib.get("broken") is None
    # folder checks are throttled by default
    slow = EmbeddingLibrary([d2])
    assert "gamma" in slow
    _a1111_pt(d2 / "delta.pt", torch.zeros(1, 4))
    os.utime(d2, (time.time() + 5, time.time() + 5))
    assert "delta" not in slow
    slow.refresh()
    assert "delta" in slow
    # in-memory embeddings
    lib.add(Embedding("mem", {"*": torch.zeros(1, 4)}))
    assert lib.get("mem").shorthash == ""


def test_shorthash_and_infotext(tmp_path):
    _a1111_pt(tmp_path / "neg:v2.pt", torch.ones(1, 4))
    emb = load_embedding(tmp_path / "neg:v2.pt")
    assert emb.shorthash == hashlib.sha256((tmp_path / "neg:v2.pt").read_bytes()).hexdigest()[:12]
    assert ti_hashes_infotext({emb.name: emb.shorthash, "mem": "", "a,b": "123"}) == f"negv2: {emb.shorthash}, ab: 123"


def test_token_lookup_longest_first(tmp_path, tok_l):
    lib = EmbeddingLibrary(embeddings=[Embedding("style", {"*": torch.zeros(1, 4)}),
                                       Embedding("style-two", {"*": torch.zeros(1, 4)})])
    ids_style = tok_l(["style"], add_special_tokens=False)["input_ids"][0]
    table = lib.token_lookup(tok_l)
    entries = table[ids_style[0]]
    assert [name for _, name in entries] == ["style-two", "style"]
    assert entries[-1][0] == ids_style
