"""A readable summary of a ComfyUI API-format prompt: the sampler settings, prompts, checkpoint and size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Sampler node class → the input holding its seed.
SAMPLER_SEED_INPUT = {
    "KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed",
    "RandomNoise": "noise_seed",
}
_SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom")
_TEXT_INPUTS = ("text", "text_g", "text_l")
_MAX_DEPTH = 32


def is_link(value: object) -> bool:
    """A ComfyUI link: `[source_node_id, output_index]`."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def is_api_prompt(prompt: object) -> bool:
    """Whether `prompt` looks like an API-format prompt: `{id: {"class_type": …, "inputs": {…}}}`."""
    return (isinstance(prompt, Mapping) and len(prompt) > 0
            and all(isinstance(n, Mapping) and isinstance(n.get("class_type"), str) for n in prompt.values()))


class _Graph:
    """Read-only helpers over an API prompt."""

    def __init__(self, prompt: Mapping[str, Any]) -> None:
        self.nodes = {str(k): v for k, v in prompt.items()}

    def node(self, link: object) -> tuple[str, Mapping[str, Any]] | None:
        if not is_link(link):
            return None
        nid = str(link[0])  # type: ignore[index]
        n = self.nodes.get(nid)
        return (nid, n) if n is not None else None

    @staticmethod
    def inputs(node: Mapping[str, Any]) -> Mapping[str, Any]:
        inp = node.get("inputs")
        return inp if isinstance(inp, Mapping) else {}

    def literal(self, value: object, kinds: tuple[type, ...], depth: int = 0) -> Any:
        """The constant behind `value`, following links into primitive/text nodes (their first matching input)."""
        if not is_link(value):
            if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
                return value
            return None
        found = self.node(value)
        if found is None or depth > _MAX_DEPTH:
            return None
        for v in self.inputs(found[1]).values():
            r = self.literal(v, kinds, depth + 1)
            if r is not None:
                return r
        return None

    def texts(self, link: object, role: str, depth: int = 0) -> list[str]:
        """Prompt texts of the CLIPTextEncode-like nodes feeding a conditioning link (through combine/ControlNet)."""
        found = self.node(link)
        if found is None or depth > _MAX_DEPTH:
            return []
        _, node = found
        inputs = self.inputs(node)
        if any(k in inputs for k in _TEXT_INPUTS) and "clip" in inputs:
            out: list[str] = []
            for k in _TEXT_INPUTS:
                t = self.literal(inputs.get(k), (str,)) if k in inputs else None
                if t is not None and t not in out:
                    out.append(t)
            return out
        if is_link(inputs.get(role)):
            return self.texts(inputs[role], role, depth + 1)
        out = []
        for k, v in inputs.items():
            if k.startswith("conditioning") and is_link(v):
                out += [t for t in self.texts(v, role, depth + 1) if t not in out]
        return out

    def model_chain(self, link: object) -> tuple[str | None, list[dict[str, Any]]]:
        """(checkpoint name, LoRAs in application order) found by walking a MODEL link upstream."""
        loras: list[dict[str, Any]] = []
        for _ in range(_MAX_DEPTH):
            found = self.node(link)
            if found is None:
                break
            inputs = self.inputs(found[1])
            for key in ("ckpt_name", "unet_name"):
                name = self.literal(inputs.get(key), (str,))
                if name is not None:
                    return name, loras[::-1]
            if "lora_name" in inputs:
                loras.append({"name": self.literal(inputs.get("lora_name"), (str,)),
                              "strength_model": self.literal(inputs.get("strength_model"), (int, float)),
                              "strength_clip": self.literal(inputs.get("strength_clip"), (int, float))})
            link = inputs.get("model")
        return None, loras[::-1]

    def latent_source(self, link: object) -> dict[str, Any]:
        """Size/batch of the EmptyLatentImage (or the LoadImage file) a latent input starts from."""
        for _ in range(_MAX_DEPTH):
            found = self.node(link)
            if found is None:
                return {}
            nid, node = found
            inputs = self.inputs(node)
            ct = node.get("class_type", "")
            if ct.startswith("Empty") and "width" in inputs:
                return {"width": self.literal(inputs.get("width"), (int,)),
                        "height": self.literal(inputs.get("height"), (int,)),
                        "batch_size": self.literal(inputs.get("batch_size"), (int,))}
            if ct.startswith("LoadImage"):
                return {"init_image": self.literal(inputs.get("image"), (str,))}
            nxt = next((inputs[k] for k in ("samples", "latent_image", "latent", "pixels", "image")
                        if is_link(inputs.get(k))), None)
            if nxt is None:
                return {}
            link = nxt
        return {}

    def upstream_sampler(self, link: object) -> str | None:
        """The id of the nearest sampler node upstream of a latent link, if any (a second pass)."""
        for _ in range(_MAX_DEPTH):
            found = self.node(link)
            if found is None:
                return None
            nid, node = found
            if node.get("class_type") in _SAMPLERS:
                return nid
            inputs = self.inputs(node)
            link = next((inputs[k] for k in ("samples", "latent_image", "latent", "pixels", "image")
                         if is_link(inputs.get(k))), None)
        return None


def _id_key(nid: str) -> tuple[int, str]:
    return (int(nid), nid) if nid.isdigit() else (1 << 62, nid)


def summarize_comfy_prompt(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of the first-pass sampler of an API prompt: positive, negative, seed, steps, cfg, sampler_name,
    scheduler, denoise, checkpoint, loras, width/height/batch_size or init_image, samplers (count), second_pass."""
    if not is_api_prompt(prompt):
        return {}
    g = _Graph(prompt)
    samplers = sorted((nid for nid, n in g.nodes.items() if n.get("class_type") in _SAMPLERS), key=_id_key)
    out: dict[str, Any] = {"samplers": len(samplers)}
    if not samplers:
        return out
    first = [s for s in samplers if g.upstream_sampler(g.inputs(g.nodes[s]).get("latent_image")) is None]
    main = (first or samplers)[0]
    node = g.nodes[main]
    inputs = g.inputs(node)
    out["sampler_node"] = main
    out["class_type"] = node["class_type"]
    out["positive"] = "\n".join(g.texts(inputs.get("positive"), "positive"))
    out["negative"] = "\n".join(g.texts(inputs.get("negative"), "negative"))
    out["seed"] = g.literal(inputs.get(SAMPLER_SEED_INPUT[node["class_type"]]), (int,))
    out["steps"] = g.literal(inputs.get("steps"), (int,))
    out["cfg"] = g.literal(inputs.get("cfg"), (int, float))
    out["sampler_name"] = g.literal(inputs.get("sampler_name"), (str,))
    out["scheduler"] = g.literal(inputs.get("scheduler"), (str,))
    out["denoise"] = g.literal(inputs.get("denoise"), (int, float)) if "denoise" in inputs else None
    out["checkpoint"], out["loras"] = g.model_chain(inputs.get("model"))
    out.update(g.latent_source(inputs.get("latent_image")))
    later = [s for s in samplers if g.upstream_sampler(g.inputs(g.nodes[s]).get("latent_image")) == main]
    if later:
        sec = g.inputs(g.nodes[later[0]])
        out["second_pass"] = {"steps": g.literal(sec.get("steps"), (int,)),
                              "denoise": g.literal(sec.get("denoise"), (int, float)),
                              "sampler_name": g.literal(sec.get("sampler_name"), (str,)),
                              "scheduler": g.literal(sec.get("scheduler"), (str,))}
    return {k: v for k, v in out.items() if v is not None}
