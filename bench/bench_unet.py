"""Seconds per sampling step and peak memory: darkroom's sampler + denoiser vs a plain diffusers pipeline.

Both sides run the same full-size UNet (random weights from the shipped SD1.5 / SDXL configs), the same prompt
embeddings, Euler, CFG with cond and uncond in one batch. Each side runs in its own subprocess so peak memory
(CUDA: max_memory_allocated; CPU: peak RSS) is measured separately. Prints ours/diffusers ratios.

  .venv/bin/python bench/bench_unet.py                       # CPU: small sizes, 3 steps
  .venv/bin/python bench/bench_unet.py --device cuda --full  # GPU: SD1.5 at 512², SDXL at 1024², 20 steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from importlib import resources

CONFIGS = {"sd15": "sd15", "sdxl": "sdxl-base"}


def _unet(model: str, dtype, device):
    import torch
    from diffusers import UNet2DConditionModel

    cfg_dir = resources.files("darkroom") / "configs" / CONFIGS[model] / "unet"
    config = json.loads((cfg_dir / "config.json").read_text())
    torch.manual_seed(0)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to_empty(device=device)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    return unet.to(dtype).eval()


def _inputs(model: str, size: int, dtype, device):
    import torch

    g = torch.Generator().manual_seed(1)
    ctx_dim = 768 if model == "sd15" else 2048
    cond = torch.randn((1, 77, ctx_dim), generator=g)
    uncond = torch.randn((1, 77, ctx_dim), generator=g)
    pooled = torch.randn((1, 1280), generator=g) if model == "sdxl" else None
    pooled_neg = torch.randn((1, 1280), generator=g) if model == "sdxl" else None
    return cond, uncond, pooled, pooled_neg


def run_side(side: str, model: str, size: int, steps: int, device_name: str, dtype_name: str) -> dict:
    import torch

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    torch.set_grad_enabled(False)
    unet = _unet(model, dtype, device)
    cond, uncond, pooled, pooled_neg = _inputs(model, size, dtype, device)
    latent_hw = size // 8
    times: list[float] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if side == "ours":
        from darkroom.engine.denoiser import CondItem, UNetDenoiser
        from darkroom.models.bundle import BetaSchedule
        from darkroom.sampling import ModelSampling, sample

        ms = ModelSampling(BetaSchedule(), "eps")
        den = UNetDenoiser(unet, ms, [CondItem(cond, pooled)], [CondItem(uncond, pooled_neg)], 7.0,
                           sdxl=model == "sdxl", latent_size_px=(size, size))
        last = [time.perf_counter()]

        def cb(info):
            sync()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        latent = torch.zeros((1, 4, latent_hw, latent_hw), device=device)
        sync()
        last[0] = time.perf_counter()
        sample(den, latent, sampler="euler", scheduler="normal", model_sampling=ms, steps=steps + 1, seed=0,
               callback=cb)
    else:
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, layers_per_block=1)
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace")
        last = [time.perf_counter()]

        def cb(pipe, i, t, kw):
            sync()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            return kw

        kw = dict(height=size, width=size, num_inference_steps=steps + 1, guidance_scale=7.0, output_type="latent",
                  callback_on_step_end=cb)
        if model == "sd15":
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            run = lambda: pipe(prompt_embeds=cond.to(device, dtype), negative_prompt_embeds=uncond.to(device, dtype),
                               **kw)
        else:
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                             tokenizer_2=None, unet=unet, scheduler=sched)
            run = lambda: pipe(prompt_embeds=cond.to(device, dtype), negative_prompt_embeds=uncond.to(device, dtype),
                               pooled_prompt_embeds=pooled.to(device, dtype),
                               negative_pooled_prompt_embeds=pooled_neg.to(device, dtype), **kw)
        pipe.set_progress_bar_config(disable=True)
        sync()
        last[0] = time.perf_counter()
        run()
    step_times = times[1:]  # drop the warm-up step
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"s_per_step": sum(step_times) / max(1, len(step_times)), "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="fp32 (CPU default) / fp16 (CUDA default) / bf16")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--full", action="store_true", help="full sizes: SD1.5 512², SDXL 1024²")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    dtype = a.dtype or ("fp32" if a.device == "cpu" else "fp16")
    if a.side:
        print(json.dumps(run_side(a.side, a.model, a.size, a.steps, a.device, dtype)))
        return
    steps = a.steps or (20 if a.full else 3)
    sizes = {"sd15": 512, "sdxl": 1024} if a.full else {"sd15": 256, "sdxl": 384}
    print(f"device={a.device} dtype={dtype} steps={steps} (+1 warm-up)")
    print(f"{'model':6} {'size':>5} {'ours s/step':>12} {'diffusers s/step':>17} {'ratio':>6} "
          f"{'ours GiB':>9} {'diffusers GiB':>14} {'ratio':>6}")
    for model in a.models.split(","):
        res = {}
        for side in ("ours", "diffusers"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--model", model, "--size",
                                  str(sizes[model]), "--steps", str(steps), "--device", a.device, "--dtype", dtype],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                sys.exit(f"{side} {model} failed:\n{out.stderr[-3000:]}")
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        o, d = res["ours"], res["diffusers"]
        print(f"{model:6} {sizes[model]:>5} {o['s_per_step']:>12.3f} {d['s_per_step']:>17.3f} "
              f"{o['s_per_step'] / d['s_per_step']:>6.2f} {o['peak_gib']:>9.2f} {d['peak_gib']:>14.2f} "
              f"{o['peak_gib'] / d['peak_gib']:>6.2f}")


if __name__ == "__main__":
    main()
