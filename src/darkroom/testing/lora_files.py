"""Test builders: random LoRA files in the real kohya/A1111 (SD1 diffusers naming, SDXL LDM naming), LyCORIS
(LoCon, LoHa, LoKr, full diff, norm; DoRA) and PEFT layouts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from darkroom.models.lora_keys import diffusers_to_ldm_unet, unwrap, weighted_modules

#: Linear/1×1 layers kohya's default LoRA trains inside a UNet transformer block.
_ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
#: Extra UNet layers a LoCon ("conv_dim") LoRA trains.
_CONV_LEAVES = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
#: CLIP layers kohya trains.
_TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

Targets = Literal["attention", "all"]
#: Module kinds the kohya-style writer can produce: LoRA/LoCon (`lora_up/down[/mid]`), LyCORIS LoHa (`hada_*`),
#: LoKr (`lokr_*`) and full diff (`diff`, `diff_b`).
Algo = Literal["lora", "loha", "lokr", "full"]
DoraLayout = Literal["in", "out"]


def _is_layer(m: torch.nn.Module) -> bool:
    return isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))


def unet_targets(unet: torch.nn.Module, targets: Targets = "attention") -> list[str]:
    """diffusers module paths a kohya LoRA (`attention`) or LoCon (`all`) trains in this UNet."""
    leaves = _ATTN_LEAVES + (_CONV_LEAVES if targets == "all" else ())
    out = []
    for path, m in weighted_modules(unet):
        if not _is_layer(m):
            continue
        in_attn = ".attentions." in f".{path}"
        if (in_attn and path.endswith(_ATTN_LEAVES)) or (targets == "all" and path.endswith(leaves) and not in_attn):
            out.append(path)
    return out


def text_encoder_targets(text_encoder: torch.nn.Module) -> list[str]:
    """Module paths of the CLIP attention/MLP linears a kohya LoRA trains."""
    return [p for p, m in weighted_modules(text_encoder) if isinstance(m, torch.nn.Linear) and p.endswith(_TE_LEAVES)
            and ".layers." in p]


def _rand(shape: Sequence[int], g: torch.Generator, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """LoKr's split of a dimension into (m, n), m ≤ n, m·n = dim: `factor` itself if it divides dim, else the
    largest divisor ≤ √dim (and ≤ factor when factor > 0)."""
    if factor > 0 and dim % factor == 0:
        m = min(factor, dim // factor)
        return m, dim // m
    limit = math.isqrt(dim) if factor <= 0 else min(math.isqrt(dim), factor)
    m = max(d for d in range(1, limit + 1) if dim % d == 0)
    return m, dim // m


def _dora_scale(weight: torch.Tensor, g: torch.Generator, layout: DoraLayout) -> torch.Tensor:
    """A DoRA magnitude near the weight's own norms: (1, in, 1, 1)/(1, in) per input column, or (out, 1, …)."""
    w = weight.detach().float()
    if layout == "out":
        norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))
    else:
        in_f = w.shape[1]
        norm = w.transpose(0, 1).reshape(in_f, -1).norm(dim=1).reshape(1, in_f, *[1] * (w.dim() - 2))
    return norm * (1 + _rand(norm.shape, g, 0.1))


def _module_tensors(weight: torch.Tensor, r: int, g: torch.Generator, *, tucker: bool, dora: bool,
                    std: float) -> dict[str, torch.Tensor]:
    """up/down[/mid][/dora_scale] for one module with rank r (float32)."""
    out_f, in_f = weight.shape[0], weight.shape[1]
    t: dict[str, torch.Tensor] = {}
    if weight.dim() == 4:
        kh, kw = weight.shape[2], weight.shape[3]
        if tucker and (kh, kw) != (1, 1):
            t["lora_down.weight"] = _rand((r, in_f, 1, 1), g, std)
            t["lora_mid.weight"] = _rand((r, r, kh, kw), g, std)
        else:
            t["lora_down.weight"] = _rand((r, in_f, kh, kw), g, std)
        t["lora_up.weight"] = _rand((out_f, r, 1, 1), g, std)
    else:
        t["lora_down.weight"] = _rand((r, in_f), g, std)
        t["lora_up.weight"] = _rand((out_f, r), g, std)
    if dora:
        # LyCORIS default layout: magnitude per input column, shape (1, in, 1, 1) / (1, in)
        t["dora_scale"] = _dora_scale(weight, g, "in")
    return t


def loha_tensors(weight: torch.Tensor, r: int, g: torch.Generator, *, tucker: bool = False,
                 std: float = 0.1) -> dict[str, torch.Tensor]:
    """LyCORIS LoHa tensors for one module (float32): hada_w{1,2}_{a,b}, plus hada_t{1,2} for a Tucker k×k conv."""
    out_f, in_f = int(weight.shape[0]), int(weight.shape[1])
    k = tuple(int(s) for s in weight.shape[2:])
    t: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        if tucker and len(k) == 2 and k != (1, 1):
            t[f"hada_w{i}_a"] = _rand((r, out_f), g, std)
            t[f"hada_w{i}_b"] = _rand((r, in_f), g, std)
            t[f"hada_t{i}"] = _rand((r, r, *k), g, std)
        else:
            t[f"hada_w{i}_a"] = _rand((out_f, r), g, std)
            t[f"hada_w{i}_b"] = _rand((r, int(weight[0].numel())), g, std)
    return t


def lokr_tensors(weight: torch.Tensor, r: int, g: torch.Generator, *, factor: int = -1, decompose_w1: bool = False,
                 decompose_w2: bool = True, tucker: bool = False, std: float = 0.1) -> dict[str, torch.Tensor]:
    """LyCORIS LoKr tensors for one module (float32): w1 (out_m, in_m) ⊗ w2 (out_n, in_n[, kh, kw]), each whole
    (`lokr_w1`) or low-rank (`lokr_w1_a/b`); w2 of a k×k conv may be Tucker (`lokr_t2`)."""
    out_m, out_n = factorization(int(weight.shape[0]), factor)
    in_m, in_n = factorization(int(weight.shape[1]), factor)
    k = tuple(int(s) for s in weight.shape[2:])
    t: dict[str, torch.Tensor] = {}
    if decompose_w1:
        t["lokr_w1_a"], t["lokr_w1_b"] = _rand((out_m, r), g, std), _rand((r, in_m), g, std)
    else:
        t["lokr_w1"] = _rand((out_m, in_m), g, std)
    if not decompose_w2:
        t["lokr_w2"] = _rand((out_n, in_n, *k), g, std)
    elif tucker and len(k) == 2 and k != (1, 1):
        t["lokr_w2_a"], t["lokr_w2_b"] = _rand((r, out_n), g, std), _rand((r, in_n), g, std)
        t["lokr_t2"] = _rand((r, r, *k), g, std)
    else:
        t["lokr_w2_a"] = _rand((out_n, r), g, std)
        t["lokr_w2_b"] = _rand((r, in_n * (k[0] * k[1] if k else 1)), g, std)
    return t


def full_diff_tensors(module: torch.nn.Module, g: torch.Generator, std: float = 0.01) -> dict[str, torch.Tensor]:
    """LyCORIS `full` tensors for one module: `diff` (weight shape) and `diff_b` (bias shape, if it has a bias)."""
    t = {"diff": _rand(module.weight.shape, g, std)}
    if getattr(module, "bias", None) is not None:
        t["diff_b"] = _rand(module.bias.shape, g, std)
    return t


def _norm_targets(root: torch.nn.Module, paths: Sequence[str]) -> list[str]:
    """GroupNorm/LayerNorm modules inside the blocks that hold these targets (what LyCORIS `train_norm` adds)."""
    out = []
    for path, m in weighted_modules(root):
        parent = path.rpartition(".")[0]
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and parent and \
                any(t.startswith(parent + ".") for t in paths):
            out.append(path)
    return out


def kohya_lora_state_dict(
    unet: torch.nn.Module | None = None,
    text_encoders: Sequence[torch.nn.Module] = (),
    *,
    unet_naming: Literal["diffusers", "ldm"] = "diffusers",
    te_prefixes: Sequence[str] | None = None,
    targets: Targets = "attention",
    algo: Algo = "lora",
    rank: int = 4,
    vary_rank: bool = True,
    alpha: float | Literal["random"] | None = "random",
    tucker: bool = False,
    dora: bool | DoraLayout = False,
    lokr_factor: int = -1,
    decompose_w1: bool = False,
    decompose_w2: bool = True,
    norms: bool = False,
    select: Callable[[str], bool] | None = None,
    seed: int = 0,
    std: float = 0.1,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """A random kohya-format LoRA / LyCORIS state dict for these modules.

    unet_naming: "diffusers" = kohya SD1.x/SD2.x names (`lora_unet_down_blocks_0_…`), "ldm" = kohya SDXL names
    (`lora_unet_input_blocks_4_1_…`). te_prefixes default to `lora_te` (one encoder) or `lora_te1`/`lora_te2`.
    Ranks are drawn from 1..rank per module when vary_rank; alpha "random" draws from [0.5, rank].
    algo: "lora" (LoRA/LoCon; `tucker` adds `lora_mid`), "loha" (`tucker` adds `hada_t1/t2`), "lokr" (factor split
    by `lokr_factor`, `decompose_w1/w2`, `tucker` adds `lokr_t2`) or "full" (`diff`/`diff_b`, no alpha).
    dora: add `dora_scale` (True/"in": per input column as LyCORIS/kohya; "out": per output row).
    norms: also write `w_norm`/`b_norm` for the norm layers next to the targets (LyCORIS `train_norm`).
    `select(kohya_name)` can drop targets.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    named: list[tuple[str, torch.nn.Module]] = []
    norm_named: list[tuple[str, torch.nn.Module]] = []
    if unet is not None:
        unet = unwrap(unet)
        ldm = diffusers_to_ldm_unet(unet) if unet_naming == "ldm" else {}
        paths = unet_targets(unet, targets)
        for group, out in ((paths, named), (_norm_targets(unet, paths) if norms else [], norm_named)):
            for path in group:
                name = ldm[path] if unet_naming == "ldm" else path
                out.append(("lora_unet_" + name.replace(".", "_"), unet.get_submodule(path)))
    if te_prefixes is None:
        te_prefixes = ["lora_te"] if len(text_encoders) == 1 else [f"lora_te{i + 1}" for i in range(len(text_encoders))]
    for prefix, te in zip(te_prefixes, text_encoders):
        te = unwrap(te)
        paths = text_encoder_targets(te)
        for group, out in ((paths, named), (_norm_targets(te, paths) if norms else [], norm_named)):
            for path in group:
                full = path if path.startswith("text_model.") else "text_model." + path  # kohya always writes text_model_
                out.append((f"{prefix}_" + full.replace(".", "_"), te.get_submodule(path)))
    dora_layout: DoraLayout | None = ("in" if dora is True else dora) or None  # type: ignore[assignment]
    for name, module in named:
        if select is not None and not select(name):
            continue
        weight = module.weight
        r = int(torch.randint(1, rank + 1, (1,), generator=g)) if vary_rank else rank
        if algo == "lora":
            tensors = _module_tensors(weight, r, g, tucker=tucker, dora=False, std=std)
        elif algo == "loha":
            tensors = loha_tensors(weight, r, g, tucker=tucker, std=std)
        elif algo == "lokr":
            tensors = lokr_tensors(weight, r, g, factor=lokr_factor, decompose_w1=decompose_w1,
                                   decompose_w2=decompose_w2, tucker=tucker, std=std)
        elif algo == "full":
            tensors = full_diff_tensors(module, g, std=std)
        else:
            raise ValueError(f"unknown algo {algo!r}")
        if dora_layout is not None and algo != "full":
            tensors["dora_scale"] = _dora_scale(weight, g, dora_layout)
        for part, t in tensors.items():
            sd[f"{name}.{part}"] = t.to(dtype)
        if alpha is not None and algo != "full":
            a = float(torch.empty(()).uniform_(0.5, float(rank), generator=g)) if alpha == "random" else float(alpha)
            sd[f"{name}.alpha"] = torch.tensor(a).to(dtype)
    for name, module in norm_named:
        if select is not None and not select(name):
            continue
        sd[f"{name}.w_norm"] = _rand(module.weight.shape, g, std).to(dtype)
        if getattr(module, "bias", None) is not None:
            sd[f"{name}.b_norm"] = _rand(module.bias.shape, g, std).to(dtype)
    return sd


def write_kohya_lora(path: str | Path, unet: torch.nn.Module | None = None,
                     text_encoders: Sequence[torch.nn.Module] = (), *, metadata: dict[str, str] | None = None,
                     **kwargs) -> Path:
    """Write `kohya_lora_state_dict(...)` to a .safetensors file (with kohya-style `ss_*` metadata if given)."""
    from safetensors.torch import save_file

    p = Path(path)
    sd = kohya_lora_state_dict(unet, text_encoders, **kwargs)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p), metadata=metadata)
    return p


def peft_lora_state_dict(unet: torch.nn.Module | None = None, text_encoders: Sequence[torch.nn.Module] = (), *,
                         rank: int = 4, alpha: float | None = None, seed: int = 0, std: float = 0.1,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random diffusers/PEFT-format LoRA (`unet.<path>.lora_A.weight` / `lora_B`, optional `.alpha`)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    groups: list[tuple[str, torch.nn.Module, list[str]]] = []
    if unet is not None:
        groups.append(("unet", unwrap(unet), unet_targets(unwrap(unet), "attention")))
    for i, te in enumerate(text_encoders):
        groups.append(("text_encoder" if i == 0 else f"text_encoder_{i + 1}", unwrap(te),
                       text_encoder_targets(unwrap(te))))
    for prefix, root, paths in groups:
        for path in paths:
            w = root.get_submodule(path).weight
            out_f, in_f = w.shape[0], w[0].numel()
            sd[f"{prefix}.{path}.lora_A.weight"] = _rand((rank, in_f), g, std).reshape(rank, *w.shape[1:]).to(dtype)
            sd[f"{prefix}.{path}.lora_B.weight"] = _rand((out_f, rank), g, std).reshape(
                out_f, rank, *[1] * (w.dim() - 2)).to(dtype)
            if alpha is not None:
                sd[f"{prefix}.{path}.alpha"] = torch.tensor(float(alpha))
    return sd


# -- tiny models in the real SD1.x / SDXL block layouts (CPU, random weights, < 0.5 s to build) ----------------------

TINY_TE_HIDDEN = 32


def tiny_text_encoder(projection: bool = False, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """A tiny CLIPTextModel (SD1 / SDXL TE1) or CLIPTextModelWithProjection (SDXL TE2): hidden 32, vocab 49408."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=TINY_TE_HIDDEN, intermediate_size=37, num_hidden_layers=layers,
                         num_attention_heads=4, vocab_size=49408, max_position_embeddings=77,
                         projection_dim=TINY_TE_HIDDEN)
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    return model.eval()


def tiny_unet(layout: Literal["sd1", "sdxl"] = "sd1", seed: int = 0) -> torch.nn.Module:
    """A tiny UNet2DConditionModel: "sd1" = SD1 blocks (cross-attn first, conv 1×1 proj_in, context 32),
    "sdxl" = SDXL blocks (plain first block, 2 layers per block, linear proj, text_time add_embedding, context 64)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if layout == "sd1":
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_TE_HIDDEN, attention_head_dim=4)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 1), attention_head_dim=(2, 4, 4),
            cross_attention_dim=2 * TINY_TE_HIDDEN, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + TINY_TE_HIDDEN)
    return unet.eval()
