"""Text encoding: prompt → cross-attention states `(B, 77·k, D)` (+ SDXL pooled `(B, P)`), A1111 or ComfyUI style.

Which hidden state each family uses (`clip_skip` = 1 means the family's standard layer, A1111 numbering):
- SD1.x (CLIP-L): last layer after `final_layer_norm`; clip skip N → `final_layer_norm(hidden_states[-N])`.
- SD2.x (OpenCLIP-H): LDM/A1111/ComfyUI take the penultimate of the 24 layers, then the final LN. The diffusers
  conversion drops the last layer (23 layers), so its `last_hidden_state` *is* that; a full 24-layer encoder is
  handled by starting one layer earlier. Clip skip N moves N-1 layers further up.
- SDXL: CLIP-L and bigG penultimate hidden states, no final LN, concatenated on channels (768 + 1280 = 2048); pooled =
  bigG `text_embeds` (projected EOS state of the final layer) of the first chunk. Refiner: bigG only (1280).
  A1111 ignores clip skip for SD2 and SDXL, so style "a1111" does too; style "comfy" honours it for every family
  (ComfyUI's `CLIPSetLastLayer(-N)` is clip skip N for SD1, N-1 for SD2/SDXL: see `clip_skip_from_comfy`).

Weights: A1111 multiplies each token's output by its weight, then rescales the chunk batch to its original mean
("Original" emphasis); ComfyUI moves weighted tokens away from the empty prompt: `(z − z_empty)·w + z_empty`.

Precision: encoders run in their own dtype on their own device (fp32 on CPU, the loaded fp16/bf16 on CUDA), as
A1111 and ComfyUI on GPU do; weighting, mean restore and the returned tensors are float32.
Embeddings are injected by a forward pre-hook on the text model's `embeddings` module that hands it token
embeddings with the vectors written in (its `inputs_embeds`); the hook lives only for the call and only acts on the
calling thread's forward, and the shared model is never resized or modified.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from ..models.family import Family
from .chunks import CHUNK, PromptChunk, a1111_chunks, comfy_chunks, empty_chunk_a1111
from .embeddings import Embedding, EmbeddingLibrary
from .prompt_schedule import prompt_schedule

log = logging.getLogger(__name__)

__all__ = [
    "Conditioning",
    "TextEncoders",
    "clip_skip_from_comfy",
    "encode_prompt",
    "encode_schedule",
    "pad_to_same_length",
    "repeat_to_common_length",
]

Style = Literal["a1111", "comfy"]
Emphasis = Literal["original", "no_norm", "ignore", "none"]
_EMPHASIS = ("original", "no_norm", "ignore", "none")


@dataclass
class Conditioning:
    """Encoded prompt(s): cross-attention states, SDXL pooled vector, and what the prompt used."""

    cross_attn: torch.Tensor  # (B, 77·k, D) float32
    pooled: torch.Tensor | None = None  # (B, P) float32 — SDXL (bigG), else None
    #: textual inversions used: name → A1111 short hash ('' when unknown) — for the `TI hashes` infotext
    embeddings_used: dict[str, str] = field(default_factory=dict)
    #: A1111's token count (its UI counter) of the longest prompt; ComfyUI style: tokens before padding
    token_count: int = 0

    @property
    def chunks(self) -> int:
        return self.cross_attn.shape[1] // (CHUNK + 2)


@dataclass(frozen=True)
class EncoderSpec:
    """How one text encoder of a family is read."""

    key: str  # embedding dict key: "clip_l" / "clip_h" / "clip_g"
    final_norm: bool  # apply final_layer_norm to an intermediate hidden state
    default_layer: int  # counted from the end of hidden_states: 1 = last layer, 2 = penultimate
    pooled: bool = False  # its projected pooled output is the model's pooled vector


FAMILY_ENCODERS: dict[Family, tuple[EncoderSpec, ...]] = {
    Family.SD1: (EncoderSpec("clip_l", True, 1),),
    Family.SD2: (EncoderSpec("clip_h", True, 1),),
    Family.SDXL: (EncoderSpec("clip_l", False, 2), EncoderSpec("clip_g", False, 2, pooled=True)),
    Family.SDXL_REFINER: (EncoderSpec("clip_g", False, 2, pooled=True),),
}
#: OpenCLIP ViT-H depth before diffusers' conversion drops the last layer.
_OPENCLIP_H_LAYERS = 24


@dataclass
class TextEncoders:
    """The text side of a checkpoint: family, encoders and tokenizers in `Checkpoint` order."""

    family: Family
    encoders: list[Any]
    tokenizers: list[Any]

    @classmethod
    def of(cls, obj: Any) -> "TextEncoders":
        """From a `Checkpoint` (or anything with `kind.family`, `text_encoders`, `tokenizers`) or a TextEncoders."""
        if isinstance(obj, TextEncoders):
            te = obj
        else:
            try:
                te = cls(Family(obj.kind.family), list(obj.text_encoders), list(obj.tokenizers))
            except AttributeError:
                raise TypeError(f"expected a Checkpoint or TextEncoders, got {type(obj).__name__}") from None
        n = len(FAMILY_ENCODERS[te.family])
        if len(te.encoders) != n or len(te.tokenizers) != n:
            raise ValueError(f"{te.family.value} needs {n} text encoder(s) and tokenizer(s); "
                             f"got {len(te.encoders)} and {len(te.tokenizers)}")
        return te

    @property
    def specs(self) -> tuple[EncoderSpec, ...]:
        return FAMILY_ENCODERS[self.family]

    def widths(self) -> list[tuple[str, int]]:
        """(embedding key, hidden size) of each encoder."""
        return [(s.key, int(e.config.hidden_size)) for s, e in zip(self.specs, self.encoders)]


def clip_skip_from_comfy(stop_at_clip_layer: int, family: Family) -> int:
    """ComfyUI `CLIPSetLastLayer` value → our clip skip (SD1: -N → N; SD2/SDXL: -N → N-1, so -1 → 0)."""
    if stop_at_clip_layer >= 0:
        raise ValueError(f"stop_at_clip_layer must be negative (got {stop_at_clip_layer})")
    n = -stop_at_clip_layer
    return n if family == Family.SD1 else n - 1


# --------------------------------------------------------------------------------------------------------------------
# Running one encoder
# --------------------------------------------------------------------------------------------------------------------


def _text_model(te: Any) -> Any:
    """The module holding `embeddings` / `final_layer_norm` (transformers 4: `.text_model`; 5: the model itself)."""
    return getattr(te, "text_model", te)


def _layer_from_end(te: Any, spec: EncoderSpec, family: Family, clip_skip: int) -> int:
    n_layers = int(te.config.num_hidden_layers)
    default = spec.default_layer
    if family == Family.SD2 and n_layers == _OPENCLIP_H_LAYERS:
        default = 2  # unconverted OpenCLIP-H depth: its penultimate layer is the standard output
    from_end = default + clip_skip - 1
    if from_end == 0 and family == Family.SD2:
        # ComfyUI's CLIPSetLastLayer(-1) on SD2 asks for OpenCLIP's last layer, which diffusers' conversion dropped
        log.warning("this SD2 text encoder has no final OpenCLIP layer (converted checkpoint); using the penultimate")
        from_end = 1
    if from_end < 1 or from_end > n_layers:
        lo = 2 - default
        raise ValueError(f"clip skip {clip_skip} is out of range for this {n_layers}-layer text encoder "
                         f"(allowed: {lo}..{n_layers - default + 1})")
    return from_end


@contextlib.contextmanager
def _inject(te: Any, ids: torch.Tensor, rows: list[list[tuple[int, torch.Tensor]]]):
    """While active, the text model's embeddings receive token embeddings with `rows[b]` (pos, vectors) written in."""
    if not any(rows):
        yield
        return
    emb_mod = _text_model(te).embeddings
    owner = threading.get_ident()  # (identity by thread, not tensor: offload hooks may move input_ids to another device)

    def pre_hook(module, args, kwargs):
        if args:
            kwargs = {**kwargs, "input_ids": args[0], **({"position_ids": args[1]} if len(args) > 1 else {})}
        input_ids = kwargs.get("input_ids")
        if input_ids is None or threading.get_ident() != owner or tuple(input_ids.shape) != tuple(ids.shape):
            return None  # another thread's call on the shared model: leave it alone
        embeds = module.token_embedding(input_ids)  # (B, 77, D)
        for b, fixes in enumerate(rows):
            for pos, vec in fixes:
                n = min(embeds.shape[1] - pos, vec.shape[0])
                if n > 0:
                    embeds[b, pos : pos + n] = vec[:n].to(device=embeds.device, dtype=embeds.dtype)
        return (), {**kwargs, "input_ids": None, "inputs_embeds": embeds}

    handle = emb_mod.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def run_encoder(te: Any, spec: EncoderSpec, tokens: list[list[int]], fixes: list[list[tuple[int, torch.Tensor]]],
                from_end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode token rows (N, 77) → hidden states (N, 77, D) float32 and (for the pooled encoder) pooled (N, P)."""
    device = next(te.parameters()).device
    ids = torch.tensor(tokens, dtype=torch.long, device=device)
    with torch.no_grad():
        with _inject(te, ids, fixes):
            out = te(input_ids=ids, output_hidden_states=True)
        hs = out.hidden_states
        if spec.final_norm:
            z = out.last_hidden_state if from_end == 1 else _text_model(te).final_layer_norm(hs[-from_end])
        else:
            z = hs[-from_end]
    pooled = None
    if spec.pooled:
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            raise TypeError("the SDXL bigG text encoder must be a CLIPTextModelWithProjection (no text_embeds)")
        pooled = pooled.float()
    return z.float(), pooled


def _repad(tokens: list[int], eos: int, pad: int) -> list[int]:
    """A1111 for OpenCLIP encoders: everything after the first EOS becomes the pad id."""
    if pad == eos or eos not in tokens:
        return list(tokens)
    i = tokens.index(eos)
    return tokens[: i + 1] + [pad] * (len(tokens) - i - 1)


# --------------------------------------------------------------------------------------------------------------------
# A1111 style
# --------------------------------------------------------------------------------------------------------------------


def _encode_a1111(enc: TextEncoders, texts: list[str], *, clip_skip: int, embeddings: EmbeddingLibrary | None,
                  emphasis: str, comma_backtrack: int) -> Conditioning:
    widths = enc.widths()
    fits = (lambda e: e.for_model(widths) is not None)
    tokenizer = enc.tokenizers[0]  # every SD text encoder shares CLIP's BPE; pads differ and are applied below
    cache: dict[str, tuple[list[PromptChunk], int]] = {}
    per_text = []
    for t in texts:
        if t not in cache:
            cache[t] = a1111_chunks(t, tokenizer, embeddings=embeddings, fits=fits, emphasis=emphasis,
                                    comma_backtrack=comma_backtrack)
        per_text.append(cache[t])
    token_count = max(n for _, n in per_text)
    n_chunks = max(len(c) for c, _ in per_text)
    empty = empty_chunk_a1111(tokenizer)
    if enc.family in (Family.SD2, Family.SDXL, Family.SDXL_REFINER):
        clip_skip = 1  # A1111 ignores clip skip for OpenCLIP-based models

    used: dict[str, str] = {}
    zs: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for i in range(n_chunks):
        batch = [chunks[i] if i < len(chunks) else empty for chunks, _ in per_text]
        weights = torch.tensor([c.weights for c in batch], dtype=torch.float32)  # (B, 77)
        for c in batch:
            for f in c.fixes:
                used[f.embedding.name] = f.embedding.shorthash
        parts = []
        for e, (te, spec, tok) in enumerate(zip(enc.encoders, enc.specs, enc.tokenizers)):
            eos = int(tok.eos_token_id)
            pad = eos if tok.pad_token_id is None else int(tok.pad_token_id)
            rows = [_repad(c.tokens, eos, pad) for c in batch]
            fixes = [[(f.pos, f.embedding.for_model(widths)[e][f.start : f.start + f.count]) for f in c.fixes]
                     for c in batch]
            z, p = run_encoder(te, spec, rows, fixes, _layer_from_end(te, spec, enc.family, clip_skip))
            parts.append(_emphasize(z, weights.to(z.device), emphasis))
            if p is not None and i == 0:
                pooled = p
        zs.append(torch.cat(parts, dim=-1))
    return Conditioning(torch.cat(zs, dim=1), pooled, used, token_count)


def _emphasize(z: torch.Tensor, weights: torch.Tensor, emphasis: str) -> torch.Tensor:
    """A1111 emphasis on a chunk batch (B, 77, D): multiply by weights; "original" then restores the batch mean."""
    if emphasis in ("ignore", "none"):
        return z
    original_mean = z.mean()
    z = z * weights.unsqueeze(-1)
    if emphasis == "original":
        new_mean = z.mean()
        if new_mean != 0:  # (A1111 would produce NaN here; never happens with real weights)
            z = z * (original_mean / new_mean)
    return z


# --------------------------------------------------------------------------------------------------------------------
# ComfyUI style
# --------------------------------------------------------------------------------------------------------------------


def _encode_comfy_one(enc: TextEncoders, text: str, *, clip_skip: int,
                      embeddings: EmbeddingLibrary | None) -> Conditioning:
    parts: list[torch.Tensor] = []
    pooled = None
    used: dict[str, str] = {}
    token_count = 0
    for te, spec, tok, (key, dim) in zip(enc.encoders, enc.specs, enc.tokenizers, enc.widths()):
        chunks, placed = comfy_chunks(text, tok, embeddings=embeddings, key=key, dim=dim)
        for emb in placed:
            used[emb.name] = emb.shorthash
        bos, eos = int(tok.bos_token_id), int(tok.eos_token_id)
        pad = eos if tok.pad_token_id is None else int(tok.pad_token_id)
        pad_ids = {bos, eos, pad}
        token_count = max(token_count, sum(1 for c in chunks for t in c.tokens if t not in pad_ids) +
                          sum(f.count for c in chunks for f in c.fixes))
        rows = [c.tokens for c in chunks]
        fixes = [[(f.pos, _comfy_vectors(f.embedding, key, dim)[f.start : f.start + f.count]) for f in c.fixes]
                 for c in chunks]
        weights = torch.tensor([c.weights for c in chunks], dtype=torch.float32)  # (n, 77)
        has_weights = bool((weights != 1.0).any())
        if has_weights:
            rows.append([bos, eos] + [pad] * (len(rows[0]) - 2))  # z_empty, in the same batch as ComfyUI
            fixes.append([])
        z, p = run_encoder(te, spec, rows, fixes, _layer_from_end(te, spec, enc.family, clip_skip))
        if has_weights:
            z_empty, z = z[-1:], z[:-1]
            w = weights.to(z.device).unsqueeze(-1)
            z = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
        parts.append(z.reshape(1, -1, z.shape[-1]))
        if p is not None:
            pooled = p[0:1]
    cut = min(x.shape[1] for x in parts)
    return Conditioning(torch.cat([x[:, :cut] for x in parts], dim=-1), pooled, used, token_count)


def _comfy_vectors(emb: Embedding, key: str, dim: int) -> torch.Tensor:
    v = emb.for_encoder(key, dim)
    assert v is not None  # comfy_chunks only places embeddings that fit
    return v


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def encode_prompt(
    ckpt_or_clip: Any,
    text: str | Sequence[str],
    *,
    style: Style = "a1111",
    clip_skip: int = 1,
    embeddings: EmbeddingLibrary | None = None,
    emphasis: Emphasis = "original",
    comma_backtrack: int = 20,
    negative: bool = False,
) -> Conditioning:
    """Encode one prompt or a batch of prompts for a checkpoint (extra-network tags must already be removed).

    style "a1111": emphasis `( ) [ ] (x:w)`, BREAK, 75-token chunks with comma backtrack, trigger-word embeddings;
    a batch is encoded like A1111 encodes one call (prompts padded with empty chunks, mean restored over the batch).
    style "comfy": ComfyUI's `(x:w)` weights (brackets literal), `embedding:name`; each prompt encoded on its own.
    `negative=True` with an all-empty SDXL prompt in style "a1111" gives zeros, as A1111 does for SDXL negatives.
    """
    enc = TextEncoders.of(ckpt_or_clip)
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError("no prompt to encode")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("prompts must be strings")
    if style not in ("a1111", "comfy"):
        raise ValueError(f"unknown prompt style {style!r}; choose 'a1111' or 'comfy'")
    emphasis = str(emphasis).strip().lower().replace(" ", "_")  # also A1111's labels: "Original", "No norm", …
    if emphasis not in _EMPHASIS:
        raise ValueError(f"unknown emphasis mode {emphasis!r}; choose one of {', '.join(_EMPHASIS)}")
    if not isinstance(clip_skip, int) or clip_skip < 0:
        raise ValueError(f"clip skip must be a non-negative integer (got {clip_skip!r})")

    if style == "a1111":
        cond = _encode_a1111(enc, texts, clip_skip=clip_skip, embeddings=embeddings, emphasis=emphasis,
                             comma_backtrack=comma_backtrack)
        if negative and enc.family in (Family.SDXL, Family.SDXL_REFINER) and all(t == "" for t in texts):
            cond.cross_attn = torch.zeros_like(cond.cross_attn)
            cond.pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
        return cond

    conds = [_encode_comfy_one(enc, t, clip_skip=clip_skip, embeddings=embeddings) for t in texts]
    if len(conds) == 1:
        return conds[0]
    longest = max(c.cross_attn.shape[1] for c in conds)
    empty = None
    if any(c.cross_attn.shape[1] != longest for c in conds):
        empty = _encode_comfy_one(enc, "", clip_skip=clip_skip, embeddings=None).cross_attn
    cross = torch.cat([_pad_with(c.cross_attn, longest, empty) for c in conds])
    pooled = torch.cat([c.pooled for c in conds]) if conds[0].pooled is not None else None
    used = {k: v for c in conds for k, v in c.embeddings_used.items()}
    return Conditioning(cross, pooled, used, max(c.token_count for c in conds))


def encode_schedule(ckpt_or_clip: Any, prompt: str, steps: int, *, hires_steps: int | None = None,
                    use_old_scheduling: bool = False, **kwargs: Any) -> list[tuple[int, Conditioning]]:
    """[(end_step, Conditioning (1, 77·k, D))] for an A1111 prompt with `[from:to:when]` / `[a|b]` editing.

    All the schedule's prompts are encoded in one batch, as A1111 does (so they share chunk count and mean restore).
    Style "comfy" has no editing syntax: one entry covering every step."""
    if kwargs.get("style", "a1111") != "a1111":
        return [(steps, encode_prompt(ckpt_or_clip, prompt, **kwargs))]
    schedule = prompt_schedule(prompt, steps, hires_steps=hires_steps, use_old_scheduling=use_old_scheduling)
    c = encode_prompt(ckpt_or_clip, [t for _, t in schedule], **kwargs)
    return [
        (end, Conditioning(c.cross_attn[i : i + 1], None if c.pooled is None else c.pooled[i : i + 1],
                           dict(c.embeddings_used), c.token_count))
        for i, (end, _) in enumerate(schedule)
    ]


def _pad_with(x: torch.Tensor, length: int, empty: torch.Tensor | None) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    if empty is None or (length - x.shape[1]) % empty.shape[1]:
        raise ValueError(f"cannot pad a conditioning of {x.shape[1]} tokens to {length}")
    reps = (length - x.shape[1]) // empty.shape[1]
    return torch.cat([x, empty.to(x).expand(x.shape[0], -1, -1).repeat(1, reps, 1)], dim=1)


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor,
                       empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111 `pad_cond_uncond`: append the empty prompt's encoding (1, 77, D) to the shorter (B, 77·k, D) tensor."""
    length = max(cond.shape[1], uncond.shape[1])
    return _pad_with(cond, length, empty), _pad_with(uncond, length, empty)


def repeat_to_common_length(*conds: torch.Tensor) -> list[torch.Tensor]:
    """ComfyUI's batching rule: repeat each (B, T, D) along tokens to the least common multiple of the lengths
    (attention over a repeated sequence gives the same result, so this changes nothing numerically)."""
    import math

    lcm = 1
    for c in conds:
        lcm = lcm * c.shape[1] // math.gcd(lcm, c.shape[1])
    return [c.repeat(1, lcm // c.shape[1], 1) for c in conds]
