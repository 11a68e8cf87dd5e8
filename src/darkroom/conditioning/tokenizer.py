"""The CLIP BPE tokenizer, built from the vocabulary inside the PyPI package `openai-clip` (never the Hub)."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

BOS_ID = 49406
EOS_ID = 49407
#: Number of merges CLIP uses from the 262,144 in the file (49152 - 256 - 2).
_N_MERGES = 49152 - 256 - 2


def vocab_file() -> Path:
    """Locate `clip/bpe_simple_vocab_16e6.txt.gz` without importing `clip` (its __init__ imports torchvision)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the CLIP vocabulary is missing: install the PyPI package 'openai-clip'")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"the CLIP vocabulary file is missing: {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-entry vocabulary and its 48,894 merges, exactly as OpenAI's SimpleTokenizer builds them."""
    lines = gzip.open(vocab_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers `CLIPTokenizer` (max length 77) built in memory from the packaged vocabulary.

    SD1.x and SDXL's CLIP-L pad with `<|endoftext|>` (49407); OpenCLIP encoders (SD2, SDXL's bigG) pad with `!` (id 0).
    """
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=77)
