"""A1111 prompt editing and alternation: the doctests of A1111 1.10 `get_learned_conditioning_prompt_schedules`."""

import pytest

from darkroom.conditioning.prompt_schedule import prompt_schedule


def g(p, steps=10, **kw):
    return [[t, s] for t, s in prompt_schedule(p, steps, **kw)]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a|(b:1.1)]", [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]),
        ("[fe|]male", [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
        ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
    ],
)
def test_a1111_doctests(prompt, expected):
    assert g(prompt) == expected


def test_hires_timeline():
    # with a hires pass, fractions 1.0–2.0 and integers above the base steps address the hires steps
    assert g("a [b:.5] c", hires_steps=10) == [[10, "a b c"]]
    assert g("a [b:1.5] c", hires_steps=10) == [[5, "a  c"], [10, "a b c"]]
    assert g("a [b:13] c", hires_steps=10) == [[3, "a  c"], [10, "a b c"]]


def test_new_vs_old_timeline():
    # new rule: a decimal point means a fraction, an integer is a step
    assert g("[x:1.0]") == [[10, ""]]
    assert g("[x:1]") == [[1, ""], [10, "x"]]
    assert g("[x:0.25]", steps=20) == [[5, ""], [20, "x"]]
    # old rule: < 1 is a fraction, otherwise a step
    assert g("[x:1.0]", use_old_scheduling=True) == [[1, ""], [10, "x"]]
    assert g("[x:0.3]", use_old_scheduling=True) == [[3, ""], [10, "x"]]
    # 'when' past the end is clamped; zero or negative never switches
    assert g("[x:y:50]") == [[10, "x"]]
    assert g("[x:y:0]") == [[10, "y"]]


def test_remove_and_nested_alternation():
    assert g("a [big::4] dog") == [[4, "a big dog"], [10, "a  dog"]]
    assert g("[[a|b]:c:2]", steps=4) == [[1, "a"], [2, "b"], [3, "c"], [4, "c"]]
    assert g("[cat|dog]", steps=3) == [[1, "cat"], [2, "dog"], [3, "cat"]]


def test_literal_on_parse_failure_and_escapes():
    # a '|' outside brackets (or a trailing backslash) cannot be parsed: the prompt is used literally
    assert g("a | b [c:3]") == [[10, "a | b [c:3]"]]
    assert g("a [c:3] \\") == [[10, "a [c:3] \\"]]
    # escaped brackets stay escaped (parse_prompt_attention resolves them later) and are not syntax
    assert g("\\[a:3\\]") == [[10, "\\[a:3\\]"]]
    assert g("(a:1.2) [b:c:5]") == [[5, "(a:1.2) b"], [10, "(a:1.2) c"]]


def test_readme_example():
    p = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
         "[ in background:0.25] [shoddy:masterful:0.5]")
    assert g(p, steps=100) == [
        [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [75, "fantasy landscape with a lake and an oak in background masterful"],
        [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


def test_bad_steps_and_deep_nesting():
    with pytest.raises(ValueError, match="steps"):
        prompt_schedule("a", 0)
    deep = "[" * 500 + "a" + "]" * 500
    assert g(deep) == [[10, deep]]
