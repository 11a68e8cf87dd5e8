"""Prompt → 77-token chunks with per-token weights and embedding slots, in A1111's and in ComfyUI's way.

A1111 (`sd_hijack_clip.tokenize_line`): emphasis runs are tokenized separately, packed 75 per chunk between BOS and
EOS, padded with EOS; a full chunk moves the text after a comma within the last `comma_backtrack` tokens to the next
chunk; `BREAK` pads the current chunk; an embedding's vectors never straddle two chunks. Trigger words are matched on
token sequences. (SD2/bigG then re-pad with their own pad id after the first EOS; see `encode.py`.)

ComfyUI (`sd1_clip.SDTokenizer.tokenize_with_weights`): each weighted segment is tokenized on its own (split at
`embedding:` words), groups shorter than 8 tokens move whole to the next chunk, longer ones are split; chunks are
BOS + ≤75 + EOS padded with the tokenizer's pad id; no comma backtrack, no BREAK.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .embeddings import Embedding, EmbeddingLibrary
from .prompt_parser import BREAK, parse_comfy_weights, parse_prompt_attention

log = logging.getLogger(__name__)

CHUNK = 75  # prompt tokens per chunk; +BOS +EOS = 77
#: Token id used in the slots an embedding's vectors replace (A1111 uses 0 too; never EOS, so pooling is unaffected).
PLACEHOLDER_ID = 0
_COMFY_MAX_WORD = 8
_RE_COMFY_EMBED_SPLIT = re.compile(" embedding:|\nembedding:")
_COMFY_EMBED = "embedding:"


class Fix(NamedTuple):
    """Embedding vectors [start, start+count) go into token positions [pos, pos+count) of the chunk."""

    pos: int
    embedding: Embedding
    start: int
    count: int


@dataclass
class PromptChunk:
    """77 token ids, their weights, and where embeddings' vectors go."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without BOS/EOS and without truncation."""
    if not texts:
        return []
    out = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [list(ids) for ids in out]


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    return int(bos), int(eos), int(eos if pad is None else pad)


def empty_chunk_a1111(tokenizer) -> PromptChunk:
    """A1111's padding chunk: BOS then 76 EOS, weights 1."""
    bos, eos, _ = _special_ids(tokenizer)
    return PromptChunk([bos] + [eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))


def a1111_chunks(
    text: str,
    tokenizer,
    *,
    embeddings: EmbeddingLibrary | None = None,
    fits: Callable[[Embedding], bool] | None = None,
    emphasis: str = "original",
    comma_backtrack: int = 20,
) -> tuple[list[PromptChunk], int]:
    """A1111's chunking of one prompt; returns the chunks and the token count shown by its UI counter.

    `fits(embedding)` says whether an embedding suits the model (A1111 skips mismatched ones, leaving the word as text).
    `emphasis`: "original"/"no_norm" (weights kept), "ignore" (weights dropped), "none" (brackets are plain text).
    """
    bos, eos, _ = _special_ids(tokenizer)
    comma = tokenizer.get_vocab().get(",</w>")
    parsed = [(text, 1.0)] if emphasis == "none" else parse_prompt_attention(text)
    tokenized = tokenize(tokenizer, [t for t, _ in parsed])
    lookup = embeddings.token_lookup(tokenizer) if embeddings is not None else {}

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK
        to_add = CHUNK - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [eos] * to_add
            chunk.weights += [1.0] * to_add
        chunk.tokens = [bos] + chunk.tokens + [eos]
        chunk.weights = [1.0] + chunk.weights + [1.0]
        chunk.fixes = [f._replace(pos=f.pos + 1) for f in chunk.fixes]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    def find_embedding(tokens: list[int], pos: int) -> tuple[Embedding | None, int]:
        for ids, name in lookup.get(tokens[pos], ()):
            if tokens[pos : pos + len(ids)] == ids:
                emb = embeddings.get(name) if embeddings is not None else None
                if emb is not None and (fits is None or fits(emb)):
                    return emb, len(ids)
        return None, 0

    for tokens, (seg, weight) in zip(tokenized, parsed):
        if (seg, weight) == BREAK:
            next_chunk()
            continue
        if emphasis == "ignore":
            weight = 1.0
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (comma_backtrack != 0 and len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                # Like A1111, an embedding's fix is not moved with its slots: its vectors land on the padding of the
                # closed chunk and the moved slots stay token 0. Reproduced on purpose (same images as A1111).
                next_chunk()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK:
                next_chunk()

            emb, n_matched = find_embedding(tokens, pos)
            if emb is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                pos += 1
                continue
            n = emb.num_vectors
            if n > CHUNK:
                raise ValueError(f"embedding {emb.name!r} has {n} vectors; at most {CHUNK} fit in a prompt chunk")
            if len(chunk.tokens) + n > CHUNK:
                next_chunk()
            chunk.fixes.append(Fix(len(chunk.tokens), emb, 0, n))
            chunk.tokens += [PLACEHOLDER_ID] * n
            chunk.weights += [weight] * n
            pos += n_matched

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def comfy_chunks(
    text: str,
    tokenizer,
    *,
    embeddings: EmbeddingLibrary | None = None,
    key: str = "clip_l",
    dim: int | None = None,
    max_length: int = 77,
) -> tuple[list[PromptChunk], list[Embedding]]:
    """ComfyUI's tokenize_with_weights for one encoder; returns chunks and the embeddings placed.

    `embedding:name` words are looked up with `embeddings.resolve`; vectors are taken for `key` and must be `dim`
    wide, otherwise the embedding is dropped with a warning (as ComfyUI does)."""
    bos, eos, pad = _special_ids(tokenizer)
    groups: list[list[tuple[int | Embedding, float, int]]] = []  # (token or embedding, weight, vector index)
    placed: list[Embedding] = []

    for segment, weight in parse_comfy_weights(text):
        parts = _RE_COMFY_EMBED_SPLIT.split(segment)
        words = [parts[0]] + [_COMFY_EMBED + p for p in parts[1:]]
        for word in (w for w in words if w != ""):
            if word.startswith(_COMFY_EMBED) and embeddings is not None:
                emb, leftover = _comfy_embedding(word[len(_COMFY_EMBED):].strip("\n"), embeddings)
                if emb is None:
                    log.warning("embedding %r does not exist, ignoring", word[len(_COMFY_EMBED):])
                elif dim is not None and emb.for_encoder(key, dim) is None:
                    log.warning("embedding %r does not fit this text encoder (%s, width %s), ignoring",
                                emb.name, key, dim)
                else:
                    placed.append(emb)
                    groups.append([(emb, weight, i) for i in range(emb.num_vectors)])
                if leftover == "":
                    continue
                word = leftover
            groups.append([(t, weight, 0) for t in tokenize(tokenizer, [word])[0]])

    chunks: list[PromptChunk] = []
    batch: list[tuple[int | Embedding, float, int]] = [(bos, 1.0, 0)]

    def close(b: list, n_pad: int) -> None:
        b.append((eos, 1.0, 0))
        b.extend([(pad, 1.0, 0)] * n_pad)
        chunks.append(_to_chunk(b))

    for group in groups:
        is_large = len(group) >= _COMFY_MAX_WORD
        while group:
            if len(group) + len(batch) > max_length - 1:
                remaining = max_length - len(batch) - 1
                if is_large:
                    batch.extend(group[:remaining])
                    close(batch, 0)
                    group = group[remaining:]
                else:
                    close(batch, remaining)
                batch = [(bos, 1.0, 0)]
            else:
                batch.extend(group)
                group = []
    close(batch, max(0, max_length - len(batch) - 1))
    return chunks, placed


def _to_chunk(entries: list[tuple[int | Embedding, float, int]]) -> PromptChunk:
    """Token/embedding entries → ids with placeholders and one fix per contiguous run of one embedding's vectors."""
    c = PromptChunk()
    for pos, (t, w, vec_idx) in enumerate(entries):
        if isinstance(t, Embedding):
            c.tokens.append(PLACEHOLDER_ID)
            last = c.fixes[-1] if c.fixes else None
            if (last is not None and last.embedding is t and last.pos + last.count == pos
                    and last.start + last.count == vec_idx):
                c.fixes[-1] = last._replace(count=last.count + 1)
            else:
                c.fixes.append(Fix(pos, t, vec_idx, 1))
        else:
            c.tokens.append(int(t))
        c.weights.append(float(w))
    return c


def _comfy_embedding(ref: str, embeddings: EmbeddingLibrary) -> tuple[Embedding | None, str]:
    """ComfyUI `_try_get_embedding`: the first word names the embedding, the rest is text; retry without commas."""
    split = ref.split()
    name = split[0] if split else ""
    leftover = " ".join(split[1:])
    emb = embeddings.resolve(name) if name else None
    if emb is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            emb = embeddings.resolve(stripped) if stripped else None
            return emb, "{} {}".format(name[len(stripped):], leftover)
    return emb, leftover
