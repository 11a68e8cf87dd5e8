"""Execution: order, ancestors only, caching across runs, events, errors, interrupt, context."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from darkroom.graph import ExecutorBusyError, GraphExecutor, Interrupted, NodeContext, PromptValidationError


def run(executor, prompt, recorder=None, **kwargs):
    return executor.execute(prompt, prompt_id="p1", on_event=recorder, **kwargs)


def test_event_sequence_and_payloads(toy, recorder, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    result = run(ex, make_sd_prompt(), recorder)
    assert result.status == "success" and result.success
    assert recorder.types() == ["execution_start", "execution_cached", "executing", "executing", "executing",
                                "executing", "executed", "execution_success", "executing"]
    assert recorder.executing() == ["4", "3", "8", "9", None]
    start, cached = recorder.of("execution_start")[0], recorder.of("execution_cached")[0]
    assert start["prompt_id"] == "p1" and isinstance(start["timestamp"], int)
    assert cached == {"nodes": [], "prompt_id": "p1", "timestamp": cached["timestamp"]}
    assert recorder.of("executing")[0] == {"node": "4", "display_node": "4", "prompt_id": "p1"}
    assert recorder.of("executing")[-1] == {"node": None, "prompt_id": "p1"}
    images = [{"filename": "out_00001_.png", "subfolder": "", "type": "output"}]
    assert recorder.of("executed") == [{"node": "9", "display_node": "9", "output": {"images": images},
                                        "prompt_id": "p1"}]
    assert recorder.of("progress") == [{"value": v, "max": 3, "prompt_id": "p1", "node": "3"} for v in (1, 2, 3)]
    assert recorder.of("preview") == [{"node": "3", "display_node": "3", "prompt_id": "p1", "image": ("preview", 3)}]
    states = recorder.of("progress_state")[-1]["nodes"]
    assert {n: s["state"] for n, s in states.items()} == {"4": "finished", "3": "finished", "8": "finished",
                                                         "9": "finished"}
    assert result.outputs == {"9": {"images": images}}
    assert result.meta["9"] == {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}
    assert result.executed == ["4", "3", "8", "9"] and result.cached == []
    assert result.node_outputs["8"] == (("image", "a.safetensors", 1, 3),)
    status = result.history_status()
    assert status["status_str"] == "success" and status["completed"] is True
    assert [m[0] for m in status["messages"]] == ["execution_start", "execution_cached", "execution_success"]


def test_only_ancestors_of_outputs_run(toy, recorder):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 2}},
              "2": {"class_type": "Const", "inputs": {"value": 3}},  # feeds nothing
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 4}},
              "4": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["2", 0]}},  # not connected to an output
              "5": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt, recorder)
    assert result.executed == ["1", "3", "5"]
    assert result.outputs == {"5": {"text": ["6"]}}
    assert toy.calls == {"Const": 1, "Add": 1, "Show": 1}


def test_topological_order_with_diamond_and_preview_first(toy, recorder):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 20}},
              "4": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["2", 0]}},  # a preview of the left branch
              "6": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt, recorder)
    order = result.executed
    position = {n: i for i, n in enumerate(order)}
    for node, deps in {"2": ["1"], "3": ["1"], "4": ["2", "3"], "5": ["2"], "6": ["4"]}.items():
        assert all(position[d] < position[node] for d in deps), order
    assert position["5"] == position["2"] + 1  # an output runs as soon as it can
    assert result.outputs == {"5": {"text": ["11"]}, "6": {"text": ["32"]}}


def test_second_identical_run_is_fully_cached(toy, recorder, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    first = run(ex, make_sd_prompt())
    result = run(ex, make_sd_prompt(), recorder)
    assert result.executed == [] and sorted(result.cached) == ["3", "4", "8", "9"]
    assert recorder.of("execution_cached")[0]["nodes"] == ["4", "3", "8", "9"]
    assert recorder.executing() == [None]
    assert recorder.of("executed") == [{"node": "9", "display_node": "9", "output": first.outputs["9"],
                                        "prompt_id": "p1"}]  # the output node's UI is replayed
    assert result.outputs == first.outputs
    assert toy.calls == {"Loader": 1, "Sampler": 1, "Decode": 1, "Save": 1}


def test_changing_the_seed_reruns_only_the_sampler_and_downstream(toy, recorder, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    run(ex, make_sd_prompt(seed=1))
    result = run(ex, make_sd_prompt(seed=2), recorder)
    assert recorder.of("execution_cached")[0]["nodes"] == ["4"]
    assert recorder.executing() == ["3", "8", "9", None]
    assert result.executed == ["3", "8", "9"]
    assert toy.calls == {"Loader": 1, "Sampler": 2, "Decode": 2, "Save": 2}
    model_a, model_b = toy.seen["models"]
    assert model_a is model_b  # the cached model is shared, never reloaded or copied
    assert result.node_outputs["4"][0] is model_a


def test_changing_a_loader_input_reruns_everything_below_it(toy, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    run(ex, make_sd_prompt())
    assert run(ex, make_sd_prompt(ckpt="b.safetensors")).executed == ["4", "3", "8", "9"]
    assert run(ex, make_sd_prompt(prefix="other")).executed == ["9"]  # only the saver's constant changed


def test_node_ids_do_not_matter_for_caching(toy, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    run(ex, make_sd_prompt())
    renumbered = {"40": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
                  "30": {"class_type": "Sampler", "inputs": {"model": ["40", 0], "seed": 5, "steps": 3}},
                  "80": {"class_type": "Decode", "inputs": {"samples": ["30", 0]}},
                  "90": {"class_type": "Save", "inputs": {"images": ["80", 0], "filename_prefix": "out"}}}
    assert run(ex, renumbered).executed == ["30", "80", "90"]


def test_duplicate_nodes_in_one_prompt_run_once(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 7}},
              "2": {"class_type": "Const", "inputs": {"value": 7}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt)
    assert toy.calls["Const"] == 1 and result.outputs["4"] == {"text": ["14"]}


def test_cache_is_bounded_lru(toy, make_sd_prompt):
    ex = GraphExecutor(toy.registry, cache_size=2)
    result = run(ex, make_sd_prompt())  # 4 nodes, room for 2
    assert result.success and len(ex.cache) == 2
    again = run(ex, make_sd_prompt())  # the two most recent (decode, save) survived
    assert again.executed == [] and again.cached == ["8", "9"]
    assert toy.calls == {"Loader": 1, "Sampler": 1, "Decode": 1, "Save": 1}
    assert run(ex, make_sd_prompt(seed=9)).executed == ["4", "3", "8", "9"]  # the loader was evicted
    assert len(ex.cache) == 2
    ex.clear_cache()
    assert len(ex.cache) == 0


def test_cache_size_zero_never_caches(toy, make_sd_prompt):
    ex = GraphExecutor(toy.registry, cache_size=0)
    run(ex, make_sd_prompt())
    assert run(ex, make_sd_prompt()).executed == ["4", "3", "8", "9"]
    with pytest.raises(ValueError):
        GraphExecutor(toy.registry, cache_size=-1)


def test_fingerprint_reruns_when_the_file_changes(toy, tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("one")
    prompt = {"1": {"class_type": "ReadFile", "inputs": {"path": str(path)}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    ex = GraphExecutor(toy.registry)
    assert run(ex, prompt).outputs["2"] == {"text": ["one"]}
    assert run(ex, prompt).executed == []
    path.write_text("two")
    result = run(ex, prompt)
    assert result.executed == ["1", "2"] and result.outputs["2"] == {"text": ["two"]}


def test_nan_fingerprint_always_reruns_and_preset_is_changed_wins(toy):
    prompt = {"1": {"class_type": "Volatile", "inputs": {}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    ex = GraphExecutor(toy.registry)
    assert run(ex, prompt).outputs["2"] == {"text": ["1"]}
    assert run(ex, prompt).outputs["2"] == {"text": ["2"]}
    pinned = {"1": {"class_type": "Volatile", "inputs": {}, "is_changed": ["fixed"]},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    run(ex, pinned)
    assert run(ex, pinned).executed == []


def test_failing_fingerprint_reruns(toy, tmp_path):
    prompt = {"1": {"class_type": "ReadFile", "inputs": {"path": str(tmp_path / "missing.txt")}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt)
    assert result.status == "error" and result.error["node_id"] == "1"
    assert result.error["exception_type"] == "FileNotFoundError"


def test_error_in_a_node_reports_it_and_keeps_earlier_outputs(toy, recorder):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Decode", "inputs": {"samples": ["5", 0]}},
              "5": {"class_type": "Sampler", "inputs": {"model": ["6", 0], "seed": 1, "steps": 1}},
              "6": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
              "7": {"class_type": "Save", "inputs": {"images": ["2", 0], "filename_prefix": "kept"}},
              "3": {"class_type": "Boom", "inputs": {"x": 5}},
              "4": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["1", 0]}},
              "9": {"class_type": "Add", "inputs": {"a": ["4", 0], "b": 1}},
              "8": {"class_type": "Show", "inputs": {"value": ["9", 0]}}}
    ex = GraphExecutor(toy.registry)
    result = run(ex, prompt, recorder)
    assert result.status == "error" and not result.success
    assert recorder.types()[-2:] == ["execution_error", "executing"]
    err = recorder.of("execution_error")[0]
    assert err["node_id"] == "3" and err["node_type"] == "Boom" and err["prompt_id"] == "p1"
    assert err["exception_message"] == "boom at x=5" and err["exception_type"] == "ValueError"
    assert isinstance(err["traceback"], list) and any("boom at x" in line for line in err["traceback"])
    assert err["current_inputs"] == {"x": [5]}
    assert set(err["executed"]) == {"6", "5", "2", "7"} and "1" not in err["executed"]
    assert set(err["current_outputs"]) == {"6", "5", "2", "7"}
    assert isinstance(err["timestamp"], int)
    assert result.error == err
    assert result.outputs == {"7": {"images": [{"filename": "kept_00001_.png", "subfolder": "", "type": "output"}]}}
    assert "8" not in result.outputs and toy.calls["Add"] == 0 and toy.calls["Show"] == 0
    assert result.history_status()["status_str"] == "error"
    # The cache survives the error: fixing the failing node reruns only it and what follows.
    prompt["3"]["inputs"]["x"] = 0
    fixed = run(ex, prompt)
    assert fixed.success and sorted(fixed.executed) == ["1", "3", "4", "8", "9"]
    assert fixed.outputs["8"] == {"text": ["2"]} and "7" in fixed.outputs  # replayed from the cache


def test_wrong_number_of_results_is_an_execution_error(toy):
    prompt = {"1": {"class_type": "WrongCount", "inputs": {}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt)
    assert result.error["exception_type"] == "TypeError"
    assert "returned 2 value(s) but declares 1 output(s)" in result.error["exception_message"]


def test_interrupt_from_another_thread_stops_within_one_step(toy, recorder):
    prompt = {"4": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
              "3": {"class_type": "Sampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 500, "delay": 0.01}},
              "8": {"class_type": "Decode", "inputs": {"samples": ["3", 0]}},
              "9": {"class_type": "Save", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}}
    stop = threading.Event()
    steps_at_stop: list[int] = []

    def on_event(event, data):
        recorder(event, data)
        if event == "progress" and data["value"] == 3:
            def interrupt():
                stop.set()
                steps_at_stop.append(toy.seen["steps_done"][0])  # read after the request: at least that far
            threading.Thread(target=interrupt).start()

    t0 = time.monotonic()
    result = GraphExecutor(toy.registry).execute(prompt, prompt_id="p1", on_event=on_event, interrupt=stop)
    assert time.monotonic() - t0 < 3.0
    assert result.status == "interrupted"
    assert toy.seen["steps_done"][0] - steps_at_stop[0] <= 1  # at most the step in flight completes
    assert recorder.types()[-2:] == ["execution_interrupted", "executing"]
    payload = recorder.of("execution_interrupted")[0]
    assert {k: payload[k] for k in ("prompt_id", "node_id", "node_type", "executed")} == {
        "prompt_id": "p1", "node_id": "3", "node_type": "Sampler", "executed": ["4"]}
    assert isinstance(payload["timestamp"], int)
    assert toy.calls["Decode"] == 0 and result.outputs == {}
    assert result.history_status()["status_str"] == "error"


def test_interrupt_before_start_and_callable_interrupt(toy, recorder, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    result = run(ex, make_sd_prompt(), recorder, interrupt=lambda: True)
    assert result.status == "interrupted" and result.error["node_id"] == "4" and result.executed == []
    assert toy.calls == {}
    with pytest.raises(TypeError, match="interrupt"):
        run(ex, make_sd_prompt(), interrupt="stop")  # type: ignore[arg-type]
    # An interrupted node is not cached: the next run does the work.
    assert run(ex, make_sd_prompt()).executed == ["4", "3", "8", "9"]


def test_node_raising_interrupted_itself(toy):
    class Stopper(toy.Boom):
        name = "Stopper"

        def execute(self, ctx, x):
            raise Interrupted("user cancelled")

    toy.registry.register(Stopper)
    prompt = {"1": {"class_type": "Stopper", "inputs": {"x": 1}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert run(GraphExecutor(toy.registry), prompt).status == "interrupted"


def test_one_prompt_at_a_time(toy, make_sd_prompt):
    ex = GraphExecutor(toy.registry)
    started = threading.Event()
    stop = threading.Event()
    slow = make_sd_prompt(steps=400)
    slow["3"]["inputs"]["delay"] = 0.01
    box = {}

    def worker():
        box["result"] = ex.execute(slow, on_event=lambda e, d: started.set() if e == "progress" else None,
                                   interrupt=stop)

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(5)
    with pytest.raises(ExecutorBusyError):
        ex.execute(make_sd_prompt())
    stop.set()
    thread.join(5)
    assert box["result"].status == "interrupted"
    assert ex.execute(make_sd_prompt(seed=3)).success  # free again afterwards


def test_invalid_prompt_raises_before_any_event(toy, recorder):
    with pytest.raises(PromptValidationError) as info:
        run(GraphExecutor(toy.registry), {"1": {"class_type": "Nope", "inputs": {}}}, recorder)
    assert info.value.error["type"] == "invalid_prompt" and recorder.events == []


def test_partially_valid_prompt_runs_the_good_outputs(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 4}},
              "2": {"class_type": "Const", "inputs": {"value": "bad"}},
              "10": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "11": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt)
    assert result.success and result.outputs == {"10": {"text": ["4"]}}
    assert result.node_errors["2"]["dependent_outputs"] == ["11"]


def test_outputs_to_execute_runs_only_those_outputs(toy):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 4}},
              "2": {"class_type": "Const", "inputs": {"value": 5}},
              "10": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "11": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    result = run(GraphExecutor(toy.registry), prompt, outputs_to_execute=["11"])
    assert result.executed == ["2", "11"] and list(result.outputs) == ["11"]


def test_context_services_factory_hidden_inputs_and_defaults(toy):
    class Storage:
        prefix = "store"

    prompt = {"1": {"class_type": "UseServices", "inputs": {"value": 3}},
              "2": {"class_type": "Concat", "inputs": {"a": ["1", 0], "b": "z"}},  # optional sep left out
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Decode", "inputs": {"samples": ["5", 0]}},
              "5": {"class_type": "Sampler", "inputs": {"model": ["6", 0], "seed": 1, "steps": 1}},
              "6": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
              "7": {"class_type": "Save", "inputs": {"images": ["4", 0], "filename_prefix": "p"}}}
    seen_base = []

    def factory(base: NodeContext):
        seen_base.append(base.node_id)
        return None if base.class_type != "UseServices" else base

    ex = GraphExecutor(toy.registry)
    result = ex.execute(prompt, prompt_id="pid", services={"storage": Storage()}, context_factory=factory,
                        extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert result.outputs["3"] == {"text": ["store:1:3-z"]}  # Input default "-" used for the missing sep
    ctx = toy.seen["ctx"][0]
    assert ctx.node_id == "1" and ctx.prompt_id == "pid" and ctx.class_type == "UseServices"
    assert ctx.prompt["1"]["inputs"]["value"] == 3 and ctx.services["storage"].prefix == "store"
    assert not ctx.interrupted
    with pytest.raises(AttributeError, match="no attribute or service 'models'"):
        ctx.models  # noqa: B018
    assert sorted(seen_base) == ["1", "2", "3", "4", "5", "6", "7"]
    saved_prompt, pnginfo = toy.seen["save_hidden"][0]
    assert saved_prompt["7"]["inputs"]["filename_prefix"] == "p" and pnginfo == {"workflow": {"nodes": []}}
    assert toy.seen["show_ids"] == ["3"]


def test_context_factory_can_replace_the_context(toy):
    class Wrapped:
        def __init__(self, base):
            self.base = base
            self.storage = type("S", (), {"prefix": "wrapped"})()
            self.node_id = base.node_id

    prompt = {"1": {"class_type": "UseServices", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result = GraphExecutor(toy.registry).execute(prompt, context_factory=Wrapped)
    assert result.outputs["2"] == {"text": ["wrapped:1:1"]}


def test_broken_event_sink_does_not_stop_the_prompt(toy, make_sd_prompt):
    def sink(event, data):
        raise RuntimeError("socket closed")

    assert GraphExecutor(toy.registry).execute(make_sd_prompt(), on_event=sink).success


def test_execution_scope_and_send_done(toy, recorder, make_sd_prompt):
    entered = []

    @contextlib.contextmanager
    def scope():
        entered.append("in")
        yield
        entered.append("out")

    ex = GraphExecutor(toy.registry, execution_scope=scope)
    result = ex.execute(make_sd_prompt(), on_event=recorder, send_done=False)
    assert result.success and entered == ["in", "out"]
    assert None not in recorder.executing()
    assert result.prompt_id and len(result.prompt_id) == 36  # a uuid when none is given


def test_cached_output_without_ui_replays_none(toy, recorder):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}}, "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    ex = GraphExecutor(toy.registry)
    first = run(ex, prompt, recorder)
    assert first.outputs == {} and recorder.of("executed") == []
    recorder.events.clear()
    run(ex, prompt, recorder)
    assert recorder.of("executed") == [{"node": "2", "display_node": "2", "output": None, "prompt_id": "p1"}]
