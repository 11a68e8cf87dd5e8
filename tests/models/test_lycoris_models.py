"""LyCORIS files as people download them, on tiny SD1.x and SDXL models: LoCon, LoHa, LoKr, full diff and norm
files (with Tucker and DoRA variants) written in the real kohya/LyCORIS key layouts, mixed with a plain LoRA in one
apply. Every model weight is checked against an independent float64 NumPy rebuild of the file's formula; restore
is bit-identical; an engine generation with LyCORIS tags reproduces through its embedded workflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from darkroom.models.lora import LoraPatcher, load_lora_file
from darkroom.models.lora_keys import text_encoder_lora_names, unet_lora_names
from darkroom.testing.lora_files import tiny_text_encoder, tiny_unet, write_kohya_lora


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _tucker(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    # wa (r, out), wb (r, in), t (r, r, kh, kw) → (out, in, kh, kw)
    return np.tensordot(np.tensordot(wa.T, t, axes=(1, 0)), wb, axes=(1, 0)).transpose(0, 3, 1, 2)


def _ref_delta(p: dict[str, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """(unscaled ΔW reshaped to `shape`, scale) for one module's tensors, by kind."""
    alpha = float(p["alpha"]) if "alpha" in p else None
    if "lora_up.weight" in p:
        up, down = p["lora_up.weight"], p["lora_down.weight"]
        up2 = up.reshape(up.shape[0], -1)
        if "lora_mid.weight" in p:
            d = _tucker(p["lora_mid.weight"], up2.T, down.reshape(down.shape[0], -1))
        else:
            d = up2 @ down.reshape(down.shape[0], -1)
        return d.reshape(shape), 1.0 if alpha is None else alpha / down.shape[0]
    if "hada_w1_a" in p:
        if "hada_t1" in p:
            m1 = _tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"])
            m2 = _tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])
        else:
            m1, m2 = p["hada_w1_a"] @ p["hada_w1_b"], p["hada_w2_a"] @ p["hada_w2_b"]
        return (m1 * m2).reshape(shape), 1.0 if alpha is None else alpha / p["hada_w1_b"].shape[0]
    if any(k.startswith("lokr_") for k in p):
        rank = None
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w1" not in p:
            rank = p["lokr_w1_b"].shape[0]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        else:
            rank = p["lokr_w2_b"].shape[0]
            w2 = _tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]) if "lokr_t2" in p else \
                p["lokr_w2_a"] @ p["lokr_w2_b"]
        if len(shape) == 4 and w2.ndim == 2:
            w2 = w2.reshape(w2.shape[0], shape[1] // w1.shape[1], *shape[2:])
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        d = np.kron(w1, w2)  # NumPy's N-d Kronecker product, not our 2-D flatten
        return d.reshape(shape), 1.0 if alpha is None or rank is None else alpha / rank
    if "diff" in p:
        return p["diff"].reshape(shape), 1.0
    return p["w_norm"].reshape(shape), 1.0


def _ref_apply(w: np.ndarray, p: dict[str, np.ndarray], mult: float) -> np.ndarray:
    d, scale = _ref_delta(p, w.shape)
    if "dora_scale" not in p:
        return w + mult * scale * d
    merged = w + scale * d
    mag = p["dora_scale"]
    if mag.shape[0] == w.shape[0] and mag.size == w.shape[0]:
        norm = np.sqrt((merged.reshape(w.shape[0], -1) ** 2).sum(1)).reshape(mag.shape)
    else:
        cols = merged.swapaxes(0, 1).reshape(w.shape[1], -1)
        norm = np.sqrt((cols ** 2).sum(1)).reshape(mag.shape)
    return w + mult * (merged * (mag / norm) - w)


def _modules_of(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for k, v in sd.items():
        base, _, part = k.partition(".")
        out.setdefault(base, {})[part] = _np(v)
    return out


def _resolve(name: str, unet, tes: list, names: dict) -> tuple[torch.nn.Module, str]:
    """kohya name → (module, side) via the model's own name tables."""
    for prefix, comp in (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te")):
        if name.startswith(prefix):
            path = names[comp][name[len(prefix):]]
            root = unet if comp == "unet" else tes[{"te": 0, "te1": 0, "te2": 1}[comp]]
            return root.get_submodule(path), comp
    raise AssertionError(name)


def _check_mixed(tmp_path: Path, unet, tes, files: list[tuple[dict, float, float]], naming: str) -> None:
    """Write each file, apply all in one call, compare every touched weight/bias with the reference, restore."""
    before = {id(p): p.detach().clone() for m in (unet, *tes) for p in m.parameters()}
    loras, sds = [], []
    for i, (kw, te_w, unet_w) in enumerate(files):
        path = write_kohya_lora(tmp_path / f"f{i}.safetensors", unet, tes, unet_naming=naming, seed=i, **kw)
        loras.append((load_lora_file(path), te_w, unet_w))
        sds.append(load_file(str(path)))
    names = {"unet": unet_lora_names(unet)}
    for comp, te in zip(("te", "te1", "te2") if len(tes) == 1 else ("te1", "te2"), tes):
        names[comp] = text_encoder_lora_names(te)
    if len(tes) == 1:
        names["te1"] = names["te"]
    patcher = LoraPatcher(unet, tes)
    report = patcher.apply(loras)
    assert not report.unmatched, report.unmatched
    assert report.matched == {lo.name: len(lo) for lo, _, _ in loras}
    expected: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
    for sd, (lo, te_w, unet_w) in zip(sds, loras):
        for name, parts in _modules_of(sd).items():
            module, comp = _resolve(name, unet, tes, names)
            mult = unet_w if comp == "unet" else te_w
            if mult == 0:
                continue
            param = module.weight
            weight_parts = {k: v for k, v in parts.items() if k not in ("diff_b", "b_norm")}
            if any(k not in ("alpha",) for k in weight_parts):
                cur = expected.get(id(param), (param, _np(before[id(param)])))[1]
                expected[id(param)] = (param, _ref_apply(cur, weight_parts, mult))
            for bkey in ("diff_b", "b_norm"):
                if bkey in parts:
                    cur = expected.get(id(module.bias), (module.bias, _np(before[id(module.bias)])))[1]
                    expected[id(module.bias)] = (module.bias, cur + mult * parts[bkey])
    assert len(expected) == report.patched_weights
    for param, ref in expected.values():
        np.testing.assert_allclose(_np(param), ref, rtol=1e-5, atol=2e-6)
    untouched = [p for m in (unet, *tes) for p in m.parameters() if id(p) not in expected]
    assert untouched and all(torch.equal(p, before[id(p)]) for p in untouched)
    patcher.restore()
    assert all(torch.equal(p, before[id(p)]) for m in (unet, *tes) for p in m.parameters())


def test_sd1_lycoris_kinds_mixed_with_plain_lora(tmp_path):
    torch.set_num_threads(2)
    unet, te = tiny_unet("sd1"), tiny_text_encoder()
    files = [
        (dict(algo="lora", targets="attention"), 0.8, 0.6),  # plain kohya LoRA
        (dict(algo="lora", targets="all", tucker=True), 1.0, -0.5),  # LoCon with Tucker lora_mid
        (dict(algo="loha", targets="all", tucker=True, dora=True), 0.7, 0.9),  # LoHa, Tucker convs, DoRA
        (dict(algo="lokr", targets="all", decompose_w2=True, tucker=True), 1.0, 1.2),  # LoKr, Tucker w2
        (dict(algo="lokr", targets="attention", decompose_w1=True, decompose_w2=False, dora="out"), 0.5, 0.4),
        (dict(algo="full", targets="attention", norms=True, std=0.01,
              select=lambda n: "attn1" in n or "norm" in n or "q_proj" in n), 1.0, 0.3),
    ]
    _check_mixed(tmp_path, unet, [te], files, "diffusers")


def test_sdxl_lycoris_ldm_names_with_two_text_encoders(tmp_path):
    torch.set_num_threads(2)
    unet = tiny_unet("sdxl")
    tes = [tiny_text_encoder(), tiny_text_encoder(projection=True, seed=1)]
    files = [
        (dict(algo="loha", targets="all", alpha=None), 1.0, 0.7),
        (dict(algo="lokr", targets="all", decompose_w1=True, lokr_factor=4), 0.6, 1.0),
        (dict(algo="lora", targets="attention", dora=True), 1.0, 0.5),
        (dict(algo="full", targets="attention", norms=True, std=0.01, select=lambda n: "attn2" in n or "norm" in n),
         0.0, 1.0),
    ]
    _check_mixed(tmp_path, unet, tes, files, "ldm")


def test_engine_generation_with_lycoris_tags_matches_its_workflow(tmp_path):
    """`<lora:loha:…>` and `<lora:lokr:…>` beside a plain LoRA change the image, and the embedded workflow
    (LoraLoader nodes over the same patcher) reproduces it exactly."""
    from PIL import Image

    from darkroom.engine import Engine, GenerationParams
    from darkroom.nodes import run_workflow
    from darkroom.settings import Settings
    from darkroom.testing.tiny import shared_tiny_checkpoint, shared_tiny_components

    torch.set_num_threads(2)
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "loras").mkdir()
    shutil.copy(shared_tiny_checkpoint("sd15"), root / "checkpoints" / "tiny.safetensors")
    comps = shared_tiny_components("sd15")
    unet, tes = comps["unet"], [comps["text_encoder"]]
    write_kohya_lora(root / "loras" / "plain.safetensors", unet, tes, seed=1, std=0.3)
    write_kohya_lora(root / "loras" / "loha.safetensors", unet, tes, algo="loha", targets="all", seed=2, std=0.4)
    write_kohya_lora(root / "loras" / "lokr.safetensors", unet, tes, algo="lokr", targets="all", seed=3, std=0.4)
    engine = Engine(Settings(models_dir=root, output_dir=root / "out", data_dir=root / "data"))
    base = GenerationParams(prompt="a red circle", width=64, height=64, steps=2, seed=5)
    plain = np.asarray(engine.generate(base).images[0])
    params = GenerationParams(prompt="a red circle <lora:plain:0.5> <lora:loha:0.8> <lora:lokr:1:0.6>", width=64,
                              height=64, steps=2, seed=5)
    result = engine.generate(params)
    ours = np.asarray(result.images[0])
    assert np.abs(ours.astype(int) - plain.astype(int)).mean() > 1.0
    assert engine.patcher(engine.load(None)).applied == [("plain", 0.5, 0.5), ("loha", 0.8, 0.8), ("lokr", 1.0, 0.6)]
    loaders = [n for n in result.workflows[0].values() if n["class_type"] == "LoraLoader"]
    assert [n["inputs"]["lora_name"] for n in loaders] == ["plain.safetensors", "loha.safetensors", "lokr.safetensors"]
    out = tmp_path / "out"
    run = run_workflow(result.workflows[0], engine=engine, input_dir=tmp_path / "in", output_dir=out,
                       temp_dir=tmp_path / "tmp")
    assert run.status == "success", run.error
    (png,) = list(out.rglob("*.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), ours)
