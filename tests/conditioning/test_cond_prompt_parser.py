"""A1111 emphasis / BREAK / extra networks / AND, and ComfyUI weights — checked against the documented parses."""

import pytest

from darkroom.conditioning.prompt_parser import (
    BREAK,
    PromptSyntaxError,
    extract_extra_networks,
    parse_comfy_weights,
    parse_prompt_attention,
    split_and,
)


def _lists(parsed):
    return [[t, w] for t, w in parsed]


# --- A1111 parse_prompt_attention: the doctests of modules/prompt_parser.py ------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
             [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]],
        ),
    ],
)
def test_a1111_doctests(text, expected):
    assert _lists(parse_prompt_attention(text)) == expected


def test_nesting_and_square_brackets():
    assert _lists(parse_prompt_attention("((a))")) == [["a", 1.1 * 1.1]]
    assert _lists(parse_prompt_attention("[a]")) == [["a", 1 / 1.1]]
    assert _lists(parse_prompt_attention("[[a]]")) == [["a", (1 / 1.1) * (1 / 1.1)]]
    assert _lists(parse_prompt_attention("([a])")) == [["a", (1 / 1.1) * 1.1]]
    # explicit weight multiplies the enclosing ones
    assert _lists(parse_prompt_attention("((a:2))")) == [["a", 2 * 1.1]]
    # whitespace around the number (A1111 1.10 regex) and a signed weight
    assert _lists(parse_prompt_attention("(a: 1.5 )")) == [["a", 1.5]]
    assert _lists(parse_prompt_attention("(a:-1)")) == [["a", -1.0]]
    # unclosed square bracket applies at the end; stray closers are text
    assert _lists(parse_prompt_attention("[a")) == [["a", 1 / 1.1]]
    assert _lists(parse_prompt_attention("a) b]")) == [["a) b]", 1.0]]
    # ':w)' without an open bracket is literal
    assert _lists(parse_prompt_attention("a:1.2)")) == [["a:1.2)", 1.0]]


def test_escapes():
    assert _lists(parse_prompt_attention("\\\\")) == [["\\", 1.0]]
    assert _lists(parse_prompt_attention("\\[x\\]")) == [["[x]", 1.0]]
    # a backslash before any other character is dropped (A1111's regex yields an empty literal)
    assert _lists(parse_prompt_attention("a\\b")) == [["ab", 1.0]]
    assert _lists(parse_prompt_attention("(\\(x\\))")) == [["(x)", 1.1]]


def test_empty_and_bad_weight():
    assert _lists(parse_prompt_attention("")) == [["", 1.0]]
    with pytest.raises(PromptSyntaxError, match="1.2.3"):
        parse_prompt_attention("(a:1.2.3)")


def test_break():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), BREAK, ("a dog", 1.0)]
    assert BREAK == ("BREAK", -1.0)
    # lowercase / glued words are not BREAK
    assert parse_prompt_attention("breakfast BREAKING break") == [("breakfast BREAKING break", 1.0)]
    # A1111 quirk: a BREAK inside brackets gets its -1 multiplied, so it is no longer the marker
    parsed = parse_prompt_attention("(a BREAK b)")
    assert parsed[1][0] == "BREAK" and parsed[1][1] == pytest.approx(-1.1)
    assert parse_prompt_attention("x BREAK") == [("x", 1.0), BREAK, ("", 1.0)]


# --- extra networks ------------------------------------------------------------------------------------------------


def test_lora_tags():
    clean, nets = extract_extra_networks("a cat <lora:detail:0.6> in <lora:style:0.8:0.3:16>, <lora:plain>")
    assert clean == "a cat  in , "
    assert [(n.kind, n.name, n.te_weight, n.unet_weight, n.dyn_dim) for n in nets] == [
        ("lora", "detail", 0.6, 0.6, None),
        ("lora", "style", 0.8, 0.3, 16),
        ("lora", "plain", 1.0, 1.0, None),
    ]


def test_named_args_lyco_hypernet_unknown():
    clean, nets = extract_extra_networks("<lyco:foo:unet=0.2:te=0.7:dyn=8>x<hypernet:anime:0.5><somenet:a:b>")
    assert clean == "x"
    lyco, hyper, other = nets
    assert (lyco.kind, lyco.tag, lyco.te_weight, lyco.unet_weight, lyco.dyn_dim) == ("lora", "lyco", 0.7, 0.2, 8)
    assert (hyper.kind, hyper.name, hyper.multiplier) == ("hypernet", "anime", 0.5)
    assert (other.kind, other.name, other.args) == ("somenet", "a", ["b"])
    # te= overrides the positional; unet defaults to the te value
    (n,) = extract_extra_networks("<lora:x:0.3:te=0.9>")[1]
    assert (n.te_weight, n.unet_weight) == (0.9, 0.9)
    # not a tag: no word before the colon, or no closing '>'
    assert extract_extra_networks("<:x> <lora x> <lora:x")[1] == []


def test_bad_lora_multiplier():
    (n,) = extract_extra_networks("<lora:x:abc>")[1]
    with pytest.raises(PromptSyntaxError, match="te multiplier"):
        n.te_weight


def test_extract_loras_gives_lora_refs():
    try:
        from darkroom.engine.params import LoraRef
    except ImportError as e:  # pragma: no cover - the engine package is assembled by another area
        pytest.skip(f"engine not importable yet: {e}")
    from darkroom.conditioning.prompt_parser import extract_loras

    clean, refs = extract_loras("a <lora:a:0.5> b <hypernet:h:1> <lyco:c:1:0.25>")
    assert clean == "a  b  "
    assert refs == [LoraRef("a", 0.5, 0.5), LoraRef("c", 1.0, 0.25)]


# --- AND ------------------------------------------------------------------------------------------------------------


def test_split_and():
    assert split_and("a cat :1.2 AND a dog") == [("a cat", 1.2), (" a dog", 1.0)]
    assert split_and("a cat and a dog") == [("a cat and a dog", 1.0)]
    assert split_and("x AND y:-0.5 AND z") == [("x", 1.0), (" y", -0.5), (" z", 1.0)]
    assert split_and("ANDROID") == [("ANDROID", 1.0)]


# --- ComfyUI weights -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat:1.3) dog", [("a ", 1.0), ("cat", 1.3), (" dog", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", 1.1 * 1.1)]),
        ("((cat:1.5))", [("cat", 1.5)]),  # an explicit weight replaces the outer one
        ("(a (b:2) c)", [("a ", 1.1), ("b", 2.0), (" c", 1.1)]),
        ("[cat]", [("[cat]", 1.0)]),  # square brackets are literal in ComfyUI
        ("\\(cat\\)", [("(cat)", 1.0)]),
        ("(unclosed", [("(unclosed", 1.0)]),
        ("(a:b:0.5)", [("a:b", 0.5)]),  # last colon carries the weight
        ("(a:xyz)", [("a:xyz", 1.1)]),  # not a number: text, weight 1.1
        ("(:2)", [(":2", 1.1)]),  # colon at position 0 is not a weight
        ("(cat: 1.2 )", [("cat", 1.2)]),  # Python float() accepts surrounding spaces
    ],
)
def test_comfy_weights(text, expected):
    got = parse_comfy_weights(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])
