"""ControlNet units as workflow nodes: what `workflow_from_params` adds for `GenerationParams.controlnets`.

Per unit: LoadImage (+ LoadImageMask) → ControlNetPreprocessor (fitted to the generation size with the unit's
resize mode) → DiffControlNetLoader (loads ordinary and diff ControlNets alike, against the request's MODEL) →
ControlNetApplyAdvanced, or ControlNetApplyA1111 for A1111's soft control modes. Units chain in order. With hires
fix, a unit's hr_option decides whether it joins the first pass's chain, the hires pass's, or both.
"""

from __future__ import annotations

from typing import Any

Link = list  # [node_id, output_index]


def add_controlnet_nodes(g: Any, params: Any, model: Link, positive: Link,
                         negative: Link) -> tuple[Link, Link, Link, Link]:
    """Add every unit's nodes to the graph builder `g`; returns (first-pass positive, negative, hires-pass positive,
    negative) links."""
    hires = params.hires is not None and params.init_image is None
    lo = [positive, negative]
    hi = [positive, negative]
    for i, unit in enumerate(params.controlnets):
        unit.validate()
        if unit.image is None:
            raise ValueError(f"ControlNet unit {i} has no image")
        load = g.add("LoadImage", {"image": unit.input_name(unit.image)}, title=f"ControlNet {i} Image")
        prep_inputs: dict[str, Any] = {
            "image": [load, 0], "preprocessor": unit.preprocessor, "resolution": int(unit.processor_res),
            "threshold_a": float(unit.threshold_a), "threshold_b": float(unit.threshold_b),
            "width": params.width, "height": params.height, "resize_mode": unit.resize_mode}
        if unit.mask is not None:
            mask = g.add("LoadImageMask", {"image": unit.input_name(unit.mask), "channel": "red"},
                         title=f"ControlNet {i} Mask")
            prep_inputs["mask"] = [mask, 0]
        prep = g.add("ControlNetPreprocessor", prep_inputs, title=f"ControlNet {i} Preprocessor")
        loader = g.add("DiffControlNetLoader", {"model": model, "control_net_name": unit.model},
                       title=f"Load ControlNet {i}")
        on_lo = not hires or unit.hr_option in ("Both", "Low res only")
        on_hi = hires and unit.hr_option in ("Both", "High res only")

        def apply(chain: list[Link]) -> list[Link]:
            inputs: dict[str, Any] = {"positive": chain[0], "negative": chain[1], "control_net": [loader, 0],
                                      "image": [prep, 0], "strength": float(unit.weight),
                                      "start_percent": float(unit.guidance_start),
                                      "end_percent": float(unit.guidance_end)}
            cls = "ControlNetApplyAdvanced"
            if unit.control_mode != "balanced":
                cls = "ControlNetApplyA1111"
                inputs["control_mode"] = unit.mode_label
            nid = g.add(cls, inputs, title=f"Apply ControlNet {i}")
            return [[nid, 0], [nid, 1]]

        if on_lo and on_hi and lo == hi:
            lo = hi = apply(lo)
        else:
            if on_lo:
                lo = apply(lo)
            if on_hi:
                hi = apply(hi)
    return lo[0], lo[1], hi[0], hi[1]
