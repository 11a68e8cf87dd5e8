"""Train a canny ControlNet for darkroom's built-in default model (or any checkpoint trained the same way).

The base checkpoint (a single file, loaded by darkroom's own loader) stays frozen: UNet, text encoder and VAE. A
diffusers `ControlNetModel.from_unet(base UNet)` (its encoder half copied, zero convolutions at the outputs) learns
from the shapes dataset, with darkroom's own canny preprocessor applied to each training picture as the hint (the
same code the engine runs, at 64 px as "pixel perfect" picks for a 64×64 picture, sometimes at A1111's default
512 px then fitted back), so training and inference hints match. Captions lose their position phrases most of the
time, so the map and not the text has to decide where a shape goes; 10% are dropped for classifier-free guidance.
Loss, timestep sampling and latent sampling are the base model's (`train_default_model.py`): ε-prediction,
min-SNR × capped 1/ᾱ weighting, shape cells weighted up, half the batch at high noise. EMA weights are saved and
exported as one .safetensors in the original ControlNet layout (`control_model.*`, as A1111/ComfyUI files), the
config fields the shapes cannot tell in the `darkroom.config` metadata.

  HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python training/train_default_controlnet.py --work /tmp/dr-cn
  (--base FILE: another base checkpoint; the output goes beside the built-in model, named after the base:
   darkroom-shapes-v3.safetensors → darkroom-shapes-v3-canny.safetensors; --out FILE to choose)

Every --eval-every steps the EMA ControlNet is exported and measured through the engine
(`training/measure_control.py`); training stops once the placement rate reaches --stop-at.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

import torch  # noqa: E402  (OMP_WAIT_POLICY=PASSIVE when other jobs share the cores: see train_default_model.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))

from train_default_model import TRAIN_STEPS, alphas_cumprod, build_data, eps_loss, latent_foreground  # noqa: E402
from train_default_model import log, lr_at, tokenize  # noqa: E402

from darkroom.shapes.dataset import IMAGE_SIZE, POSITIONS, SceneLabel, caption_for  # noqa: E402

#: Hint encoder widths: four levels, three stride-2 steps, so a 64×64 hint meets the 8×8 latent (the released SD1.5
#: ControlNets use (16, 32, 96, 256) for 512 → 64).
COND_CHANNELS = (16, 32, 64, 128)
SUFFIX = "-canny"


def default_base() -> Path:
    """The built-in default model's checkpoint file (the one `darkroom.default_model` names, if several ship)."""
    from darkroom import default_model
    from darkroom.models.registry import default_builtin_checkpoints

    found = default_builtin_checkpoints()
    if not found:
        raise SystemExit("no built-in default model found; pass --base FILE")
    return next((p for p in found if p.name == default_model.FILE_NAME), found[0])


def default_out(base: Path) -> Path:
    """Where the exported ControlNet goes: beside the built-in model, named after the base (`…-canny`)."""
    return ROOT / "src" / "darkroom" / "default_model" / f"{base.stem}{SUFFIX}.safetensors"


# --- data -----------------------------------------------------------------------------------------------------


def _fit_edges(edges: np.ndarray) -> np.ndarray:
    """A (H, W) 0/255 edge map → 64×64 as `fit_to_size` fits a binary map (area resize, then Otsu), without its
    slow colour count; `canny_hints` checks it against `fit_to_size`."""
    import cv2

    small = cv2.resize(edges, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    if edges.min() == edges.max():
        return small
    return cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def canny_hints(images_u8: np.ndarray, check: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Canny maps of (N, 64, 64, 3) uint8 pictures by darkroom's preprocessor: at 64 px, and at A1111's default
    512 px fitted back to 64 → two (N, 64, 64) uint8 arrays (255 = edge)."""
    from darkroom.control.preprocess import fit_to_size, preprocess

    at64, at512 = [], []
    for i, img in enumerate(images_u8):
        at64.append((preprocess("canny", img, resolution=IMAGE_SIZE)[:, :, 0] * 255).round().astype(np.uint8))
        big = preprocess("canny", img)  # (512, 512, 3) in {0, 1}
        at512.append(_fit_edges((big[:, :, 0] * 255).astype(np.uint8)))
        if i < check:
            exact = (fit_to_size(big, IMAGE_SIZE, IMAGE_SIZE)[:, :, 0] * 255).round().astype(np.uint8)
            if not np.array_equal(exact, at512[-1]):
                raise SystemExit(f"the fast map fitting differs from fit_to_size on image {i}")
    return np.stack(at64), np.stack(at512)


def positionless_captions(labels: list, k: int, seed: int) -> list[list[str]]:
    """`k` captions per image that never say where a shape is (background 85%, size 60% of the time)."""
    out = []
    for i, lab in enumerate(labels):
        rng = random.Random(seed * 1_000_003 + i)
        caps = []
        for _ in range(k):
            mentions = {m for m, p in (("background", 0.85), ("size", 0.6)) if rng.random() < p}
            caps.append(caption_for(rng, SceneLabel(lab.background, lab.shapes, frozenset(mentions))))
        out.append(caps)
    return out


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of (N, 3, 64, 64) images in [-1, 1] → two (N, 4, 8, 8) tensors (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(images[i : i + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


# --- export ---------------------------------------------------------------------------------------------------


def export_controlnet(cn, out: Path, *, info: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write a diffusers ControlNetModel as one .safetensors in the original layout (`control_model.*` keys), with
    the config fields that its shapes and the SD1.x template cannot tell under `darkroom.config`."""
    from safetensors.torch import save_file

    from darkroom.control.convert import LDM_PREFIX, controlnet_diffusers_to_ldm
    from darkroom.control.loader import infer_controlnet_config
    from darkroom.models.config import METADATA_KEY
    from darkroom.models.family import Family

    sd = {k: v.detach() for k, v in cn.state_dict().items()}
    inferred = json.loads(json.dumps(infer_controlnet_config({k: tuple(v.shape) for k, v in sd.items()}, Family.SD1)))
    actual = json.loads(json.dumps({k: v for k, v in cn.config.items() if not k.startswith("_")}))
    overrides = {k: v for k, v in actual.items() if k in inferred and inferred[k] != v}
    tensors = {LDM_PREFIX + k: v.to(dtype).contiguous().clone() for k, v in controlnet_diffusers_to_ldm(sd).items()}
    meta = {
        "format": "pt",
        METADATA_KEY: json.dumps({"controlnet": overrides}, sort_keys=True),
        "modelspec.title": f"{out.stem}",
        "modelspec.architecture": "stable-diffusion-v1/control",
        "modelspec.description": "canny ControlNet for darkroom's built-in shapes model (docs/default-model.md)",
        "modelspec.resolution": f"{IMAGE_SIZE}x{IMAGE_SIZE}",
    }
    if info:
        meta["darkroom.training"] = json.dumps(info, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


@torch.no_grad()
def check_export(cn, path: Path) -> float:
    """Load the exported file through darkroom's ControlNet loader and return the largest residual difference."""
    from darkroom.control.loader import load_control_model

    loaded = load_control_model(path)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, cn.config.cross_attention_dim, generator=g)
    hint = (torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) > 0.9).float()
    t = torch.tensor([900, 100])
    d0, m0 = cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
    d1, m1 = loaded.residuals(x, t, ctx, hint)
    return max(float((a - b).abs().max()) for a, b in zip([*d0, m0], [*d1, m1]))


# --- training -------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> None:
    from diffusers import ControlNetModel

    from darkroom.models.loader import load_checkpoint

    work: Path = args.work
    logf = work / "train.log"
    base = load_checkpoint(args.base, dtype=torch.float32)
    unet, vae, te = base.unet.eval(), base.vae.eval(), base.text_encoders[0].eval()
    for m in (unet, vae, te):
        m.requires_grad_(False)
    scale = float(vae.config.scaling_factor)

    t0 = time.time()
    images, captions, labels = build_data(args.n_images, args.n_alt_captions)  # (N, 3, 64, 64) in [-1, 1]
    images_u8 = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    h64, h512 = canny_hints(images_u8)
    hints = torch.from_numpy(np.stack([h64, h512], 1))  # (N, 2, 64, 64) uint8
    nopos = positionless_captions(labels, args.n_alt_captions + 1, args.seed)
    n, k = len(images), len(captions[0])
    ids = tokenize([c for cs in captions for c in cs]).view(n, k, 77)  # (N, k, 77)
    ids_nopos = tokenize([c for cs in nopos for c in cs]).view(n, k, 77)
    empty_ids = tokenize([""])[0]
    lat_mean, lat_std = encode_latents(vae, images)  # (N, 4, 8, 8)
    fg = latent_foreground(images, labels)  # (N, 1, 8, 8)
    del images
    log(f"data: {n} images, canny maps, {k}+{k} captions (e.g. {nopos[0][0]!r}), latents in {time.time() - t0:.0f}s",
        logf)

    torch.manual_seed(args.seed)
    if args.resume:
        cn = ControlNetModel.from_pretrained(args.resume)
    else:
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
    cn.train()
    ema = copy.deepcopy(cn).eval().requires_grad_(False)
    opt = torch.optim.AdamW(cn.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    acp = alphas_cumprod()
    g = torch.Generator().manual_seed(args.seed + 1)
    log(f"controlnet: {sum(p.numel() for p in cn.parameters()) / 1e6:.2f}M params (base UNet "
        f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M frozen), {args.steps} steps of {args.batch}", logf)

    t0, cpu0, ema_loss = time.time(), time.process_time(), None
    for step in range(args.steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.steps, args.lr, warmup=args.warmup)
        b = args.batch
        idx = torch.randint(0, n, (b,), generator=g)
        which = torch.randint(0, k, (b,), generator=g)
        no_pos = torch.rand(b, generator=g) < args.positionless
        tokens = torch.where(no_pos[:, None], ids_nopos[idx, which], ids[idx, which])  # (B, 77)
        tokens[torch.rand(b, generator=g) < args.caption_dropout] = empty_ids
        res512 = (torch.rand(b, generator=g) < args.hint512).long()
        hint = (hints[idx, res512].float() / 255.0)[:, None].expand(-1, 3, -1, -1)  # (B, 3, 64, 64) in [0, 1]
        x0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale  # (B, 4, 8, 8)
        t = torch.randint(0, TRAIN_STEPS, (b,), generator=g)
        high = torch.randint(args.high_t_from, TRAIN_STEPS, (b,), generator=g)
        t = torch.where(torch.arange(b) % 2 == 1, high, t)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad():
            cond = te(tokens).last_hidden_state  # (B, 77, C)
        down, mid = cn(xt, t, encoder_hidden_states=cond, controlnet_cond=hint, return_dict=False)
        pred = unet(xt, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = eps_loss(pred, eps, t, fg[idx], args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ps, pd in zip(cn.parameters(), ema.parameters()):
                pd.lerp_(ps, 1 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        done = step + 1
        if step % 50 == 0 or done == args.steps:
            log(f"step {step} loss {ema_loss:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s, "
                f"cpu {time.process_time() - cpu0:.0f}s)", logf)
        if done % args.save_every == 0 or done == args.steps:
            ema.save_pretrained(work / f"step_{done:05d}")
        if args.eval_every and (done % args.eval_every == 0 or done == args.steps):
            rate = probe(args, ema, done, logf)
            if rate >= args.stop_at:
                ema.save_pretrained(work / f"step_{done:05d}")
                log(f"placement {rate:.0%} ≥ {args.stop_at:.0%}: stopping at step {done}", logf)
                break
    log(f"training done in {time.time() - t0:.0f}s (cpu {time.process_time() - cpu0:.0f}s)", logf)
    final = export(args, ema, done)
    log(f"exported {final} (EMA of step {done})", logf)


def export(args: argparse.Namespace, ema, step: int, out: Path | None = None) -> Path:
    """Export the EMA ControlNet (to --out unless `out` is given) and check it loads back the same."""
    info = {"base": args.base.name, "step": step,
            "args": {k: str(v) for k, v in vars(args).items() if k not in ("work", "out", "base")}}
    path = export_controlnet(ema, out or args.out, info=info)
    err = check_export(ema, path)
    if err > 0.05:
        raise SystemExit(f"{path} loads back with residuals off by {err:.3g}")
    return path


def probe(args: argparse.Namespace, ema, step: int, logf: Path) -> float:
    """Placement rate of the EMA ControlNet through the engine on a small case set (ready canny maps)."""
    import measure_control as mc

    path = export(args, ema, step, args.work / "probe.safetensors")
    threads = torch.get_num_threads()
    if not hasattr(probe, "engine"):
        probe.engine = mc.make_engine(1)
    cases = mc.control_cases(args.eval_positions, seeds=1, first_seed=500)
    t0 = time.time()
    torch.set_num_threads(1)  # one-image sampling gains nothing from a second thread on a busy machine
    rate = mc.placement_rate(probe.engine, cases, controlnet=path, base=args.base, mode="map")
    torch.set_num_threads(threads)
    log(f"probe at step {step}: {rate:.0%} of {len(cases)} placed ({time.time() - t0:.0f}s)", logf)
    return rate


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the log and saved steps")
    ap.add_argument("--base", type=Path, default=None, help="single-file base checkpoint (default: built-in model)")
    ap.add_argument("--out", type=Path, default=None, help="exported file (default: <base>-canny.safetensors beside "
                                                             "the built-in model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=8000)
    ap.add_argument("--n-alt-captions", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--positionless", type=float, default=0.7, help="share of captions without position words")
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--hint512", type=float, default=0.25, help="share of hints made at 512 px and fitted to 64")
    ap.add_argument("--high-t-from", type=int, default=400, help="half of each batch draws t from [this, 1000)")
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--high-noise-weight", type=float, default=20.0)
    ap.add_argument("--fg-weight", type=float, default=4.0)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=250, help="probe the placement rate (0: never)")
    ap.add_argument("--eval-positions", nargs="+", default=list(POSITIONS), help="probe cases: 4 kinds at each")
    ap.add_argument("--stop-at", type=float, default=0.97, help="stop once the probe's rate reaches this (>1: never)")
    ap.add_argument("--resume", type=Path, default=None, help="a saved step_XXXXX folder to continue from")
    args = ap.parse_args(argv)

    args.base = (args.base or default_base()).resolve()
    args.out = args.out or default_out(args.base)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    train(args)


if __name__ == "__main__":
    main()
