"""Validation before execution: ComfyUI's error types and structure, conversions, partial runs."""

from __future__ import annotations

import copy

import pytest

from darkroom.graph import PromptValidationError, validate_prompt


def one_error(result, node_id):
    """The single error reported for `node_id` (asserting there is exactly one)."""
    errors = result.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def show(value, node_id="99"):
    return {node_id: {"class_type": "Show", "inputs": {"value": value}}}


def test_valid_prompt_converts_constants_like_comfyui(toy):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": "12"}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 7.9}},  # int(7.9) == 7, as in ComfyUI
        "3": {"class_type": "Scale", "inputs": {"x": "2.5"}},
        "4": {"class_type": "Concat", "inputs": {"a": 5, "b": "x", "_meta": "ignored"}},
        "5": {"class_type": "Flag", "inputs": {"on": "false"}},
        "6": {"class_type": "Flag", "inputs": {"on": 1}},
        **show(["2", 0], "10"), **show(["3", 0], "11"), **show(["4", 0], "12"),
        **show(["5", 0], "13"), **show(["6", 0], "14"),
    }
    original = copy.deepcopy(prompt)
    result = validate_prompt(toy.registry, prompt)
    assert result.ok and result.error is None and result.node_errors == {}
    assert result.outputs == ["10", "11", "12", "13", "14"]
    inputs = {nid: node["inputs"] for nid, node in result.prompt.items()}
    assert inputs["1"]["value"] == 12 and inputs["2"]["b"] == 7 and isinstance(inputs["2"]["b"], int)
    assert inputs["3"]["x"] == 2.5 and inputs["4"]["a"] == "5"
    assert inputs["5"]["on"] is False and inputs["6"]["on"] is True
    assert result.links["2"] == {"a": ("1", 0)}
    assert prompt == original  # the caller's prompt is untouched


def test_required_input_missing(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "Add", "inputs": {"a": 1}}, **show(["1", 0])})
    assert not result.ok
    assert one_error(result, "1") == {"type": "required_input_missing", "message": "Required input is missing",
                                      "details": "b", "extra_info": {"input_name": "b"}}
    assert result.node_errors["1"]["class_type"] == "Add"
    assert result.node_errors["1"]["dependent_outputs"] == ["99"]


def test_missing_optional_input_is_fine(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "Concat", "inputs": {"a": "x", "b": "y"}},
                                            **show(["1", 0])})
    assert result.ok


@pytest.mark.parametrize(
    ("link", "message"),
    [
        (["1", 0, 5], "must be a length-2 list"),
        (["1"], "must be a length-2 list"),
        (["1", "0"], "must be a length-2 list"),
        (["404", 0], "node 404 does not exist"),
        (["1", 3], "output 3 of node 1 (Const) does not exist"),
        (["1", -1], "output -1 of node 1 (Const) does not exist"),
    ],
)
def test_bad_linked_input(toy, link, message):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Add", "inputs": {"a": link, "b": 1}}, **show(["2", 0])}
    result = validate_prompt(toy.registry, prompt)
    err = one_error(result, "2")
    assert err["type"] == "bad_linked_input" and message in err["message"]
    assert err["details"] == "a"
    assert err["extra_info"]["input_name"] == "a" and err["extra_info"]["received_value"] == link
    assert err["extra_info"]["input_config"] == ["INT", {"default": 0}]
    assert result.error["type"] == "prompt_outputs_failed_validation"


def test_int_node_ids_in_links_are_accepted(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}}, **show([1, 0])}
    result = validate_prompt(toy.registry, prompt)
    assert result.ok and result.prompt["99"]["inputs"]["value"] == ["1", 0]


def test_return_type_mismatch(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Concat", "inputs": {"a": ["1", 0], "b": "x"}}, **show(["2", 0])}
    err = one_error(validate_prompt(toy.registry, prompt), "2")
    assert err == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "a, INT != STRING",
        "extra_info": {"input_name": "a", "input_config": ["STRING", {"default": "", "multiline": True,
                                                                      "dynamicPrompts": True}],
                       "received_type": "INT", "linked_node": ["1", 0]},
    }


def test_union_and_any_types_match(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Scale", "inputs": {"x": 2}},
              "3": {"class_type": "ToText", "inputs": {"value": ["1", 0]}},  # INT into INT,FLOAT
              "4": {"class_type": "ToText", "inputs": {"value": ["2", 0]}},  # FLOAT into INT,FLOAT
              "5": {"class_type": "Concat", "inputs": {"a": ["3", 0], "b": ["4", 0]}}, **show(["5", 0])}
    assert validate_prompt(toy.registry, prompt).ok
    bad = {"1": {"class_type": "Pick", "inputs": {"colour": "red"}},
           "2": {"class_type": "ToText", "inputs": {"value": ["1", 0]}}, **show(["2", 0])}
    assert one_error(validate_prompt(toy.registry, bad), "2")["details"] == "value, STRING != INT,FLOAT"


def test_value_not_in_list(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "Pick", "inputs": {"colour": "mauve"}},
                                            **show(["1", 0])})
    assert one_error(result, "1") == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": "colour: 'mauve' not in ['red', 'green', 'blue']",
        "extra_info": {"input_name": "colour", "input_config": [["red", "green", "blue"], {"default": "red"}],
                       "received_value": "mauve"},
    }


def test_value_not_in_long_list_is_summarised(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "ManyChoices", "inputs": {"name": "zz"}},
                                            **show(["1", 0])})
    err = one_error(result, "1")
    assert err["details"] == "name: 'zz' not in (list of length 25)"
    assert err["extra_info"]["input_config"] is None


def test_combo_values_follow_the_current_choices_and_windows_paths(toy):
    prompt = {"1": {"class_type": "Loader", "inputs": {"ckpt_name": "sub\\c.safetensors"}},
              "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 1}}, **show(["2", 0])}
    assert one_error(validate_prompt(toy.registry, prompt), "1")["type"] == "value_not_in_list"
    toy.checkpoints.append("sub/c.safetensors")
    result = validate_prompt(toy.registry, prompt)
    assert result.ok and result.prompt["1"]["inputs"]["ckpt_name"] == "sub/c.safetensors"


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [(-1001, "value_smaller_than_min", "Value -1001 smaller than min of -1000"),
     (1001, "value_bigger_than_max", "Value 1001 bigger than max of 1000")],
)
def test_int_range(toy, value, kind, message):
    err = one_error(validate_prompt(toy.registry, {"1": {"class_type": "Const", "inputs": {"value": value}},
                                                   **show(["1", 0])}), "1")
    assert err["type"] == kind and err["message"] == message and err["details"] == "value"
    assert err["extra_info"]["received_value"] == value
    assert err["extra_info"]["input_config"] == ["INT", {"default": 0, "min": -1000, "max": 1000, "step": 1,
                                                         "tooltip": "the number"}]


def test_float_range_after_conversion(toy):
    err = one_error(validate_prompt(toy.registry, {"1": {"class_type": "Scale", "inputs": {"x": "10.5"}},
                                                   **show(["1", 0])}), "1")
    assert err["type"] == "value_bigger_than_max" and err["message"] == "Value 10.5 bigger than max of 10.0"


@pytest.mark.parametrize(("node", "inputs", "name", "value"), [
    ("Const", {"value": "twelve"}, "value", "twelve"),
    ("Scale", {"x": [1.0]}, None, None),  # a 1-element list is a bad link, not a float
    ("Flag", {"on": "maybe"}, "on", "maybe"),
    ("Const", {"value": None}, "value", None),
])
def test_invalid_input_type(toy, node, inputs, name, value):
    err = one_error(validate_prompt(toy.registry, {"1": {"class_type": node, "inputs": inputs}, **show(["1", 0])}), "1")
    if name is None:
        assert err["type"] == "bad_linked_input"
        return
    assert err["type"] == "invalid_input_type"
    assert err["message"].startswith("Failed to convert an input value to a ")
    assert err["details"].startswith(f"{name}, {value}, ")
    assert err["extra_info"]["received_value"] == value and "exception_message" in err["extra_info"]


def test_constant_for_a_link_only_type_is_refused(toy):
    prompt = {"3": {"class_type": "Sampler", "inputs": {"model": "my-model", "seed": 1, "steps": 1}},
              **show(["3", 0])}
    err = one_error(validate_prompt(toy.registry, prompt), "3")
    assert err["type"] == "invalid_input_type" and "link from a MODEL output" in err["message"]


def test_value_wrapper_is_unwrapped(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "Const", "inputs": {"value": {"__value__": "3"}}},
                                            **show(["1", 0])})
    assert result.ok and result.prompt["1"]["inputs"]["value"] == 3


def test_exception_during_validation(toy):
    err = one_error(validate_prompt(toy.registry, {"1": {"class_type": "BrokenChoices", "inputs": {"name": "x"}},
                                                   **show(["1", 0])}), "1")
    assert err["type"] == "exception_during_validation"
    assert err["message"] == "Exception when validating node" and err["details"] == "model folder unreadable"
    assert err["extra_info"]["exception_type"] == "OSError"
    assert isinstance(err["extra_info"]["traceback"], list) and err["extra_info"]["traceback"]


def test_custom_validation_failed(toy):
    err = one_error(validate_prompt(toy.registry, {"1": {"class_type": "Even", "inputs": {"n": 3}},
                                                   **show(["1", 0])}), "1")
    assert err["type"] == "custom_validation_failed" and err["details"] == "3 is odd"
    assert validate_prompt(toy.registry, {"1": {"class_type": "Even", "inputs": {"n": 4}}, **show(["1", 0])}).ok


def test_prompt_no_outputs(toy):
    result = validate_prompt(toy.registry, {"1": {"class_type": "Const", "inputs": {"value": 1}}})
    assert not result.ok and result.outputs == [] and result.node_errors == {}
    assert result.error == {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                            "extra_info": {}}


def test_unknown_classes_are_all_named(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "FancyUpscaler", "inputs": {}, "_meta": {"title": "Upscale it"}},
              "3": {"class_type": "MagicNode", "inputs": {}}, **show(["1", 0])}
    result = validate_prompt(toy.registry, prompt)
    assert not result.ok and result.error["type"] == "invalid_prompt"
    assert result.error["message"] == "Cannot execute because nodes FancyUpscaler, MagicNode do not exist."
    assert result.error["details"] == "Node ID '#2', Node ID '#3'"
    assert result.error["extra_info"]["missing_nodes"] == [
        {"node_id": "2", "class_type": "FancyUpscaler", "node_title": "Upscale it"},
        {"node_id": "3", "class_type": "MagicNode", "node_title": "MagicNode"}]
    single = validate_prompt(toy.registry, {"2": {"class_type": "FancyUpscaler", "inputs": {}}})
    assert single.error["message"] == "Cannot execute because node FancyUpscaler does not exist."
    assert single.error["extra_info"]["class_type"] == "FancyUpscaler"


def test_malformed_prompts_are_invalid(toy):
    missing = validate_prompt(toy.registry, {"1": {"inputs": {}}})
    assert missing.error == {"type": "invalid_prompt",
                             "message": "Cannot execute because a node is missing the class_type property.",
                             "details": "Node ID '#1'", "extra_info": {}}
    assert validate_prompt(toy.registry, {"1": "Const"}).error["type"] == "invalid_prompt"
    assert validate_prompt(toy.registry, {"1": {"class_type": "Const", "inputs": [1]}}).error["type"] == "invalid_prompt"
    assert validate_prompt(toy.registry, ["Const"]).error["type"] == "invalid_prompt"  # type: ignore[arg-type]


def test_cycles_are_reported_on_the_cycle_nodes(toy):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},  # below the cycle, not on it
              **show(["3", 0])}
    result = validate_prompt(toy.registry, prompt)
    assert not result.ok and result.error["type"] == "prompt_outputs_failed_validation"
    assert set(result.node_errors) == {"1", "2"}
    for node_id in ("1", "2"):
        err = one_error(result, node_id)
        assert err["type"] == "dependency_cycle" and set(err["extra_info"]["cycle"]) == {"1", "2"}
        assert result.node_errors[node_id]["dependent_outputs"] == ["99"]
    self_loop = validate_prompt(toy.registry, {"1": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
                                               **show(["1", 0])})
    assert one_error(self_loop, "1")["type"] == "dependency_cycle"


def test_upstream_errors_only_on_the_failing_node_and_partial_success(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": "nope"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "5": {"class_type": "Const", "inputs": {"value": 5}},
              **show(["2", 0], "10"), **show(["1", 0], "11"), **show(["5", 0], "12")}
    result = validate_prompt(toy.registry, prompt)
    assert result.ok and result.error is None and result.outputs == ["12"]  # the good output still runs
    assert set(result.node_errors) == {"1"}  # "2" and the Shows only fail through "1"
    assert result.node_errors["1"]["dependent_outputs"] == ["10", "11"]
    assert result.node_errors["1"]["class_type"] == "Const"


def test_prompt_outputs_failed_validation_structure(toy):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": 1}}, **show(["1", 0]),
              "2": {"class_type": "Show", "inputs": {}}}
    result = validate_prompt(toy.registry, prompt)
    assert not result.ok and result.outputs == []
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.error["message"] == "Prompt outputs failed validation"
    assert "Required input is missing: value" in result.error["details"].splitlines()
    assert isinstance(result.error["extra_info"], dict)
    assert set(result.node_errors) == {"1", "2"}
    with pytest.raises(PromptValidationError) as info:
        result.raise_for_error()
    assert info.value.response_body() == {"error": result.error, "node_errors": result.node_errors}


def test_partial_execution_targets(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Const", "inputs": {"value": "bad"}},
              **show(["1", 0], "10"), **show(["2", 0], "11")}
    only_good = validate_prompt(toy.registry, prompt, partial_execution_targets=["10"])
    assert only_good.ok and only_good.outputs == ["10"] and only_good.node_errors == {}
    nothing = validate_prompt(toy.registry, prompt, partial_execution_targets=["1"])  # not an output node
    assert nothing.error["type"] == "prompt_no_outputs"


def test_unreachable_nodes_are_not_validated(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Const", "inputs": {"value": "bad"}}, **show(["1", 0])}
    result = validate_prompt(toy.registry, prompt)
    assert result.ok and result.node_errors == {}
