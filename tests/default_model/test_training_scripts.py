"""The training scripts' plumbing on tiny inputs: warm-restart cycles in one UNet run, and the autoencoder check's
perfect drawings (which the analyser must read without a single error)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))

import measure_autoencoder  # noqa: E402
import train_default_model  # noqa: E402

from darkroom.shapes.adherence import rates, score_image  # noqa: E402


def test_unet_cycles_restart_from_the_ema_and_save_on_the_global_step(tmp_path):
    torch.save({"mean": torch.randn(20, 4, 8, 8), "std": torch.full((20, 4, 8, 8), 0.1), "scaling_factor": 1.0},
               tmp_path / "latents.pt")
    threads = torch.get_num_threads()
    try:
        train_default_model.main(["--work", str(tmp_path), "--stages", "unet", "--n-images", "20", "--cycles", "3,2",
                                  "--batch", "2", "--save-every", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # main() sets the process's thread count
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00002", "step_00004", "step_00005"]
    log = (tmp_path / "train.log").read_text()
    assert "in cycles [3, 2]" in log and "warm restart 1 at step 3 from the EMA weights" in log
    assert "warm restart 2" not in log


def test_autoencoder_check_draws_what_the_analyser_reads_perfectly():
    for size in ("small", "large"):
        specs, images = measure_autoencoder.drawings(size, n=36)
        assert images.shape == (36, 64, 64, 3) and images.dtype == np.uint8
        assert all(v == 1.0 for v in rates([score_image(im, s) for im, s in zip(images, specs)]).values())
