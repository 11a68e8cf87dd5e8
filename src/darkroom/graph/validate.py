"""Validation of an API-format workflow before anything runs, with ComfyUI's error structure.

`validate_prompt` mirrors ComfyUI's `validate_prompt`/`validate_inputs`: a top-level `error`
(`invalid_prompt`, `prompt_no_outputs`, `prompt_outputs_failed_validation`) and `node_errors`
keyed by node id. Constants are converted the way ComfyUI converts them (INT/FLOAT/STRING/BOOLEAN)
into a normalised copy of the prompt, which is what the executor runs. Unlike ComfyUI, links to
missing nodes or out-of-range outputs are `bad_linked_input` errors (ComfyUI raises a KeyError or
IndexError and reports `exception_during_validation`), and dependency cycles are found here
(`dependency_cycle`) instead of at run time.
"""

from __future__ import annotations

import copy
import sys
import traceback
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from darkroom.graph.node import Input, Node, Types
from darkroom.graph.registry import NodeRegistry

Link = tuple[str, int]

MAX_LISTED_CHOICES = 20  # ComfyUI leaves longer choice lists (model folders) out of error messages


class PromptValidationError(Exception):
    """A workflow that cannot run; carries ComfyUI's `error` and `node_errors` dicts."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": "))
        self.error = error
        self.node_errors = node_errors or {}

    def response_body(self) -> dict[str, Any]:
        """The JSON body ComfyUI answers a rejected `POST /prompt` with (HTTP 400)."""
        return {"error": self.error, "node_errors": self.node_errors}


@dataclass
class ValidationResult:
    """Outcome of `validate_prompt`: valid outputs, errors, and the normalised prompt."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]  # output node ids that will run (ComfyUI's good_outputs)
    node_errors: dict[str, Any]
    prompt: dict[str, Any]  # copy of the prompt with constants converted; links as [str id, int]
    links: dict[str, dict[str, Link]] = field(default_factory=dict)  # node -> input name -> source

    def response_body(self) -> dict[str, Any]:
        """`{"error", "node_errors"}` as ComfyUI's `/prompt` returns them."""
        return {"error": self.error, "node_errors": self.node_errors}

    def raise_for_error(self) -> ValidationResult:
        """Raise `PromptValidationError` if no output can run; return self otherwise."""
        if not self.ok:
            raise PromptValidationError(self.error or {}, self.node_errors)
        return self


def full_type_name(klass: type) -> str:
    """`module.Qualname` of an exception class (bare name for builtins), as ComfyUI reports it."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _top_error(kind: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _invalid(message: str, details: str = "", extra_info: dict[str, Any] | None = None) -> ValidationResult:
    return ValidationResult(False, _top_error("invalid_prompt", message, details, extra_info), [], {}, {})


def types_match(received: str, inp: Input) -> bool:
    """Can an output of type `received` feed `inp`? (comma unions overlap; `*` matches anything)."""
    if received == Types.ANY or Types.ANY in inp.type_set:
        return True
    if inp.is_combo:
        return received == Types.COMBO
    if received == inp.type:
        return True
    received_set = {t.strip() for t in received.split(",")}
    return bool(received_set & inp.type_set)


def convert_constant(type_name: str, value: Any) -> Any:
    """Convert a literal for an INT/FLOAT/STRING/BOOLEAN input as ComfyUI does (int(), float(), str())."""
    if type_name == Types.INT:
        return int(value)
    if type_name == Types.FLOAT:
        return float(value)
    if type_name == Types.STRING:
        return str(value)
    if type_name == Types.BOOLEAN:
        if isinstance(value, str):  # ComfyUI's bool("false") is True; spell the words out instead
            word = value.strip().lower()
            if word in ("true", "1", "yes", "on"):
                return True
            if word in ("false", "0", "no", "off", ""):
                return False
            raise ValueError(f"{value!r} is not a boolean")
        return bool(value)
    return value


def _parse_link(value: Any) -> Link | None:
    """`[node_id, output_index]` → (str id, int index); None if the shape is wrong."""
    if len(value) != 2:
        return None
    src, index = value[0], value[1]
    if isinstance(src, int) and not isinstance(src, bool):
        src = str(src)  # Python callers sometimes use int ids; on the wire they are strings
    if not isinstance(src, str) or not isinstance(index, int) or isinstance(index, bool):
        return None
    return src, index


class _Validator:
    """One validation pass over one prompt (memoised per node)."""

    def __init__(self, registry: NodeRegistry, prompt: dict[str, Any]) -> None:
        self.registry = registry
        self.prompt = prompt
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.links: dict[str, dict[str, Link]] = {}

    def node_class(self, node_id: str) -> type[Node]:
        return self.registry[self.prompt[node_id]["class_type"]]

    def check_node(self, node_id: str) -> None:
        """Collect the node's own errors (not those of its ancestors) and its well-formed links."""
        errors: list[dict[str, Any]] = []
        links: dict[str, Link] = {}
        self.errors[node_id] = errors
        self.links[node_id] = links
        try:
            self._check_inputs(node_id, errors, links)
        except Exception as ex:  # a choices provider or check_inputs hook blew up
            _, _, tb = sys.exc_info()
            errors.append({
                "type": "exception_during_validation",
                "message": "Exception when validating node",
                "details": str(ex),
                "extra_info": {"exception_type": full_type_name(type(ex)), "traceback": traceback.format_tb(tb)},
            })

    def _check_inputs(self, node_id: str, errors: list[dict[str, Any]], links: dict[str, Link]) -> None:
        cls = self.node_class(node_id)
        inputs: dict[str, Any] = self.prompt[node_id]["inputs"]
        constants: dict[str, Any] = {}
        for name, inp in cls.inputs.items():
            if name not in inputs:
                if not inp.optional:
                    errors.append({
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": f"{name}",
                        "extra_info": {"input_name": name},
                    })
                continue
            value = inputs[name]
            if isinstance(value, (list, tuple)):
                link = self._check_link(name, inp, value, errors)
                if link is not None:
                    links[name] = link
                    inputs[name] = [link[0], link[1]]
                continue
            ok, value = self._check_constant(name, inp, value, errors,
                                                   name in cls.self_validated_inputs and cls.has_custom_check())
            if ok:
                inputs[name] = value
                constants[name] = value
        if not errors and cls.has_custom_check():
            verdict = cls.check_inputs(**constants)
            if verdict is not True:
                errors.append({
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "" if verdict is False else str(verdict),
                    "extra_info": {},
                })

    def _check_link(self, name: str, inp: Input, value: Any, errors: list[dict[str, Any]]) -> Link | None:
        def bad(message: str) -> None:
            errors.append({
                "type": "bad_linked_input",
                "message": message,
                "details": f"{name}",
                "extra_info": {"input_name": name, "input_config": inp.spec(), "received_value": list(value)},
            })

        link = _parse_link(value)
        if link is None:
            bad("Bad linked input, must be a length-2 list of [node_id, slot_index]")
            return None
        src, index = link
        if src not in self.prompt:
            bad(f"Bad linked input, node {src} does not exist in the prompt")
            return None
        src_cls = self.node_class(src)
        if not 0 <= index < len(src_cls.outputs):
            bad(f"Bad linked input, output {index} of node {src} ({src_cls.name}) does not exist: "
                f"it has {len(src_cls.outputs)} output(s)")
            return None
        received = src_cls.outputs[index].type
        if not types_match(received, inp):
            expected = "COMBO" if inp.is_combo else inp.type
            errors.append({
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{name}, {received} != {expected}",
                "extra_info": {
                    "input_name": name,
                    "input_config": inp.spec(),
                    "received_type": received,
                    "linked_node": [src, index],
                },
            })
            return None
        return link

    def _check_constant(self, name: str, inp: Input, value: Any, errors: list[dict[str, Any]],
                        self_validated: bool = False) -> tuple[bool, Any]:
        if isinstance(value, dict) and "__value__" in value:  # ComfyUI's wrapper for list-valued widgets
            value = value["__value__"]
        if not inp.accepts_constant:
            errors.append({
                "type": "invalid_input_type",
                "message": f"Input needs a link from a {inp.type} output, not a constant value",
                "details": f"{name}, {value!r}",
                "extra_info": {"input_name": name, "input_config": inp.spec(), "received_value": value},
            })
            return False, value
        if not inp.is_combo:
            try:
                value = convert_constant(inp.type, value)
            except Exception as ex:
                errors.append({
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {inp.type} value",
                    "details": f"{name}, {value}, {ex}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": inp.spec(),
                        "received_value": value,
                        "exception_message": str(ex),
                    },
                })
                return False, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if inp.min is not None and value < inp.min:
                errors.append(self._range_error("value_smaller_than_min", f"Value {value} smaller than min of {inp.min}",
                                                name, inp, value))
                return False, value
            if inp.max is not None and value > inp.max:
                errors.append(self._range_error("value_bigger_than_max", f"Value {value} bigger than max of {inp.max}",
                                                name, inp, value))
                return False, value
        if inp.is_combo and not self_validated:
            choices = inp.current_choices()
            if value not in choices and isinstance(value, str) and "\\" in value:
                value = value.replace("\\", "/")  # workflows shared from Windows name subfolders with '\'
            if value not in choices:
                if len(choices) > MAX_LISTED_CHOICES:
                    list_info, config = f"(list of length {len(choices)})", None
                else:
                    list_info, config = str(choices), [choices, inp.options()]
                errors.append({
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{name}: '{value}' not in {list_info}",
                    "extra_info": {"input_name": name, "input_config": config, "received_value": value},
                })
                return False, value
        return True, value

    @staticmethod
    def _range_error(kind: str, message: str, name: str, inp: Input, value: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "message": message,
            "details": f"{name}",
            "extra_info": {"input_name": name, "input_config": inp.spec(), "received_value": value},
        }


def reachable(start: Iterable[str], links: Mapping[str, Mapping[str, Link]]) -> list[str]:
    """Node ids reachable from `start` through links, in discovery order."""
    seen: dict[str, None] = {}
    stack = list(reversed(list(start)))
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen[node_id] = None
        for src, _ in reversed(list(links.get(node_id, {}).values())):
            if src not in seen:
                stack.append(src)
    return list(seen)


def topological_order(node_ids: Iterable[str], links: Mapping[str, Mapping[str, Link]]) -> tuple[list[str], list[str]]:
    """Kahn's order of `node_ids` (sources first) and the nodes that sit on a dependency cycle."""
    nodes = list(node_ids)
    members = set(nodes)
    deps = {n: {src for src, _ in links.get(n, {}).values() if src in members} for n in nodes}
    users: dict[str, set[str]] = {n: set() for n in nodes}
    for n, ds in deps.items():
        for d in ds:
            users[d].add(n)
    position = {n: i for i, n in enumerate(nodes)}
    remaining = {n: len(ds) for n, ds in deps.items()}
    ready = deque(n for n in nodes if remaining[n] == 0)
    order: list[str] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for u in sorted(users[n], key=position.__getitem__):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    done = set(order)
    stuck = {n for n in nodes if n not in done}
    # Peel off stuck nodes that merely hang below a cycle; what is left lies on one.
    changed = True
    while changed:
        changed = False
        for n in list(stuck):
            if not (users[n] & stuck):
                stuck.discard(n)
                changed = True
    return order, [n for n in nodes if n in stuck]


def validate_prompt(
    registry: NodeRegistry,
    prompt: Mapping[str, Any],
    partial_execution_targets: Iterable[str] | None = None,
) -> ValidationResult:
    """Check an API-format prompt the way ComfyUI's `validate_prompt` does, before anything runs."""
    if not isinstance(prompt, Mapping):
        return _invalid("Cannot execute because the prompt is not an object of nodes", f"{type(prompt).__name__}")
    work: dict[str, Any] = {}
    for raw_id, node in prompt.items():
        node_id = str(raw_id)
        if not isinstance(node, Mapping):
            return _invalid("Cannot execute because a node is not an object", f"Node ID '#{node_id}'")
        if "class_type" not in node:
            return _invalid("Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            return _invalid("Cannot execute because a node's inputs are not an object", f"Node ID '#{node_id}'")
        entry = copy.deepcopy(dict(node))
        entry["inputs"] = copy.deepcopy(dict(inputs))
        work[node_id] = entry

    missing = [(nid, n["class_type"], (n.get("_meta") or {}).get("title")) for nid, n in work.items()
               if not isinstance(n["class_type"], str) or n["class_type"] not in registry]
    if missing:
        classes = list(dict.fromkeys(str(c) for _, c, _ in missing))
        if len(classes) == 1:
            message = f"Cannot execute because node {classes[0]} does not exist."
        else:
            message = f"Cannot execute because nodes {', '.join(classes)} do not exist."
        details = ", ".join(f"Node ID '#{nid}'" for nid, _, _ in missing)
        first_id, first_class, first_title = missing[0]
        extra = {
            "node_id": first_id,
            "class_type": first_class,
            "node_title": first_title or first_class,
            "missing_nodes": [{"node_id": nid, "class_type": c, "node_title": t or c} for nid, c, t in missing],
        }
        return _invalid(message, details, extra)

    targets = None if partial_execution_targets is None else {str(t) for t in partial_execution_targets}
    outputs = [nid for nid, n in work.items()
               if registry[n["class_type"]].output_node and (targets is None or nid in targets)]
    if not outputs:
        error = _top_error("prompt_no_outputs", "Prompt has no outputs")
        return ValidationResult(False, error, [], {}, work)

    v = _Validator(registry, work)
    # Own errors first, discovering links breadth by breadth from the outputs.
    pending = list(outputs)
    while pending:
        node_id = pending.pop()
        if node_id in v.errors:
            continue
        v.check_node(node_id)
        pending.extend(src for src, _ in v.links[node_id].values() if src not in v.errors)
    reached = reachable(outputs, v.links)
    order, cycle = topological_order(reached, v.links)
    for node_id in cycle:
        v.errors[node_id].append({
            "type": "dependency_cycle",
            "message": "Dependency cycle detected",
            "details": f"node {node_id} depends on itself through nodes {', '.join(cycle)}",
            "extra_info": {"cycle": list(cycle)},
        })
    valid: dict[str, bool] = {}
    for node_id in order:  # sources first, so every dependency is decided before its users
        valid[node_id] = not v.errors[node_id] and all(valid.get(src, False) for src, _ in v.links[node_id].values())

    node_errors: dict[str, Any] = {}
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    for out in outputs:
        if valid.get(out, False):
            good.append(out)
            continue
        failed.append((out, v.errors[out]))
        for node_id in reachable([out], v.links):
            if v.errors[node_id]:
                entry = node_errors.setdefault(node_id, {
                    "errors": v.errors[node_id],
                    "dependent_outputs": [],
                    "class_type": work[node_id]["class_type"],
                })
                entry["dependent_outputs"].append(out)
    links = {n: dict(v.links[n]) for n in reached}
    if not good:
        lines = [f"{e['message']}: {e['details']}" for _, errs in failed for e in errs]
        if not lines:  # the outputs only failed through their ancestors
            lines = [f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"]]
        error = _top_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))
        return ValidationResult(False, error, [], node_errors, work, links)
    return ValidationResult(True, None, good, node_errors, work, links)
