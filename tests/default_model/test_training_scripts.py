"""The training scripts' plumbing on tiny inputs: warm-restart cycles in one UNet run, the contrastive text stage and
its hard negatives, and the autoencoder check's perfect drawings (which the analyser must read without an error)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))

import measure_autoencoder  # noqa: E402
import train_default_model  # noqa: E402

from darkroom.shapes.adherence import rates, score_image  # noqa: E402


def _train(argv: list[str]) -> None:
    threads = torch.get_num_threads()
    try:
        train_default_model.main([*argv, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # main() sets the process's thread count


def test_unet_cycles_restart_from_the_ema_and_save_on_the_global_step(tmp_path):
    torch.save({"mean": torch.randn(20, 4, 8, 8), "std": torch.full((20, 4, 8, 8), 0.1), "scaling_factor": 1.0},
               tmp_path / "latents.pt")
    _train(["--work", str(tmp_path), "--stages", "unet", "--n-images", "20", "--cycles", "3,2", "--batch", "2",
            "--save-every", "2"])
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00002", "step_00004", "step_00005"]
    log = (tmp_path / "train.log").read_text()
    assert "in cycles [3, 2]" in log and "warm restart 1 at step 3 from the EMA weights" in log
    assert "warm restart 2" not in log


def test_autoencoder_check_draws_what_the_analyser_reads_perfectly():
    for size in ("small", "large"):
        specs, images = measure_autoencoder.drawings(size, n=36)
        assert images.shape == (36, 64, 64, 3) and images.dtype == np.uint8
        assert all(v == 1.0 for v in rates([score_image(im, s) for im, s in zip(images, specs)]).values())


def test_text_stage_pretrains_an_encoder_that_the_unet_stage_keeps_frozen(tmp_path):
    torch.save({"mean": torch.randn(24, 4, 8, 8), "std": torch.full((24, 4, 8, 8), 0.1), "scaling_factor": 1.0},
               tmp_path / "latents.pt")
    _train(["--work", str(tmp_path), "--stages", "text,unet", "--n-images", "24", "--text-steps", "3",
            "--text-batch", "6", "--cycles", "2", "--batch", "2", "--save-every", "2"])
    from transformers import CLIPTextConfig, CLIPTextModel

    pre = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").state_dict()
    saved = CLIPTextModel.from_pretrained(tmp_path / "step_00002" / "text_encoder").state_dict()
    fresh = CLIPTextModel(CLIPTextConfig(**train_default_model.TEXT_ENCODER_CONFIG)).state_dict()
    assert all(torch.equal(pre[k], saved[k]) for k in pre)  # the UNet stage did not move it
    assert not all(torch.equal(pre[k], fresh[k]) for k in pre)
    log = (tmp_path / "train.log").read_text()
    assert "held-out caption→picture top-1 of 6" in log and "text encoder frozen" in log


def test_text_states_up_to_the_end_token_do_not_depend_on_what_follows():
    # the contrastive stage cuts each batch after its longest caption; CLIP's causal attention makes that exact
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**train_default_model.TEXT_ENCODER_CONFIG)).eval()
    ids = train_default_model.tokenize(["a small red circle at the top left", "a big box on blue"])
    length = int((ids == 49407).int().argmax(-1).max()) + 1
    with torch.no_grad():
        full, cut = te(ids), te(ids[:, :length])
    torch.testing.assert_close(full.pooler_output, cut.pooler_output)
    torch.testing.assert_close(full.last_hidden_state[:, :length], cut.last_hidden_state)


def test_kind_swapped_captions_change_only_the_first_shape_noun_to_another_kind():
    import random

    rng = random.Random(0)
    for caption, kind_words in [
        ("a big blue square block in the middle against a black background", ("square", "box")),
        ("top-right: a little pink star, green background", ("star",)),
        ("a round circle and a tiny red star", ("circle", "disc")),
        ("a disc on red", ("circle", "disc")),
    ]:
        for _ in range(10):
            out = train_default_model.kind_swapped(caption, rng)
            a, b = caption.split(), out.split()
            changed = [(x, y) for x, y in zip(a, b) if x.strip(",") != y.strip(",")]
            assert len(a) == len(b) and len(changed) == 1, (caption, out)
            old, new = (w.strip(",") for w in changed[0])
            assert old in kind_words and new not in kind_words
            assert new in {w for ws in train_default_model._KIND_NOUNS.values() for w in ws}
    assert train_default_model.kind_swapped("a red thing", rng) == "a red thing"
