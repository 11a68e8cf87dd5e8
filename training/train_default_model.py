"""Train darkroom's built-in default model (a tiny SD1-style text-to-image model) on the procedural shapes dataset.

Stages (all CPU, reproducible from --seed; default: vae,latents,text,unet):
  vae      – train a small AutoencoderKL on 64×64 dataset images (8× downsampling → (4, 8, 8) latents)
  latents  – encode the dataset once (posterior mean and std) and set `scaling_factor` = 1 / std(latents)
  decoder  – (v2 only) fine-tune the decoder with the encoder frozen
  text     – pretrain the CLIP text encoder contrastively against the latents (with kind-swapped hard negatives)
             and against other wordings of the same picture
  unet     – train UNet2DConditionModel (eps-prediction, SD's scaled-linear betas, 10% caption dropout for
             classifier-free guidance, EMA weights) against the frozen pretrained text encoder; without the text
             stage (or with --train-text) the text encoder is trained jointly with the UNet, as v1 and v2 were
Then training/export_default_model.py writes the EMA weights as one .safetensors (LDM/A1111 key layout, configs in
the metadata).

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv/bin/python training/train_default_model.py --work /tmp/dr-train \
      --text-steps 300 --cycles 1000,1000,1000,1000 --save-every 1000
(the shipped darkroom-shapes-v3, about 44 minutes on 2 CPU cores; see docs/default-model.md)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

# On a quiet machine OpenMP's default (spin a while, then sleep) is fastest: PASSIVE made UNet steps 0.46 → 0.60 s. When
# other jobs share the cores, run with OMP_WAIT_POLICY=PASSIVE: spinning threads then slow everything down 5-10×.
import torch  # noqa: E402
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from darkroom.conditioning.tokenizer import clip_tokenizer  # noqa: E402
from darkroom.shapes.dataset import _SHAPE_WORDS, alternative_captions, make_dataset  # noqa: E402

# --- architecture ---------------------------------------------------------------------------------------------

TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",  # as CLIP ViT-L/14 (SD1.x)
    projection_dim=128,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 128, 128],
    layers_per_block=1,
    latent_channels=4,
    # one group: with 16 groups the 16-channel top level was normalised channel by channel, so a flat patch came out
    # of every GroupNorm as zeros whatever its colour (the decoder learned to lean on the zero padding at the borders
    # instead: v2's light frame). Measured, 1,000 crop steps: reconstruction loss 0.186 → 0.122, large-shape kinds
    # kept 25% → 57%.
    norm_num_groups=1,
    sample_size=64,
    act_fn="silu",
)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[64, 128, 192],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=128,
    attention_head_dim=4,  # diffusers' legacy name: number of heads, as in SD1's config (8 there)
    # 8 groups (8-24 channels each, as SD's 320/32): with 32, the 64-channel levels had two channels per group, and
    # at 800 UNet steps background / colour / position came out 0.83 / 0.64 / 0.75 against 0.94 / 0.92 / 0.92
    norm_num_groups=8,
    use_linear_projection=False,  # SD1.x: 1×1 conv proj_in / proj_out
)

BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule: betas = linspace(√β0, √β1, 1000)²."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()  # (1000,)


def log(msg: str, path: Path | None = None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# --- data -----------------------------------------------------------------------------------------------------


def build_data(n: int, n_alt: int) -> tuple[torch.Tensor, list[list[str]], list]:
    """(n, 3, 64, 64) images in [-1, 1], per image its captions (1 + n_alt wordings), and the scene labels."""
    samples = make_dataset(n)
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captions = [[s.caption, *alternative_captions(s, i, n_alt)] for i, s in enumerate(samples)]
    return images, captions, [s.label for s in samples]


def tokenize(captions: list[str]) -> torch.Tensor:
    """CLIP ids padded to 77 with <|endoftext|>, as SD1.x does. → (N, 77) int64"""
    tok = clip_tokenizer()
    return torch.tensor(tok(captions, padding="max_length", max_length=77, truncation=True).input_ids)


# --- stage 1: VAE ---------------------------------------------------------------------------------------------


def _crop_batch(images: torch.Tensor, fg: torch.Tensor, centres: list[list[tuple[float, float]]], idx: torch.Tensor,
                size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """size×size crops around a random shape of each chosen image (± jitter), clamped inside the image."""
    xs, ms = [], []
    full = images.shape[-1]
    for i in idx.tolist():
        cs = centres[i]
        cx, cy = cs[int(torch.randint(0, len(cs), (1,), generator=g))]
        jx, jy = (torch.rand(2, generator=g) * 2 - 1) * (size / 3)
        x0 = int(min(max(round(cx + float(jx) - size / 2), 0), full - size)) // 8 * 8
        y0 = int(min(max(round(cy + float(jy) - size / 2), 0), full - size)) // 8 * 8
        xs.append(images[i, :, y0 : y0 + size, x0 : x0 + size])
        ms.append(fg[i, :, y0 : y0 + size, x0 : x0 + size])
    return torch.stack(xs), torch.stack(ms)


def train_vae(args: argparse.Namespace, images: torch.Tensor, labels: list, work: Path, logf: Path) -> None:
    """Train the KL autoencoder: foreground-weighted L1+L2, first on 32×32 crops around shapes, then on whole images."""
    from diffusers import AutoencoderKL

    from darkroom.shapes.dataset import COLOURS

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**{**VAE_CONFIG, "norm_num_groups": args.vae_groups})
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    bg = torch.tensor([COLOURS[lab.background] for lab in labels], dtype=torch.float32) / 127.5 - 1.0  # (N, 3)
    fg = ((images - bg[:, :, None, None]).abs().amax(1, keepdim=True) > 0.05).float()  # (N, 1, 64, 64)
    centres = [[s.centre for s in lab.shapes] for lab in labels]
    total = args.vae_steps + args.vae_full_steps
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, {args.vae_steps} crop steps + "
        f"{args.vae_full_steps} full-size steps", logf)
    t0 = time.time()
    for step in range(total):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, total, args.vae_lr)
        if step < args.vae_steps:
            idx = torch.randint(0, len(images), (args.vae_batch,), generator=g)
            x, m = _crop_batch(images, fg, centres, idx, 32, g)  # (B, 3, 32, 32)
        else:
            idx = torch.randint(0, len(images), (args.vae_batch // 4,), generator=g)
            x, m = images[idx], fg[idx]  # (B/4, 3, 64, 64)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        w = 1.0 + args.vae_fg_weight * m  # shapes are a small part of each picture: weigh their pixels up
        rec_loss = ((rec - x).abs() + (rec - x).pow(2)).mul(w).sum() / (w.sum() * 3)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec_loss + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == total - 1:
            log(f"vae step {step} rec {rec_loss.item():.4f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)", logf)
        if (step + 1) % 500 == 0:
            vae.save_pretrained(work / "vae")
    vae.save_pretrained(work / "vae")
    log(f"vae done in {time.time() - t0:.0f}s", logf)


# --- stage 2: latents -----------------------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(images: torch.Tensor, work: Path, logf: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(images[i : i + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean = torch.cat(means)  # (N, 4, 8, 8)
    std = torch.cat(stds)
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(work / "vae")
    torch.save({"mean": mean, "std": std, "scaling_factor": scale}, work / "latents.pt")
    log(f"latents {tuple(mean.shape)}: mean {mean.mean():.3f} std {mean.std():.3f} → scaling_factor {scale:.4f}", logf)


# --- stage 2b: decoder fine-tuning ---------------------------------------------------------------------------


def finetune_decoder(args: argparse.Namespace, images: torch.Tensor, labels: list, work: Path, logf: Path) -> None:
    """Sharpen the decoder on whole images with the encoder frozen: the latents (and so the UNet's data) stay the same.

    (Like Stability's ft-MSE VAE decoders: only the decoder moves, so any UNet trained on these latents still fits.)
    """
    from diffusers import AutoencoderKL

    from darkroom.shapes.dataset import COLOURS

    torch.manual_seed(args.seed + 5)
    vae = AutoencoderKL.from_pretrained(work / "vae")
    data = torch.load(work / "latents.pt")
    lat_mean, lat_std = data["mean"], data["std"]  # (N, 4, 8, 8)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.dec_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 6)
    bg = torch.tensor([COLOURS[lab.background] for lab in labels], dtype=torch.float32) / 127.5 - 1.0
    log(f"decoder: {sum(p.numel() for p in params) / 1e6:.2f}M params, {args.dec_steps} steps", logf)
    t0 = time.time()
    for step in range(args.dec_steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.dec_steps, args.dec_lr, warmup=50)
        idx = torch.randint(0, len(images), (args.dec_batch,), generator=g)
        x = images[idx]  # (B, 3, 64, 64)
        m = ((x - bg[idx][:, :, None, None]).abs().amax(1, keepdim=True) > 0.05).float()
        z = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)  # (B, 4, 8, 8)
        rec = vae.decode(z).sample
        w = 1.0 + args.vae_fg_weight * m
        loss = ((rec - x).abs() + (rec - x).pow(2)).mul(w).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == args.dec_steps - 1:
            log(f"decoder step {step} rec {loss.item():.4f} ({time.time() - t0:.0f}s)", logf)
        if (step + 1) % 500 == 0 or step == args.dec_steps - 1:
            vae.save_pretrained(work / "vae_ft")
    log(f"decoder done in {time.time() - t0:.0f}s", logf)


# --- stage 2c: text encoder, CLIP-style ------------------------------------------------------------------------


class LatentEncoder(torch.nn.Module):
    """The image side of the contrastive pre-training: a small CNN on (4, 8, 8) latents → a unit vector (dim)."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        act = torch.nn.SiLU
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, 128, 3, padding=1), act(),
            torch.nn.Conv2d(128, 128, 3, padding=1), act(),
            torch.nn.Conv2d(128, 128, 3, padding=1, stride=2), act(),  # (128, 4, 4)
            torch.nn.Flatten(), torch.nn.Linear(128 * 16, 512), act(), torch.nn.Linear(512, dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(z), dim=-1)


#: The one-word nouns the captions use for each kind ("circle", "disc", "square", "box", …; the dataset's longer
#: wordings such as "round circle" or "square block" contain them): what a hard-negative caption swaps.
_KIND_NOUNS = {kind: tuple(dict.fromkeys(w for w in words if " " not in w))
               for kind, words in _SHAPE_WORDS.items()}
_NOUN_KIND = {w: kind for kind, words in _KIND_NOUNS.items() for w in words}
_NOUN_RE = re.compile(r"\b(" + "|".join(_NOUN_KIND) + r")\b")


def kind_swapped(caption: str, rng: random.Random) -> str:
    """The caption with its first shape noun replaced by a noun of another kind ("a red circle" → "a red box")."""
    m = _NOUN_RE.search(caption)
    if m is None:
        return caption
    other = rng.choice([k for k in _KIND_NOUNS if k != _NOUN_KIND[m.group(1)]])
    return caption[: m.start()] + rng.choice(_KIND_NOUNS[other]) + caption[m.end() :]


@torch.no_grad()
def kind_separation(te) -> float:
    """How far apart the encoder keeps the closest two kinds, relative to a colour change (1: as far; ~0: the same).

    Distance = the summed change of the final states over the 77 positions when one word of
    'a large red circle at the top left on a blue background' changes.
    """
    was_training = te.training
    te.eval()
    base = "a large {} {} at the top left on a blue background"
    states = te(tokenize([base.format("red", k) for k in _KIND_NOUNS] + [base.format("green", "circle")])).last_hidden_state
    te.train(was_training)
    dist = lambda a, b: float((states[a] - states[b]).norm(dim=-1).sum())  # noqa: E731
    n = len(_KIND_NOUNS)
    return min(dist(i, j) for i in range(n) for j in range(i + 1, n)) / dist(0, n)


def pretrain_text_encoder(args: argparse.Namespace, captions: list[list[str]], work: Path, logf: Path) -> None:
    """Train the text encoder the way CLIP's was trained: captions and pictures (here: their latents) contrasted.

    Symmetric InfoNCE over a batch, the text side being the final-layer-normed state of the <|endoftext|> token
    (`pooler_output`) through a linear projection, the image side a small CNN on the latents; both heads are thrown
    away. Stable Diffusion's UNets learn against a frozen, pretrained CLIP text encoder; trained from scratch jointly
    with the UNet (v1, v2), the words for positions and kinds took thousands of UNet steps to mean anything. A second
    InfoNCE term (weight --text-paraphrase) matches each caption with another wording of the same picture.
    Sequences are cut after the longest caption of each batch: with CLIP's causal attention the states up to the
    <|endoftext|> token do not depend on what follows it.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed + 7)
    data = torch.load(work / "latents.pt")
    lat_mean, lat_std = data["mean"] * data["scaling_factor"], data["std"] * data["scaling_factor"]
    n = len(lat_mean)
    k = len(captions[0])
    ids = tokenize([c for cs in captions[:n] for c in cs]).view(n, k, 77)
    # hard negatives (as NegCLIP, Yuksekgonul et al. 2023): each caption with its shape's kind swapped. Without them
    # the easy attributes (colours, positions) carry the loss and the encoder learns to ignore the hardest one:
    # "circle" → "square" moved its states a third as far as any other one-word change, and the UNet drew kinds at
    # chance.
    rng = random.Random(args.seed + 9)
    swapped = tokenize([kind_swapped(c, rng) for cs in captions[:n] for c in cs]).view(n, k, 77)
    te = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)).train()
    proj = torch.nn.Linear(TEXT_ENCODER_CONFIG["hidden_size"], 128, bias=False)
    img = LatentEncoder(128)
    log_temp = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*te.parameters(), *proj.parameters(), *img.parameters(), log_temp]
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.01, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(args.seed + 8)
    n_held = min(1024, n // 4)
    held = torch.arange(n - n_held, n)  # held-out pairs for the retrieval accuracy in the log
    log(f"text: {sum(p.numel() for p in te.parameters()) / 1e6:.2f}M params, {args.text_steps} contrastive steps of "
        f"{args.text_batch}", logf)

    def embed_text(tokens: torch.Tensor) -> torch.Tensor:
        length = int((tokens == TEXT_ENCODER_CONFIG["eos_token_id"]).int().argmax(-1).max()) + 1
        return F.normalize(proj(te(tokens[:, :length]).pooler_output), dim=-1)

    para_on = args.text_paraphrase > 0 and k > 1  # needs at least two captions per picture
    t0 = time.time()
    for step in range(args.text_steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.text_steps, args.text_lr)
        idx = torch.randint(0, n - n_held, (args.text_batch,), generator=g)
        which = torch.randint(0, k, (args.text_batch,), generator=g)
        z = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)
        b = args.text_batch
        if para_on:  # a second, different caption of each picture
            which2 = (which + torch.randint(1, k, (b,), generator=g)) % k
            text = embed_text(torch.cat([ids[idx, which], swapped[idx, which], ids[idx, which2]]))  # (3B, d)
        else:
            text = embed_text(torch.cat([ids[idx, which], swapped[idx, which]]))  # (2B, d): captions, then swaps
        scale = log_temp.clamp(max=math.log(100)).exp()
        logits = scale * img(z) @ text[: 2 * b].T  # (B, 2B)
        target = torch.arange(b)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2
        if para_on:
            # paraphrases: each caption must find the other wording of its own picture among the batch's captions
            # and the kind-swapped copies. The words themselves tell a circle from a square, so this keeps kinds
            # apart where the latents alone hardly do (without it "circle" and "square", "triangle" and "star" ended
            # up nearly the same to the encoder, and the UNet drew squares as circles and stars as triangles)
            para = scale * text[2 * b :] @ text[: 2 * b].T  # (B, 2B)
            loss = loss + args.text_paraphrase * (F.cross_entropy(para, target)
                                                  + F.cross_entropy(para[:, :b].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == args.text_steps - 1:
            with torch.no_grad():
                te.eval()
                pics = img(lat_mean[held])
                sim = embed_text(ids[held, 0]) @ pics.T  # (n_held, n_held)
                worse = (embed_text(swapped[held, 0]) * pics).sum(-1)
                te.train()
            acc = (sim.argmax(1) == torch.arange(len(held))).float().mean()
            kind_acc = (sim.diagonal() > worse).float().mean()
            log(f"text step {step} loss {loss.item():.3f} held-out caption→picture top-1 of {n_held}: {acc:.3f}, "
                f"right kind preferred {kind_acc:.3f}, closest kinds {kind_separation(te):.2f} "
                f"({time.time() - t0:.0f}s)", logf)
    te.eval().save_pretrained(work / "text_encoder")
    log(f"text done in {time.time() - t0:.0f}s", logf)


# --- stage 3: UNet + text encoder -----------------------------------------------------------------------------


def latent_foreground(images: torch.Tensor, labels: list) -> torch.Tensor:
    """Fraction of each latent cell's 8×8 pixels that belong to a shape → (N, 1, 8, 8) in [0, 1]."""
    from darkroom.shapes.dataset import COLOURS

    bg = torch.tensor([COLOURS[lab.background] for lab in labels], dtype=torch.float32) / 127.5 - 1.0  # (N, 3)
    fg = ((images - bg[:, :, None, None]).abs().amax(1, keepdim=True) > 0.05).float()  # (N, 1, 64, 64)
    return F.avg_pool2d(fg, 8)


def eps_loss(pred: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, fg: torch.Tensor,
             args: argparse.Namespace) -> torch.Tensor:
    """Weighted ε-loss: min-SNR-γ × min(1/ᾱ, cap) per sample, latent cells covered by shapes weighted up.

    The shapes are a small part of each latent (a flat background is easy): weighing their cells up (1 + fg_weight ×
    coverage, fg (B, 1, 8, 8)) keeps what tells a circle from a square — the cells on the outline — from being
    drowned by the background's error.
    """
    acp = alphas_cumprod()
    snr = acp / (1 - acp)
    w = torch.clamp(snr[t], max=args.min_snr) / snr[t] * torch.clamp(1 / acp[t], max=args.high_noise_weight)
    cells = 1.0 + args.fg_weight * fg  # (B, 1, 8, 8)
    per_sample = ((pred - eps).pow(2) * cells).sum(dim=(1, 2, 3)) / (cells.sum(dim=(1, 2, 3)) * pred.shape[1])
    return (w * per_sample).mean()


def train_unet(args: argparse.Namespace, captions: list[list[str]], fg: torch.Tensor, work: Path, logf: Path) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed + 2)
    data = torch.load(work / "latents.pt")
    lat_mean, lat_std, scale = data["mean"], data["std"], data["scaling_factor"]
    n = len(lat_mean)
    k = len(captions[0])
    ids = tokenize([c for cs in captions[:n] for c in cs]).view(n, k, 77)  # (N, k, 77)
    empty_ids = tokenize([""])[0]  # (77,)

    frozen = (work / "text_encoder").is_dir() and not args.train_text  # pretrained by the `text` stage: keep it fixed
    te_source = Path(args.resume) / "text_encoder" if args.resume else work / "text_encoder" if frozen else None
    te = CLIPTextModel.from_pretrained(te_source) if te_source else CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    if args.resume:
        unet = UNet2DConditionModel.from_pretrained(Path(args.resume) / "unet")
    else:
        unet = UNet2DConditionModel(**{**UNET_CONFIG, "norm_num_groups": args.unet_groups})
    unet.train()
    te.train(not frozen)
    te.requires_grad_(not frozen)
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    for p in [*ema_unet.parameters(), *ema_te.parameters()]:
        p.requires_grad_(False)
    params = [*unet.parameters(), *([] if frozen else te.parameters())]
    if frozen:
        log(f"unet: text encoder frozen (from {te_source})", logf)
    acp = alphas_cumprod()
    g = torch.Generator().manual_seed(args.seed + 3)
    # warm restarts (SGDR, Loshchilov & Hutter 2017): each cycle starts from the EMA weights with a fresh optimizer, a
    # new warm-up and cosine decay; positions and shape kinds were learned right after restarts, not in one long decay
    cycles = [int(c) for c in args.cycles.split(",")] if args.cycles else [args.steps]
    starts = [sum(cycles[:i]) for i in range(len(cycles))]
    total = sum(cycles)
    log(
        f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, text encoder "
        f"{sum(p.numel() for p in te.parameters()) / 1e6:.2f}M, {n} images × {k} captions, {total} steps "
        f"of {args.batch} in cycles {cycles}",
        logf,
    )
    t0 = time.time()
    ema_loss = None
    opt = None
    cycle = -1
    for step in range(total):
        if step in starts:
            cycle = starts.index(step)
            if cycle > 0:
                unet.load_state_dict(ema_unet.state_dict())
                if not frozen:
                    te.load_state_dict(ema_te.state_dict())
                log(f"unet: warm restart {cycle} at step {step} from the EMA weights", logf)
            opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99), fused=True)
            peak = args.lr if cycle == 0 else args.restart_lr
        local = step - starts[cycle]
        for pg in opt.param_groups:
            pg["lr"] = lr_at(local, cycles[cycle], peak, warmup=min(200, cycles[cycle] // 5))
        idx = torch.randint(0, n, (args.batch,), generator=g)
        which = torch.randint(0, k, (args.batch,), generator=g)
        tokens = ids[idx, which].clone()  # (B, 77)
        drop = torch.rand(args.batch, generator=g) < args.caption_dropout
        tokens[drop] = empty_ids
        x0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale  # (B, 4, 8, 8)
        # half the batch at uniform timesteps, half in the noisier part (t ≥ high_t_from), where the layout and the
        # colours are decided: that is where the prompt matters most and where ε-loss gives the weakest signal
        t = torch.randint(0, TRAIN_STEPS, (args.batch,), generator=g)
        high = torch.randint(args.high_t_from, TRAIN_STEPS, (args.batch,), generator=g)
        t = torch.where(torch.arange(args.batch) % 2 == 1, high, t)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.set_grad_enabled(not frozen):
            cond = te(tokens).last_hidden_state  # (B, 77, 128)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        # ε-loss weight: min-SNR-γ (Hang et al. 2023) tames the low-noise end; × 1/ᾱ (the v-loss factor, capped)
        # makes errors in the predicted image count at high noise too. With 8×8 latents the mean of the starting
        # noise is large next to the data, and plain ε-loss hardly penalises keeping it: pictures would then take
        # their background colour from the seed instead of the prompt.
        loss = eps_loss(pred, eps, t, fg[idx], args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + local) / (10 + local))
        with torch.no_grad():
            for src, dst in ((unet, ema_unet),) if frozen else ((unet, ema_unet), (te, ema_te)):
                for ps, pd in zip(src.parameters(), dst.parameters()):
                    pd.lerp_(ps, 1 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 50 == 0 or step == total - 1:
            log(f"unet step {step} loss {ema_loss:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s)", logf)
        if (step + 1) % args.save_every == 0 or step == total - 1:
            out = work / f"{args.tag + '_' if args.tag else ''}step_{step + 1:05d}"
            ema_unet.save_pretrained(out / "unet")
            ema_te.save_pretrained(out / "text_encoder")
            log(f"saved {out}", logf)
    log(f"unet done in {time.time() - t0:.0f}s", logf)


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for intermediate diffusers-format components")
    ap.add_argument("--stages", default="vae,latents,text,unet", help="comma list of vae,latents,decoder,text,unet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=16000)
    ap.add_argument("--n-alt-captions", type=int, default=3)
    ap.add_argument("--vae-groups", type=int, default=VAE_CONFIG["norm_num_groups"], help="GroupNorm groups (v2: 16)")
    ap.add_argument("--unet-groups", type=int, default=UNET_CONFIG["norm_num_groups"], help="GroupNorm groups (v2: 32)")
    ap.add_argument("--vae-steps", type=int, default=2000, help="steps on 32×32 crops around shapes (v2: 1500)")
    ap.add_argument("--vae-full-steps", type=int, default=300, help="then steps on whole 64×64 images")
    ap.add_argument("--vae-batch", type=int, default=32, help="crops per step (whole images: a quarter)")
    ap.add_argument("--vae-fg-weight", type=float, default=8.0)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--dec-steps", type=int, default=1500, help="decoder-only fine-tuning steps on whole images")
    ap.add_argument("--dec-batch", type=int, default=8)
    ap.add_argument("--dec-lr", type=float, default=5e-4)
    ap.add_argument("--text-steps", type=int, default=500, help="contrastive text-encoder steps (stage text)")
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--text-lr", type=float, default=1e-3)
    ap.add_argument("--text-paraphrase", type=float, default=1.0,
                    help="weight of the caption↔caption contrastive term of stage text (0: pictures only)")
    ap.add_argument("--train-text", action="store_true",
                    help="train the text encoder with the UNet even when the text stage pretrained one (v1/v2 recipe)")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cycles", default="", help="UNet steps per warm-restart cycle, e.g. 1500,1000,1000 (overrides --steps)")
    ap.add_argument("--restart-lr", type=float, default=5e-4, help="peak learning rate of the cycles after the first")
    ap.add_argument("--high-t-from", type=int, default=400, help="half of each batch draws t from [this, 1000)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--high-noise-weight", type=float, default=20.0, help="cap of the 1/ᾱ loss factor")
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--fg-weight", type=float, default=4.0, help="extra loss weight of latent cells covered by shapes")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--resume", default=None, help="a step_XXXXX folder to start the UNet/text encoder from")
    ap.add_argument("--tag", default="", help="prefix of the saved step folders (e.g. phase2 → phase2_step_02000)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    logf = args.work / "train.log"
    (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    stages = set(args.stages.split(","))
    t0 = time.time()
    images, captions, labels = build_data(args.n_images, args.n_alt_captions)
    log(f"dataset: {len(images)} images in {time.time() - t0:.0f}s; e.g. {captions[0][0]!r}", logf)
    if "vae" in stages:
        train_vae(args, images, labels, args.work, logf)
    if "latents" in stages:
        encode_latents(images, args.work, logf)
    if "decoder" in stages:
        finetune_decoder(args, images, labels, args.work, logf)
    if "text" in stages:
        pretrain_text_encoder(args, captions, args.work, logf)
    if "unet" in stages:
        train_unet(args, captions, latent_foreground(images, labels), args.work, logf)
    log(f"all stages done in {time.time() - t0:.0f}s", logf)


if __name__ == "__main__":
    main()
