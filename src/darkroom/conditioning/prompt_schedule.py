"""A1111 prompt editing and alternation: `[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b|c]` → per-step prompts.

Re-implements the behaviour of A1111 1.10 `get_learned_conditioning_prompt_schedules` (its lark grammar) with a small
recursive-descent parser. The grammar, in words:

    start     := (prompt | stray)*            stray: one of  [ ] ( ) :   (only at the top level)
    prompt    := (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized:= "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled := "[" [prompt ":"] prompt ":" ws? NUMBER ws? "]"
    alternate := "[" prompt ("|" prompt?)+ "]"
    plain     := ( any char but \\ [ ] ( ) : |   |  "\\" followed by any char but a newline )+

A prompt that does not parse (a `|` outside `[…]`, a trailing backslash) is used literally for every step. A bracketed
construct that parses is always preferred over reading its brackets as stray characters, as A1111 does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["prompt_schedule"]

_NUMBER_CLOSE = re.compile(r"\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\]")
_PLAIN_STOP = frozenset("\\[]():|")
_STRAY = frozenset("[]():")
_MAX_DEPTH = 200


class _ParseFail(Exception):
    pass


@dataclass
class _Group:
    """Emphasis brackets: reproduced literally, children may hold schedules."""

    parts: list


@dataclass
class _Scheduled:
    before: list | None
    after: list
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list[list]


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.memo: dict[int, tuple[list, int]] = {}
        self.depth = 0

    def prompt(self, i: int) -> tuple[list, int]:
        """The longest `prompt` starting at i (never fails; may be empty)."""
        if i in self.memo:
            return self.memo[i]
        s, n = self.s, self.n
        start = i
        items: list = []
        while i < n:
            c = s[i]
            if c == "\\":
                if i + 1 < n and s[i + 1] != "\n":
                    items.append(s[i : i + 2])
                    i += 2
                    continue
                break
            if c == "(" or c == "[":
                r = self.item(i)
                if r is None:
                    break
                node, i = r
                items.append(node)
                continue
            if c in _PLAIN_STOP:
                break
            j = i
            while j < n and s[j] not in _PLAIN_STOP:
                j += 1
            items.append(s[i:j])
            i = j
        self.memo[start] = (items, i)
        return items, i

    def item(self, i: int):
        """A bracketed construct starting at s[i] in '([', or None if none parses there."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _ParseFail("nesting too deep")
        try:
            return self._round(i) if self.s[i] == "(" else self._square(i)
        finally:
            self.depth -= 1

    def _round(self, i: int):
        s, n = self.s, self.n
        p1, j = self.prompt(i + 1)
        if j < n and s[j] == ")":
            return _Group(["(", *p1, ")"]), j + 1
        if j < n and s[j] == ":":
            p2, k = self.prompt(j + 1)
            if k < n and s[k] == ")":
                return _Group(["(", *p1, ":", *p2, ")"]), k + 1
        return None

    def _square(self, i: int):
        s, n = self.s, self.n
        p1, j = self.prompt(i + 1)
        if j >= n:
            return None
        c = s[j]
        if c == "]":
            return _Group(["[", *p1, "]"]), j + 1
        if c == "|":
            options = [p1]
            while j < n and s[j] == "|":
                p, j = self.prompt(j + 1)
                options.append(p)
            if j < n and s[j] == "]":
                return _Alternate(options), j + 1
            return None
        if c == ":":
            m = _NUMBER_CLOSE.match(s, j + 1)
            if m:
                return _Scheduled(None, p1, m.group(1)), m.end()
            p2, k = self.prompt(j + 1)
            if k < n and s[k] == ":":
                m = _NUMBER_CLOSE.match(s, k + 1)
                if m:
                    return _Scheduled(p1, p2, m.group(1)), m.end()
        return None

    def parse(self) -> list:
        items: list = []
        i = 0
        while i < self.n:
            p, j = self.prompt(i)
            items += p
            if j == i:
                if self.s[i] not in _STRAY:
                    raise _ParseFail(f"unexpected {self.s[i]!r} at {i}")
                items.append(self.s[i])
                j = i + 1
            i = j
        return items


def _walk(items: list):
    for it in items:
        yield it
        if isinstance(it, _Group):
            yield from _walk(it.parts)
        elif isinstance(it, _Scheduled):
            yield from _walk(it.before or [])
            yield from _walk(it.after)
        elif isinstance(it, _Alternate):
            for o in it.options:
                yield from _walk(o)


def _render(items: list, step: int, out: list[str]) -> None:
    for it in items:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, _Group):
            _render(it.parts, step, out)
        elif isinstance(it, _Scheduled):
            _render((it.before or []) if step <= it.when else it.after, step, out)
        else:
            _render(it.options[(step - 1) % len(it.options)], step, out)


def prompt_schedule(
    prompt: str, steps: int, *, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """[(end_step, text)] for a prompt with A1111 editing syntax; text applies while step <= end_step (1-based).

    `when` with a decimal point is a fraction of the steps, an integer is a step number ("new timelines", A1111 1.6+).
    With `hires_steps`, the schedule is for the hires pass: fractions 1.0–2.0 and integers above `steps` land in it.
    `use_old_scheduling`: the pre-1.6 rule (when < 1 is a fraction, otherwise a step).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, total = 0, 0.0, steps
    else:
        int_offset, flt_offset, total = steps, 1.0, hires_steps
    try:
        tree = _Parser(prompt).parse()
    except _ParseFail:
        return [(total, prompt)]

    boundaries = {total}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            v = float(node.number)
            if use_old_scheduling:
                v = v * total if v < 1 else v
            elif "." in node.number:
                v = (v - flt_offset) * total
            else:
                v = v - int_offset
            when = total if math.isinf(v) and v > 0 else (0 if math.isinf(v) else min(total, int(v)))
            node.when = when
            if when >= 1:
                boundaries.add(when)
        elif isinstance(node, _Alternate):
            boundaries.update(range(1, total + 1))

    result = []
    for t in sorted(boundaries):
        out: list[str] = []
        _render(tree, t, out)
        result.append((t, "".join(out)))
    return result
