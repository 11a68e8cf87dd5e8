"""Node declarations, the registry, and the `/object_info` V1 shape."""

from __future__ import annotations

import json

import pytest

from darkroom.graph import Input, Node, NodeDefinitionError, NodeRegistry, Output, UnknownNodeError, object_info
from darkroom.graph.registry import node_info

V1_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "description",
           "python_module", "category", "output_node", "output_tooltips", "deprecated", "experimental"}


def test_object_info_is_json_and_has_every_node(toy):
    info = object_info(toy.registry)
    assert list(info) == toy.registry.names()
    json.dumps(info)  # plain JSON, nothing else
    for name, entry in info.items():
        assert set(entry) == V1_KEYS, name
        assert entry["name"] == name
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])
        assert len(entry["output_tooltips"]) == len(entry["output"])


def test_int_and_float_specs(toy):
    const = node_info(toy.Const)
    assert const["input"] == {"required": {"value": ["INT", {"default": 0, "min": -1000, "max": 1000, "step": 1,
                                                             "tooltip": "the number"}]}}
    assert const["input_order"] == {"required": ["value"]}
    assert const["output"] == ["INT"] and const["output_name"] == ["value"] and const["output_is_list"] == [False]
    assert const["category"] == "toy/math" and const["python_module"] == "nodes"
    assert const["output_node"] is False and const["deprecated"] is False and const["experimental"] is False
    scale = node_info(toy.Scale)["input"]["required"]["x"]
    assert scale == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1, "round": 0.01}]
    seed = node_info(toy.Sampler)["input"]["required"]["seed"]
    assert seed[1]["control_after_generate"] is True and seed[1]["max"] == 2**64 - 1


def test_string_optional_and_force_input_specs(toy):
    concat = node_info(toy.Concat)
    assert concat["input"]["required"]["a"] == ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}]
    assert concat["input"]["optional"] == {"sep": ["STRING", {"default": "-"}]}
    assert concat["input_order"] == {"required": ["a", "b"], "optional": ["sep"]}
    assert node_info(toy.ToText)["input"]["required"]["value"] == ["INT,FLOAT", {"forceInput": True}]
    assert node_info(toy.Sampler)["input"]["required"]["model"] == ["MODEL", {}]


def test_combo_specs_use_the_legacy_list_form_and_current_choices(toy):
    assert node_info(toy.Pick)["input"]["required"]["colour"] == [["red", "green", "blue"], {"default": "red"}]
    assert node_info(toy.Loader)["input"]["required"]["ckpt_name"] == [["a.safetensors", "b.safetensors"], {}]
    toy.checkpoints.append("c.safetensors")  # a new file appears in the model folder
    assert object_info(toy.registry)["Loader"]["input"]["required"]["ckpt_name"][0][-1] == "c.safetensors"
    assert object_info(toy.registry)["BrokenChoices"]["input"]["required"]["name"] == [[], {}]


def test_output_node_hidden_inputs_and_names(toy):
    save = node_info(toy.Save)
    assert save["output_node"] is True and save["output"] == [] and save["output_name"] == []
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input_order"] == {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}
    add = node_info(toy.Add)
    assert add["display_name"] == "Add numbers" and add["name"] == "Add"
    assert node_info(toy.Decode)["output_name"] == ["IMAGE"]  # defaults to the type


def test_object_info_for_one_class(toy):
    assert object_info(toy.registry, "Add") == {"Add": node_info(toy.Add)}
    assert object_info(toy.registry, "Nope") == {}


def test_flags_description_tooltips_and_list_outputs():
    class Old(Node):
        name = "OldThing"
        description = "An old thing."
        deprecated = True
        experimental = True
        python_module = "comfy_extras.nodes_old"
        outputs = [Output("IMAGE", "images", is_list=True, tooltip="every frame")]

        def execute(self, ctx):
            return ([],)

    info = node_info(Old)
    assert info["name"] == "OldThing" and info["display_name"] == "OldThing"
    assert info["description"] == "An old thing." and info["python_module"] == "comfy_extras.nodes_old"
    assert info["deprecated"] is True and info["experimental"] is True
    assert info["output_is_list"] == [True] and info["output_tooltips"] == ["every frame"]
    assert info["input"] == {"required": {}} and info["input_order"] == {"required": []}


def test_registry_lookup_and_decorator(toy):
    reg = NodeRegistry()

    @reg.register
    class Plain(Node):
        outputs = [Output("INT")]

        def execute(self, ctx):
            return (1,)

    assert Plain.name == "Plain" and "Plain" in reg and reg["Plain"] is Plain and reg.get("Nope") is None
    assert len(reg) == 1 and list(reg) == ["Plain"] and reg.classes() == [Plain]
    reg.register(Plain)  # registering the same class again is harmless
    with pytest.raises(UnknownNodeError, match="Nope"):
        reg["Nope"]


def test_duplicate_names_are_refused(toy):
    class Add(Node):  # noqa: F811 - same class_type as the toy Add
        def execute(self, ctx):
            return ()

    with pytest.raises(NodeDefinitionError, match="already registered"):
        toy.registry.register(Add)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"inputs": {"c": Input("COMBO")}}, "COMBO input needs choices"),
        ({"inputs": {"n": Input("INT", default=50, min=0, max=10)}}, "above max"),
        ({"inputs": {"n": Input("INT", default=1.5)}}, "INT default must be an int"),
        ({"inputs": {"n": Input("INT", min=5, max=1)}}, "greater than max"),
        ({"inputs": {"s": Input("STRING", default=3)}}, "STRING default must be a str"),
        ({"inputs": {"b": Input("BOOLEAN", default=1)}}, "BOOLEAN default must be a bool"),
        ({"inputs": {"c": Input(choices=["x"], default="y")}}, "not one of its choices"),
        ({"inputs": {"x": ("INT",)}}, "must be an Input"),
        ({"outputs": ["INT"]}, "must be an Output"),
        ({"hidden": {"p": "SECRET"}}, "unknown kind"),
    ],
)
def test_bad_declarations_are_refused(attrs, message):
    body = {"execute": lambda self, ctx, **kw: (), **attrs}
    cls = type("Bad", (Node,), body)
    with pytest.raises(NodeDefinitionError, match=message):
        NodeRegistry([cls])


def test_missing_execute_and_non_node_are_refused():
    class NoExecute(Node):
        pass

    with pytest.raises(NodeDefinitionError, match="execute"):
        NodeRegistry([NoExecute])
    with pytest.raises(NodeDefinitionError, match="not a subclass"):
        NodeRegistry([dict])  # type: ignore[list-item]
