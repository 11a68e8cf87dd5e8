"""Prompt syntax: A1111 emphasis and BREAK, extra-network tags (`<lora:…>`), composable `AND`, ComfyUI weights.

Behaviour follows A1111 1.10 `modules/prompt_parser.py` / `extra_networks.py` / `lora_script.py` and ComfyUI
`comfy/sd1_clip.py` (`token_weights`, `escape_important`), re-implemented here. Prompt editing schedules live in
`prompt_schedule.py` and are re-exported from this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .prompt_schedule import prompt_schedule  # noqa: F401  (re-export)

if TYPE_CHECKING:
    from ..engine.params import LoraRef

__all__ = [
    "BREAK",
    "ExtraNetwork",
    "PromptSyntaxError",
    "extract_extra_networks",
    "extract_loras",
    "lora_refs",
    "parse_comfy_weights",
    "parse_prompt_attention",
    "prompt_schedule",
    "split_and",
]


class PromptSyntaxError(ValueError):
    """A prompt (or one of its tags) that cannot be interpreted; the message names the offending part."""


#: The marker `parse_prompt_attention` emits for the `BREAK` keyword (A1111 uses weight -1 as the flag).
BREAK: tuple[str, float] = ("BREAK", -1.0)

# --------------------------------------------------------------------------------------------------------------------
# A1111 emphasis: (x) ×1.1, [x] ÷1.1, (x:1.3), escapes, BREAK.
# --------------------------------------------------------------------------------------------------------------------

# One token per match, tried in this order (A1111's alternation order matters: escapes first, then brackets, then an
# explicit `:weight)` close, then plain text, then a lone colon).
_RE_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\ |
    \( | \[ |
    :\s*([+-]?[.\d]+)\s*\) |
    \) | \] |
    [^\\()\[\]:]+ |
    :
    """,
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND = 1.1
_SQUARE = 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs exactly as A1111's `parse_prompt_attention`.

    `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w; nesting multiplies; unclosed brackets are closed at the end;
    `\\(` `\\)` `\\[` `\\]` `\\\\` are literals (a backslash before anything else is dropped); `BREAK` becomes
    `("BREAK", -1)`; adjacent runs with equal weights are merged. An empty prompt gives `[("", 1.0)]`.
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                w = float(weight)
            except ValueError:
                raise PromptSyntaxError(f"bad emphasis weight {weight!r} in prompt near {tok!r}") from None
            multiply_range(round_open.pop(), w)
        elif tok == ")" and round_open:
            multiply_range(round_open.pop(), _ROUND)
        elif tok == "]" and square_open:
            multiply_range(square_open.pop(), _SQUARE)
        else:
            for i, part in enumerate(_RE_BREAK.split(tok)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])

    for pos in round_open:
        multiply_range(pos, _ROUND)
    for pos in square_open:
        multiply_range(pos, _SQUARE)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, float(w)) for t, w in res]


# --------------------------------------------------------------------------------------------------------------------
# Extra networks: <kind:name:arg:…>
# --------------------------------------------------------------------------------------------------------------------

_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")
#: Tag kinds that mean the same network type (A1111 registers `lyco` as an alias of `lora`).
_KIND_ALIASES = {"lyco": "lora"}


@dataclass
class ExtraNetwork:
    """One `<kind:name:arg…>` tag: positional args after the name, and `key=value` named args."""

    kind: str  # canonical kind: "lora" (also for <lyco:…>), "hypernet", or any other tag word as written
    name: str
    args: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # the tag word as written (e.g. "lyco")

    @property
    def label(self) -> str:
        """The tag as written, for messages: `<lora:name:…>`."""
        return f"<{self.tag or self.kind}:{self.name}:…>"

    def _float(self, value: str, what: str) -> float:
        try:
            return float(value)
        except ValueError:
            raise PromptSyntaxError(f"{self.label}: {what} must be a number, got {value!r}") from None

    @property
    def te_weight(self) -> float:
        """LoRA text-encoder multiplier: 1st arg or `te=`, default 1.0."""
        w = self._float(self.args[0], "te multiplier") if self.args else 1.0
        return self._float(self.named["te"], "te multiplier") if "te" in self.named else w

    @property
    def unet_weight(self) -> float:
        """LoRA UNet multiplier: 2nd arg or `unet=`, default the te multiplier."""
        w = self._float(self.args[1], "unet multiplier") if len(self.args) > 1 else self.te_weight
        return self._float(self.named["unet"], "unet multiplier") if "unet" in self.named else w

    @property
    def dyn_dim(self) -> int | None:
        """LoRA dynamic rank: 3rd arg or `dyn=`, default None."""
        raw = self.named.get("dyn", self.args[2] if len(self.args) > 2 else None)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise PromptSyntaxError(f"{self.label}: dyn must be an integer, got {raw!r}") from None

    @property
    def multiplier(self) -> float:
        """Hypernetwork (and generic) multiplier: 1st arg, default 1.0."""
        return self._float(self.args[0], "multiplier") if self.args else 1.0


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove every `<word:…>` tag from the prompt (as A1111 does, known kind or not) and return them in order."""
    found: list[ExtraNetwork] = []

    def take(m: re.Match) -> str:
        tag = m.group(1)
        items = m.group(2).split(":")
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        if not positional:
            raise PromptSyntaxError(f"extra-network tag {m.group(0)!r} has no name")
        kind = _KIND_ALIASES.get(tag, tag)
        found.append(ExtraNetwork(kind=kind, name=positional[0], args=positional[1:], named=named, tag=tag))
        return ""

    return _RE_EXTRA_NET.sub(take, prompt), found


def lora_refs(networks: list[ExtraNetwork]) -> list[LoraRef]:
    """The `lora`/`lyco` tags as engine `LoraRef`s (name, te multiplier, unet multiplier), in prompt order."""
    from ..engine.params import LoraRef  # lazy: the engine package imports conditioning, not the reverse

    return [LoraRef(n.name, n.te_weight, n.unet_weight) for n in networks if n.kind == "lora"]


def extract_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """Prompt without any extra-network tags, and its LoRA references."""
    clean, nets = extract_extra_networks(prompt)
    return clean, lora_refs(nets)


# --------------------------------------------------------------------------------------------------------------------
# Composable diffusion: "a cat :1.2 AND a dog"
# --------------------------------------------------------------------------------------------------------------------

_RE_AND = re.compile(r"\bAND\b")
_RE_SUB_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split on uppercase `AND` into (subprompt, weight); a trailing `:w` is the weight (A1111 composable diffusion)."""
    out: list[tuple[str, float]] = []
    for sub in _RE_AND.split(prompt):
        m = _RE_SUB_WEIGHT.search(sub)
        text, weight = m.groups() if m is not None else (sub, None)
        out.append((text, float(weight) if weight is not None else 1.0))
    return out


# --------------------------------------------------------------------------------------------------------------------
# ComfyUI weights: (x) ×1.1, (x:1.3) sets the weight, brackets [x] are literal, only \( \) are escapes.
# --------------------------------------------------------------------------------------------------------------------

_ESC_CLOSE, _ESC_OPEN = "\0\1", "\0\2"


def _comfy_escape(text: str) -> str:
    return text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)


def _comfy_unescape(text: str) -> str:
    return text.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "(")


def _split_parentheses(s: str) -> list[str]:
    """Top-level pieces: plain runs and whole `( … )` groups (an unclosed group stays one literal piece)."""
    out: list[str] = []
    cur = ""
    depth = 0
    for ch in s:
        if ch == "(":
            if depth == 0:
                if cur:
                    out.append(cur)
                cur = "("
            else:
                cur += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append(cur + ")")
                cur = ""
            else:
                cur += ch
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def _comfy_token_weights(s: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_parentheses(s):
        w = weight
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            colon = inner.rfind(":")
            w *= 1.1
            if colon > 0:
                try:
                    w = float(inner[colon + 1 :])  # an explicit weight replaces (not multiplies) the outer one
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _comfy_token_weights(inner, w)
        else:
            out.append((piece, weight))
    return out


def parse_comfy_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (segment, weight) as ComfyUI's `token_weights` (escapes `\\(` `\\)` restored in the output).

    Segments are not merged; each is tokenized on its own by the ComfyUI-style encoder.
    """
    return [(_comfy_unescape(seg), w) for seg, w in _comfy_token_weights(_comfy_escape(text), 1.0)]
