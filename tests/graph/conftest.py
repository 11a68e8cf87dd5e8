"""Toy nodes for the workflow-engine tests: arithmetic, strings, a slow 'sampler', output nodes."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from darkroom.graph import Input, Node, NodeOutput, NodeRegistry, Output

CALLS: Counter[str] = Counter()  # executions per node class, reset for every test
SEEN: dict[str, list[Any]] = {}  # values some nodes record (the model objects they got, contexts…)
COLOURS = ["red", "green", "blue"]
CHECKPOINTS: list[str] = ["a.safetensors", "b.safetensors"]  # a mutable "model folder"


def _count(node: Node) -> None:
    CALLS[type(node).name] += 1


class Const(Node):
    """An integer constant."""

    category = "toy/math"
    inputs = {"value": Input("INT", default=0, min=-1000, max=1000, step=1, tooltip="the number")}
    outputs = [Output("INT", "value")]

    def execute(self, ctx, value):
        _count(self)
        return (value,)


class Add(Node):
    """a + b."""

    display_name = "Add numbers"
    category = "toy/math"
    inputs = {"a": Input("INT", default=0), "b": Input("INT", default=0)}
    outputs = [Output("INT", "sum")]

    def execute(self, ctx, a, b):
        _count(self)
        return (a + b,)


class Scale(Node):
    """A float in [0, 10]."""

    inputs = {"x": Input("FLOAT", default=1.0, min=0.0, max=10.0, step=0.1, round=0.01)}
    outputs = [Output("FLOAT")]

    def execute(self, ctx, x):
        _count(self)
        return (x,)


class ToText(Node):
    """str(value)."""

    inputs = {"value": Input("INT,FLOAT", force_input=True)}
    outputs = [Output("STRING")]

    def execute(self, ctx, value):
        _count(self)
        return (str(value),)


class Concat(Node):
    """a + sep + b."""

    inputs = {
        "a": Input("STRING", default="", multiline=True, dynamic_prompts=True),
        "b": Input("STRING", default=""),
        "sep": Input("STRING", default="-", optional=True),
    }
    outputs = [Output("STRING")]

    def execute(self, ctx, a, b, sep="?"):
        _count(self)
        return (f"{a}{sep}{b}",)


class Flag(Node):
    """A boolean."""

    inputs = {"on": Input("BOOLEAN", default=False)}
    outputs = [Output("BOOLEAN")]

    def execute(self, ctx, on):
        _count(self)
        return (on,)


class Pick(Node):
    """One colour from a fixed list."""

    inputs = {"colour": Input("COMBO", choices=COLOURS, default="red")}
    outputs = [Output("STRING")]

    def execute(self, ctx, colour):
        _count(self)
        return (colour,)


class Loader(Node):
    """A 'checkpoint loader': returns a new model object per real load."""

    category = "toy/loaders"
    inputs = {"ckpt_name": Input(choices=lambda: list(CHECKPOINTS))}
    outputs = [Output("MODEL"), Output("CLIP")]

    def execute(self, ctx, ckpt_name):
        _count(self)
        return ({"model": ckpt_name, "id": object()}, {"clip": ckpt_name})


class Sampler(Node):
    """A slow 'sampler' that reports progress and stops on interrupt within one step."""

    category = "toy/sampling"
    inputs = {
        "model": Input("MODEL"),
        "seed": Input("INT", default=0, min=0, max=2**64 - 1, control_after_generate=True),
        "steps": Input("INT", default=3, min=1, max=10000),
        "delay": Input("FLOAT", default=0.0, min=0.0, max=1.0, optional=True),
    }
    outputs = [Output("LATENT")]

    def execute(self, ctx, model, seed, steps, delay=0.0):
        _count(self)
        SEEN.setdefault("models", []).append(model)
        done = 0
        for i in range(steps):
            if delay:
                time.sleep(delay)
            done = i + 1
            SEEN["steps_done"] = [done]
            ctx.progress(done, steps, preview=("preview", done) if done == steps else None)
        return ({"samples": (model["model"], seed, done)},)


class Decode(Node):
    """LATENT → IMAGE."""

    inputs = {"samples": Input("LATENT")}
    outputs = [Output("IMAGE")]

    def execute(self, ctx, samples):
        _count(self)
        return (("image",) + tuple(samples["samples"]),)


class Save(Node):
    """Output node: 'saves' an image and reports it like SaveImage."""

    output_node = True
    category = "toy/image"
    inputs = {"images": Input("IMAGE"), "filename_prefix": Input("STRING", default="darkroom")}
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = []

    def execute(self, ctx, images, filename_prefix, prompt=None, extra_pnginfo=None):
        _count(self)
        SEEN.setdefault("save_hidden", []).append((prompt, extra_pnginfo))
        name = f"{filename_prefix}_{CALLS['Save']:05}_.png"
        return NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class Show(Node):
    """Output node: shows any value as text."""

    output_node = True
    inputs = {"value": Input("*")}
    hidden = {"unique_id": "UNIQUE_ID"}

    def execute(self, ctx, value, unique_id=None):
        _count(self)
        SEEN.setdefault("show_ids", []).append(unique_id)
        return {"ui": {"text": [str(value)]}, "result": ()}


class Sink(Node):
    """Output node with no UI data."""

    output_node = True
    inputs = {"value": Input("*")}

    def execute(self, ctx, value):
        _count(self)
        return None


class Boom(Node):
    """Fails with ValueError."""

    inputs = {"x": Input("INT", default=0)}
    outputs = [Output("INT")]

    def execute(self, ctx, x):
        _count(self)
        if x != 0:
            raise ValueError(f"boom at x={x}")
        return (x,)


class WrongCount(Node):
    """Returns two values for one declared output."""

    inputs = {}
    outputs = [Output("INT")]

    def execute(self, ctx):
        _count(self)
        return (1, 2)


class ReadFile(Node):
    """Reads a text file; its fingerprint is the file's hash (like LoadImage's IS_CHANGED)."""

    inputs = {"path": Input("STRING", default="")}
    outputs = [Output("STRING")]

    @classmethod
    def fingerprint(cls, path, **_):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def execute(self, ctx, path):
        _count(self)
        return (Path(path).read_text(),)


class Volatile(Node):
    """Fingerprint is NaN: never cached (ComfyUI's IS_CHANGED → float('nan'))."""

    inputs = {}
    outputs = [Output("INT")]

    @classmethod
    def fingerprint(cls, **_):
        return float("nan")

    def execute(self, ctx):
        _count(self)
        return (CALLS["Volatile"],)


class Even(Node):
    """Only accepts even numbers (custom validation)."""

    inputs = {"n": Input("INT", default=0)}
    outputs = [Output("INT")]

    @classmethod
    def check_inputs(cls, n, **_):
        return True if n % 2 == 0 else f"{n} is odd"

    def execute(self, ctx, n):
        _count(self)
        return (n,)


class BrokenChoices(Node):
    """Its choices provider raises (exception_during_validation)."""

    inputs = {"name": Input(choices=lambda: (_ for _ in ()).throw(OSError("model folder unreadable")))}
    outputs = [Output("STRING")]

    def execute(self, ctx, name):
        return (name,)


class ManyChoices(Node):
    """A combo with more than 20 entries."""

    inputs = {"name": Input(choices=[f"m{i}.safetensors" for i in range(25)])}
    outputs = [Output("STRING")]

    def execute(self, ctx, name):
        return (name,)


class UseServices(Node):
    """Records what the context offers."""

    inputs = {"value": Input("INT", default=0)}
    outputs = [Output("STRING")]

    def execute(self, ctx, value):
        _count(self)
        SEEN.setdefault("ctx", []).append(ctx)
        return (f"{ctx.storage.prefix}:{ctx.node_id}:{value}",)


ALL_NODES = [Const, Add, Scale, ToText, Concat, Flag, Pick, Loader, Sampler, Decode, Save, Show, Sink, Boom,
             WrongCount, ReadFile, Volatile, Even, BrokenChoices, ManyChoices, UseServices]


@pytest.fixture
def toy() -> SimpleNamespace:
    """Fresh counters and a registry of every toy node."""
    CALLS.clear()
    SEEN.clear()
    CHECKPOINTS[:] = ["a.safetensors", "b.safetensors"]
    ns = SimpleNamespace(**{cls.__name__: cls for cls in ALL_NODES})
    ns.registry = NodeRegistry(ALL_NODES)
    ns.calls = CALLS
    ns.seen = SEEN
    ns.checkpoints = CHECKPOINTS
    ns.lock = threading.Lock()
    return ns


class Recorder:
    """An `on_event` sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((event, data))

    def types(self) -> list[str]:
        return [t for t, _ in self.events if t not in ("progress_state", "progress", "preview")]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == event]

    def executing(self) -> list[str | None]:
        return [d["node"] for d in self.of("executing")]


@pytest.fixture
def recorder() -> Recorder:
    """A fresh event recorder."""
    return Recorder()


def sd_prompt(seed: int = 1, steps: int = 3, ckpt: str = "a.safetensors", prefix: str = "out") -> dict[str, Any]:
    """A txt2img-shaped toy workflow: loader → sampler → decode → save."""
    return {
        "4": {"class_type": "Loader", "inputs": {"ckpt_name": ckpt}},
        "3": {"class_type": "Sampler", "inputs": {"model": ["4", 0], "seed": seed, "steps": steps}},
        "8": {"class_type": "Decode", "inputs": {"samples": ["3", 0]}},
        "9": {"class_type": "Save", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


@pytest.fixture
def make_sd_prompt():
    """The toy txt2img workflow builder."""
    return sd_prompt
