"""Prompt → 77-token chunks, A1111 and ComfyUI rules, with the real CLIP tokenizer (no model needed)."""

import logging

import torch

from darkroom.conditioning.chunks import PLACEHOLDER_ID, a1111_chunks, comfy_chunks
from darkroom.conditioning.embeddings import Embedding, EmbeddingLibrary

BOS, EOS = 49406, 49407
A, CAT, DOG, COMMA = 320, 2368, 1929, 267


def ids(tok, text):
    return tok([text], add_special_tokens=False)["input_ids"][0]


def padded(body, pad=EOS):
    return [BOS] + body + [EOS] + [pad] * (75 - len(body))


# --- A1111 -----------------------------------------------------------------------------------------------------------


def test_single_chunk_and_weights(tok_l):
    (c,), n = a1111_chunks("a (cat:1.5)", tok_l)
    assert c.tokens == padded([A, CAT]) and len(c.tokens) == 77
    assert c.weights == [1.0, 1.0, 1.5] + [1.0] * 74
    assert n == 2
    (c,), n = a1111_chunks("", tok_l)
    assert c.tokens == [BOS] + [EOS] * 76 and n == 0


def test_long_prompt_splits_at_75(tok_l):
    chunks, n = a1111_chunks("cat " * 100, tok_l)
    assert [c.tokens for c in chunks] == [[BOS] + [CAT] * 75 + [EOS], padded([CAT] * 25)]
    assert n == 100


def test_comma_backtrack(tok_l):
    text = "cat " * 70 + ", " + "dog " * 10
    chunks, _ = a1111_chunks(text, tok_l)
    # the chunk fills at the 5th dog; the comma is 5 tokens back (<= 20): the dogs move to the next chunk
    assert chunks[0].tokens == padded([CAT] * 70 + [COMMA])
    assert chunks[1].tokens == padded([DOG] * 10)
    chunks, _ = a1111_chunks(text, tok_l, comma_backtrack=0)
    assert chunks[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [DOG] * 4 + [EOS]
    assert chunks[1].tokens == padded([DOG] * 6)
    # a comma further back than 20 tokens does not move anything
    chunks, _ = a1111_chunks("cat " * 50 + ", " + "dog " * 30, tok_l)
    assert chunks[0].tokens == [BOS] + [CAT] * 50 + [COMMA] + [DOG] * 24 + [EOS]


def test_break(tok_l):
    chunks, n = a1111_chunks("a cat BREAK a dog", tok_l)
    assert [c.tokens for c in chunks] == [padded([A, CAT]), padded([A, DOG])]
    assert n == 77  # A1111 counts a BREAK-closed chunk as 75
    chunks, _ = a1111_chunks("a cat BREAK", tok_l)
    assert len(chunks) == 1  # a trailing BREAK adds no empty chunk


def test_emphasis_modes(tok_l):
    (c,), _ = a1111_chunks("(cat:1.5)", tok_l, emphasis="ignore")
    assert c.tokens == padded([CAT]) and set(c.weights) == {1.0}
    (c,), _ = a1111_chunks("(cat:1.5)", tok_l, emphasis="none")
    assert c.tokens == padded(ids(tok_l, "(cat:1.5)")) and set(c.weights) == {1.0}


def _lib(*embs):
    return EmbeddingLibrary(embeddings=embs)


def test_embedding_trigger_replaced(tok_l):
    emb = Embedding("my-style", {"*": torch.randn(3, 32)})
    (c,), n = a1111_chunks("a (my-style) cat", tok_l, embeddings=_lib(emb))
    assert c.tokens == padded([A, PLACEHOLDER_ID, PLACEHOLDER_ID, PLACEHOLDER_ID, CAT])
    assert c.weights[:6] == [1.0, 1.0, 1.1, 1.1, 1.1, 1.0]
    assert [(f.pos, f.embedding.name, f.start, f.count) for f in c.fixes] == [(2, "my-style", 0, 3)]
    assert n == 5
    # an embedding that does not fit the model stays plain text
    (c,), _ = a1111_chunks("a my-style cat", tok_l, embeddings=_lib(emb), fits=lambda e: False)
    assert c.tokens == padded([A] + ids(tok_l, "my-style") + [CAT]) and c.fixes == []


def test_embedding_never_split_across_chunks(tok_l):
    emb = Embedding("myemb", {"*": torch.randn(4, 32)})
    chunks, n = a1111_chunks("cat " * 73 + "myemb dog", tok_l, embeddings=_lib(emb))
    assert chunks[0].tokens == padded([CAT] * 73) and chunks[0].fixes == []
    assert chunks[1].tokens == padded([PLACEHOLDER_ID] * 4 + [DOG])
    assert [(f.pos, f.count) for f in chunks[1].fixes] == [(1, 4)]
    assert n == 75 + 5


# --- ComfyUI --------------------------------------------------------------------------------------------------------


def test_comfy_weights_and_pads(tok_l, tok_g):
    (c,), placed = comfy_chunks("a (cat:1.3)", tok_l)
    assert c.tokens == padded([A, CAT]) and c.weights[:4] == [1.0, 1.0, 1.3, 1.0] and placed == []
    (c,), _ = comfy_chunks("a [cat] BREAK", tok_g)
    body = ids(tok_g, "a [cat] BREAK")
    assert c.tokens == padded(body, pad=0)  # OpenCLIP pad id 0 after EOS; brackets and BREAK are plain text
    assert ids(tok_l, "break") == body[-1:]


def test_comfy_group_moves_or_splits(tok_l):
    chunks, _ = comfy_chunks("cat " * 74 + "(dog dog:1.2)", tok_l)
    # the short 2-token group does not fit after 74 tokens: the chunk is closed and padded, the group moves
    assert chunks[0].tokens == [BOS] + [CAT] * 74 + [EOS, EOS]
    assert chunks[1].tokens == padded([DOG, DOG]) and chunks[1].weights[1:3] == [1.2, 1.2]
    # a long group (>= 8 tokens) is split at the chunk boundary
    chunks, _ = comfy_chunks("cat " * 100, tok_l)
    assert [c.tokens for c in chunks] == [[BOS] + [CAT] * 75 + [EOS], padded([CAT] * 25)]


def test_comfy_embedding_syntax(tok_l, caplog):
    emb = Embedding("myemb", {"*": torch.randn(2, 32)})
    lib = _lib(emb)
    (c,), placed = comfy_chunks("a (embedding:myemb:1.2) cat", tok_l, embeddings=lib, dim=32)
    assert c.tokens == padded([A, PLACEHOLDER_ID, PLACEHOLDER_ID, CAT])
    assert c.weights[:5] == [1.0, 1.0, 1.2, 1.2, 1.0] and placed == [emb]
    assert [(f.pos, f.start, f.count) for f in c.fixes] == [(2, 0, 2)]
    # trailing comma is stripped from the name and kept as text
    (c,), _ = comfy_chunks("embedding:myemb, cat", tok_l, embeddings=lib, dim=32)
    assert c.tokens == padded([PLACEHOLDER_ID, PLACEHOLDER_ID, COMMA, CAT])
    # unknown name: dropped with a warning, the rest of the segment is still read
    with caplog.at_level(logging.WARNING):
        (c,), placed = comfy_chunks("a embedding:nope cat", tok_l, embeddings=lib, dim=32)
    assert c.tokens == padded([A, CAT]) and placed == [] and "nope" in caplog.text
    # wrong width for this encoder: dropped
    (c,), placed = comfy_chunks("embedding:myemb", tok_l, embeddings=lib, dim=48)
    assert c.tokens == padded([]) and placed == []
    # without a library, the words are plain text
    (c,), _ = comfy_chunks("embedding:myemb", tok_l)
    assert c.tokens == padded(ids(tok_l, "embedding:myemb"))


def test_comfy_long_embedding_split_keeps_vector_offsets(tok_l):
    emb = Embedding("big", {"*": torch.randn(10, 32)})
    chunks, _ = comfy_chunks("cat " * 70 + " embedding:big", tok_l, embeddings=_lib(emb), dim=32)
    # 10 vectors >= 8: split, 5 in the first chunk and 5 in the second, vectors 5..9 continuing
    assert [(f.pos, f.start, f.count) for f in chunks[0].fixes] == [(71, 0, 5)]
    assert [(f.pos, f.start, f.count) for f in chunks[1].fixes] == [(1, 5, 5)]
