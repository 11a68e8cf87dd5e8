"""Typed, stateless workflow nodes: declared inputs and outputs plus one `execute` method.

A node class names itself with ComfyUI's `class_type` (`name`), declares its inputs as an
ordered mapping of `Input`s and its outputs as a list of `Output`s, and implements
`execute(self, ctx, **inputs)`. The executor builds a fresh instance per run, so nodes keep no
state between runs; whatever depends on the outside world (a file on disk) is declared through
the `fingerprint` classmethod, which plays the part of ComfyUI's `IS_CHANGED`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from darkroom.graph.context import NodeContext


class Types:
    """ComfyUI's socket type names (plain strings on the wire)."""

    MODEL = "MODEL"
    CLIP = "CLIP"
    VAE = "VAE"
    CONDITIONING = "CONDITIONING"
    LATENT = "LATENT"
    IMAGE = "IMAGE"
    MASK = "MASK"
    INT = "INT"
    FLOAT = "FLOAT"
    STRING = "STRING"
    BOOLEAN = "BOOLEAN"
    COMBO = "COMBO"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    CONTROL_NET = "CONTROL_NET"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    SIGMAS = "SIGMAS"
    SAMPLER = "SAMPLER"
    NOISE = "NOISE"
    ANY = "*"


# Types whose values may be written as constants in a workflow (ComfyUI's "widgets").
PRIMITIVE_TYPES = frozenset({Types.INT, Types.FLOAT, Types.STRING, Types.BOOLEAN})
WIDGET_TYPES = PRIMITIVE_TYPES | {Types.COMBO, Types.ANY}

# Hidden input kinds the executor knows how to fill (ComfyUI's `hidden` section).
HIDDEN_KINDS = frozenset({"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"})


class _Missing:
    """Sentinel for 'no default declared' (None is a legitimate default)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class Interrupted(Exception):
    """Raised inside a node when the running prompt was asked to stop."""


class NodeDefinitionError(TypeError):
    """A node class declares its inputs, outputs or metadata wrongly."""


ChoicesSpec = Sequence[Any] | Callable[[], Sequence[Any]]


@dataclass(frozen=True)
class Input:
    """One declared node input: its type, widget default, range or choices, and UI hints."""

    type: str = Types.COMBO
    default: Any = MISSING
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    choices: ChoicesSpec | None = None  # a list, or a callable giving the current list (model files)
    optional: bool = False
    multiline: bool = False
    force_input: bool = False  # show as a socket, never as a widget
    tooltip: str | None = None
    lazy: bool = False  # advertised to the UI; this executor still evaluates it eagerly
    control_after_generate: bool = False  # seed widgets: the frontend changes the value after queueing
    dynamic_prompts: bool | None = None
    advanced: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # other object_info options (image_upload, …)

    @property
    def is_combo(self) -> bool:
        """True for a choice input (a `[[choices], opts]` spec in object_info)."""
        return self.type == Types.COMBO or self.choices is not None

    @property
    def accepts_constant(self) -> bool:
        """True if a workflow may give this input a literal value instead of a link."""
        return self.is_combo or self.type in WIDGET_TYPES or any(t in WIDGET_TYPES for t in self.type_set)

    @property
    def type_set(self) -> frozenset[str]:
        """The input's type split on commas (ComfyUI's union syntax `STRING,INT`)."""
        return frozenset(t.strip() for t in self.type.split(","))

    def current_choices(self) -> list[Any]:
        """The choices now (calls the provider for dynamic lists such as model files)."""
        if self.choices is None:
            return []
        items = self.choices() if callable(self.choices) else self.choices
        return list(items)

    def options(self) -> dict[str, Any]:
        """The options dict of this input's object_info spec (ComfyUI key names)."""
        opts: dict[str, Any] = {}
        if self.default is not MISSING:
            opts["default"] = self.default
        for key, value in (("min", self.min), ("max", self.max), ("step", self.step), ("round", self.round)):
            if value is not None:
                opts[key] = value
        if self.multiline:
            opts["multiline"] = True
        if self.dynamic_prompts is not None:
            opts["dynamicPrompts"] = self.dynamic_prompts
        if self.force_input:
            opts["forceInput"] = True
        if self.lazy:
            opts["lazy"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.advanced:
            opts["advanced"] = True
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        opts.update(self.extra)
        return opts

    def spec(self) -> list[Any]:
        """The V1 object_info spec: `[TYPE, opts]`, or `[[choices…], opts]` for a combo."""
        head: Any = self.current_choices() if self.is_combo else self.type
        return [head, self.options()]


@dataclass(frozen=True)
class Output:
    """One declared node output (socket type and display name)."""

    type: str
    name: str | None = None
    is_list: bool = False  # advertised in object_info; the executor does not map over lists
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        """The name shown on the socket (defaults to the type)."""
        return self.name or self.type


@dataclass
class NodeOutput:
    """What an output node returns: its socket values plus UI data for the client (`executed`)."""

    result: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class Node:
    """Base class of every workflow node; subclasses declare class attributes and `execute`."""

    name: ClassVar[str] = ""  # ComfyUI class_type; defaults to the Python class name
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    description: ClassVar[str] = ""
    inputs: ClassVar[Mapping[str, Input]] = {}
    outputs: ClassVar[Sequence[Output]] = ()
    hidden: ClassVar[Mapping[str, str]] = {}  # e.g. {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    output_node: ClassVar[bool] = False
    version: ClassVar[str] = "1"
    deprecated: ClassVar[bool] = False
    experimental: ClassVar[bool] = False
    not_idempotent: ClassVar[bool] = False  # results are never shared between nodes of equal inputs
    #: Combo inputs whose value the node's own `check_inputs` validates, so the choice-list membership check is
    #: skipped for them (ComfyUI skips it when VALIDATE_INPUTS takes the input) — e.g. LoadImage's annotated
    #: names like "x.png [input]" or "clipspace/…" from the frontend's mask editor.
    self_validated_inputs: ClassVar[frozenset[str]] = frozenset()
    python_module: ClassVar[str] = "nodes"  # the frontend treats anything not under custom_nodes. as core

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or not cls.__dict__["name"]:
            cls.name = cls.__name__
        if not cls.__dict__.get("display_name"):
            cls.display_name = cls.name
        if isinstance(cls.__dict__.get("outputs"), list):
            cls.outputs = tuple(cls.__dict__["outputs"])

    def execute(self, ctx: NodeContext, **inputs: Any) -> tuple[Any, ...] | NodeOutput | dict[str, Any] | None:
        """Run the node; return one value per declared output, or a `NodeOutput` with UI data."""
        raise NotImplementedError(f"node {type(self).name} does not implement execute()")

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        """A value that changes when the outside state the node reads changes (None: pure node)."""
        return None

    @classmethod
    def check_inputs(cls, **inputs: Any) -> bool | str:
        """Extra validation of constant inputs: True, or False / a message (custom_validation_failed)."""
        return True

    @classmethod
    def has_custom_check(cls) -> bool:
        """True if the class overrides `check_inputs`."""
        return _underlying(cls.check_inputs) is not _underlying(Node.check_inputs)

    @classmethod
    def has_fingerprint(cls) -> bool:
        """True if the class overrides `fingerprint` (its result then joins the cache key)."""
        return _underlying(cls.fingerprint) is not _underlying(Node.fingerprint)


def _underlying(method: Any) -> Any:
    """The plain function behind a (class)method, to tell overrides apart."""
    return getattr(method, "__func__", method)


def definition_problems(cls: type) -> list[str]:
    """Everything wrong with a node class's declarations (empty list: the class is usable)."""
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        return [f"{cls!r} is not a subclass of darkroom.graph.Node"]
    problems: list[str] = []
    label = f"node class {cls.__name__} ({cls.name!r})"
    if not isinstance(cls.name, str) or not cls.name:
        problems.append(f"{label}: name must be a non-empty string")
    if cls.execute is Node.execute:
        problems.append(f"{label}: execute() is not implemented")
    if not isinstance(cls.inputs, Mapping):
        problems.append(f"{label}: inputs must be a mapping of name -> Input")
    else:
        for key, inp in cls.inputs.items():
            problems.extend(_input_problems(label, key, inp))
    if not isinstance(cls.outputs, Sequence) or isinstance(cls.outputs, str):
        problems.append(f"{label}: outputs must be a list of Output")
    else:
        for i, out in enumerate(cls.outputs):
            if not isinstance(out, Output) or not isinstance(out.type, str) or not out.type:
                problems.append(f"{label}: output {i} must be an Output with a type string, got {out!r}")
    if not isinstance(cls.hidden, Mapping):
        problems.append(f"{label}: hidden must be a mapping of name -> kind")
    else:
        for key, kind in cls.hidden.items():
            if kind not in HIDDEN_KINDS:
                problems.append(f"{label}: hidden input {key!r} has unknown kind {kind!r} (known: {sorted(HIDDEN_KINDS)})")
            if isinstance(cls.inputs, Mapping) and key in cls.inputs:
                problems.append(f"{label}: hidden input {key!r} clashes with a declared input")
    return problems


def _input_problems(label: str, key: Any, inp: Any) -> list[str]:
    """Problems with one declared input (type, range, default, choices)."""
    if not isinstance(key, str) or not key:
        return [f"{label}: input names must be non-empty strings, got {key!r}"]
    if not isinstance(inp, Input):
        return [f"{label}: input {key!r} must be an Input, got {inp!r}"]
    where = f"{label}: input {key!r}"
    if not isinstance(inp.type, str) or not inp.type:
        return [f"{where}: type must be a non-empty string"]
    problems: list[str] = []
    if inp.type == Types.COMBO and inp.choices is None:
        problems.append(f"{where}: a COMBO input needs choices")
    if inp.min is not None and inp.max is not None and inp.min > inp.max:
        problems.append(f"{where}: min {inp.min} is greater than max {inp.max}")
    default = inp.default
    if default is not MISSING and default is not None:
        if inp.type == Types.INT and (not isinstance(default, int) or isinstance(default, bool)):
            problems.append(f"{where}: INT default must be an int, got {default!r}")
        if inp.type == Types.FLOAT and (not isinstance(default, (int, float)) or isinstance(default, bool)):
            problems.append(f"{where}: FLOAT default must be a number, got {default!r}")
        if inp.type == Types.STRING and not isinstance(default, str):
            problems.append(f"{where}: STRING default must be a str, got {default!r}")
        if inp.type == Types.BOOLEAN and not isinstance(default, bool):
            problems.append(f"{where}: BOOLEAN default must be a bool, got {default!r}")
        if inp.type in (Types.INT, Types.FLOAT) and isinstance(default, (int, float)):
            if inp.min is not None and default < inp.min:
                problems.append(f"{where}: default {default} is below min {inp.min}")
            if inp.max is not None and default > inp.max:
                problems.append(f"{where}: default {default} is above max {inp.max}")
        if inp.choices is not None and not callable(inp.choices) and default not in list(inp.choices):
            problems.append(f"{where}: default {default!r} is not one of its choices")
    return problems
