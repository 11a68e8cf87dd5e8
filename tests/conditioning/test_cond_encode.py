"""Text encoding on tiny random CLIP encoders, checked against manual computations with the raw transformers models."""

import copy

import pytest
import torch

from darkroom.conditioning.embeddings import Embedding, EmbeddingLibrary
from darkroom.conditioning.encode import (
    TextEncoders,
    clip_skip_from_comfy,
    encode_prompt,
    encode_schedule,
    pad_to_same_length,
    repeat_to_common_length,
)
from darkroom.models.bundle import Checkpoint
from darkroom.models.family import Family, ModelKind

BOS, EOS = 49406, 49407
A, CAT, DOG = 320, 2368, 1929


def padded(body, pad=EOS):
    return [BOS] + body + [EOS] + [pad] * (75 - len(body))


def run(te, rows):
    with torch.no_grad():
        return te(input_ids=torch.tensor(rows), output_hidden_states=True)


def a1111_emph(z, w):
    """A1111 'Original' emphasis, written out: multiply, then restore the batch mean."""
    zw = z * torch.tensor(w).reshape(len(w), -1, 1)
    return zw * (z.mean() / zw.mean())


@pytest.fixture(scope="module")
def sd1(te_l, tok_l):
    return TextEncoders(Family.SD1, [te_l], [tok_l])


@pytest.fixture(scope="module")
def sdxl(te_l, te_g, tok_l, tok_g):
    return TextEncoders(Family.SDXL, [te_l, te_g], [tok_l, tok_g])


# --- SD1, A1111 style ------------------------------------------------------------------------------------------------


def test_plain_prompt_is_last_hidden_state(sd1, te_l):
    c = encode_prompt(sd1, "a cat")
    assert c.cross_attn.shape == (1, 77, 32) and c.cross_attn.dtype == torch.float32 and c.pooled is None
    torch.testing.assert_close(c.cross_attn, run(te_l, [padded([A, CAT])]).last_hidden_state)
    assert c.token_count == 2 and c.chunks == 1


def test_weights_and_mean_restore(sd1, te_l):
    c = encode_prompt(sd1, "a (cat:1.5) [dog]")
    z = run(te_l, [padded([A, CAT, DOG])]).last_hidden_state
    w = [[1.0, 1.0, 1.5, 1 / 1.1] + [1.0] * 73]
    torch.testing.assert_close(c.cross_attn, a1111_emph(z, w))
    assert c.cross_attn.mean().item() == pytest.approx(z.mean().item(), rel=1e-5)
    nn = encode_prompt(sd1, "a (cat:1.5) [dog]", emphasis="no_norm")
    torch.testing.assert_close(nn.cross_attn, z * torch.tensor(w).unsqueeze(-1))
    torch.testing.assert_close(encode_prompt(sd1, "a (cat:1.5) [dog]", emphasis="No norm").cross_attn, nn.cross_attn)
    ign = encode_prompt(sd1, "a (cat:1.5) [dog]", emphasis="ignore")
    torch.testing.assert_close(ign.cross_attn, z)


def test_chunks_concatenate(sd1, te_l):
    c = encode_prompt(sd1, "cat " * 100)
    assert c.cross_attn.shape == (1, 154, 32) and c.chunks == 2
    torch.testing.assert_close(c.cross_attn[:, :77], run(te_l, [[BOS] + [CAT] * 75 + [EOS]]).last_hidden_state)
    torch.testing.assert_close(c.cross_attn[:, 77:], run(te_l, [padded([CAT] * 25)]).last_hidden_state)
    b = encode_prompt(sd1, "a cat BREAK dog")
    assert b.cross_attn.shape == (1, 154, 32)
    torch.testing.assert_close(b.cross_attn[:, 77:], run(te_l, [padded([DOG])]).last_hidden_state)


def test_clip_skip(sd1, te_l):
    out = run(te_l, [padded([A, CAT])])
    c2 = encode_prompt(sd1, "a cat", clip_skip=2)
    with torch.no_grad():
        torch.testing.assert_close(c2.cross_attn, te_l.final_layer_norm(out.hidden_states[-2]))
        c3 = encode_prompt(sd1, "a cat", clip_skip=3, style="comfy")
        torch.testing.assert_close(c3.cross_attn, te_l.final_layer_norm(out.hidden_states[-3]))
    with pytest.raises(ValueError, match="clip skip 4 is out of range"):
        encode_prompt(sd1, "a cat", clip_skip=4)
    with pytest.raises(ValueError, match="clip skip 0"):
        encode_prompt(sd1, "a cat", clip_skip=0)
    assert clip_skip_from_comfy(-2, Family.SD1) == 2 and clip_skip_from_comfy(-2, Family.SDXL) == 1


def test_batch_pads_with_empty_chunks_and_shares_the_mean(sd1, te_l):
    c = encode_prompt(sd1, ["(a:1.5) cat", "dog " * 80])
    assert c.cross_attn.shape == (2, 154, 32)
    rows0 = [padded([A, CAT]), [BOS] + [DOG] * 75 + [EOS]]
    w0 = [[1.0, 1.5] + [1.0] * 75, [1.0] * 77]
    torch.testing.assert_close(c.cross_attn[:, :77], a1111_emph(run(te_l, rows0).last_hidden_state, w0))
    rows1 = [[BOS] + [EOS] * 76, padded([DOG] * 5)]
    torch.testing.assert_close(c.cross_attn[:, 77:], run(te_l, rows1).last_hidden_state)
    # the mean restore is over the whole batch (A1111), so it differs from encoding the prompt alone
    alone = encode_prompt(sd1, "(a:1.5) cat").cross_attn
    assert not torch.allclose(alone, c.cross_attn[:1, :77], atol=1e-6)


# --- ComfyUI style ---------------------------------------------------------------------------------------------------


def test_comfy_formula(sd1, te_l):
    c = encode_prompt(sd1, "a (cat:1.3) dog", style="comfy")
    out = run(te_l, [padded([A, CAT, DOG]), padded([])]).last_hidden_state
    z, z_empty = out[:1].clone(), out[1]
    z[0, 2] = (z[0, 2] - z_empty[2]) * 1.3 + z_empty[2]
    torch.testing.assert_close(c.cross_attn, z)
    # no weights: no empty-prompt pass, plain hidden states; square brackets are text
    plain = encode_prompt(sd1, "a cat", style="comfy")
    torch.testing.assert_close(plain.cross_attn, run(te_l, [padded([A, CAT])]).last_hidden_state)
    assert not torch.allclose(encode_prompt(sd1, "[cat]", style="comfy").cross_attn,
                              encode_prompt(sd1, "[cat]").cross_attn)


def test_comfy_batch_pads_to_longest(sd1):
    c = encode_prompt(sd1, ["a cat", "cat " * 90], style="comfy")
    assert c.cross_attn.shape == (2, 154, 32)
    torch.testing.assert_close(c.cross_attn[0, 77:], encode_prompt(sd1, "", style="comfy").cross_attn[0])


# --- SDXL / refiner / SD2 --------------------------------------------------------------------------------------------


def test_sdxl_concat_and_pooled(sdxl, te_l, te_g):
    c = encode_prompt(sdxl, "a (cat:1.2)")
    assert c.cross_attn.shape == (1, 77, 32 + 48) and c.pooled.shape == (1, 24)
    w = [[1.0, 1.0, 1.2] + [1.0] * 74]
    out_l = run(te_l, [padded([A, CAT])])
    out_g = run(te_g, [padded([A, CAT], pad=0)])  # bigG: pad id 0 after the first EOS
    torch.testing.assert_close(c.cross_attn[..., :32], a1111_emph(out_l.hidden_states[-2], w))
    torch.testing.assert_close(c.cross_attn[..., 32:], a1111_emph(out_g.hidden_states[-2], w))
    torch.testing.assert_close(c.pooled, out_g.text_embeds)
    # A1111 ignores clip skip on SDXL; ComfyUI style uses one layer earlier for both encoders
    torch.testing.assert_close(encode_prompt(sdxl, "a (cat:1.2)", clip_skip=2).cross_attn, c.cross_attn)
    cs = encode_prompt(sdxl, "a cat", style="comfy", clip_skip=2)
    torch.testing.assert_close(cs.cross_attn[..., :32], out_l.hidden_states[-3])
    torch.testing.assert_close(cs.cross_attn[..., 32:], out_g.hidden_states[-3])


def test_sdxl_pooled_is_first_chunk(sdxl, te_g):
    c = encode_prompt(sdxl, "a cat BREAK dog")
    assert c.cross_attn.shape == (1, 154, 80)
    torch.testing.assert_close(c.pooled, run(te_g, [padded([A, CAT], pad=0)]).text_embeds)
    comfy = encode_prompt(sdxl, "a (cat:1.1) " + "dog " * 80, style="comfy")
    assert comfy.cross_attn.shape == (1, 154, 80)


def test_sdxl_empty_negative_is_zero(sdxl):
    neg = encode_prompt(sdxl, "", negative=True)
    assert torch.count_nonzero(neg.cross_attn) == 0 and torch.count_nonzero(neg.pooled) == 0
    assert torch.count_nonzero(encode_prompt(sdxl, "").cross_attn) > 0
    assert torch.count_nonzero(encode_prompt(sdxl, "", negative=True, style="comfy").cross_attn) > 0


def test_refiner_uses_bigg_only(te_g, tok_g):
    ref = TextEncoders(Family.SDXL_REFINER, [te_g], [tok_g])
    c = encode_prompt(ref, "a cat")
    out = run(te_g, [padded([A, CAT], pad=0)])
    torch.testing.assert_close(c.cross_attn, out.hidden_states[-2])
    torch.testing.assert_close(c.pooled, out.text_embeds)


def test_sd2_converted_and_full_depth(te_h, tok_g, make_clip):
    sd2 = TextEncoders(Family.SD2, [te_h], [tok_g])
    c = encode_prompt(sd2, "a cat")
    out = run(te_h, [padded([A, CAT], pad=0)])
    torch.testing.assert_close(c.cross_attn, out.last_hidden_state)  # converted 23-layer: last = penultimate of 24
    # ComfyUI CLIPSetLastLayer(-1) asks for the dropped 24th layer: falls back to the standard output
    c0 = encode_prompt(sd2, "a cat", style="comfy", clip_skip=clip_skip_from_comfy(-1, Family.SD2))
    torch.testing.assert_close(c0.cross_attn, out.last_hidden_state)
    with torch.no_grad():
        c2 = encode_prompt(sd2, "a cat", style="comfy", clip_skip=2)
        torch.testing.assert_close(c2.cross_attn, te_h.final_layer_norm(out.hidden_states[-2]))
    deep = make_clip(8, layers=24, seed=4)  # full OpenCLIP-H depth: start one layer earlier
    c24 = encode_prompt(TextEncoders(Family.SD2, [deep], [tok_g]), "a cat")
    out24 = run(deep, [padded([A, CAT], pad=0)])
    with torch.no_grad():
        torch.testing.assert_close(c24.cross_attn, deep.final_layer_norm(out24.hidden_states[-2]))


# --- embeddings ------------------------------------------------------------------------------------------------------


def _with_new_tokens(te, vectors):
    """Independent reference: a copy of the model whose vocabulary gains one row per vector."""
    ref = copy.deepcopy(te)
    old = ref.get_input_embeddings().weight.data
    new = torch.nn.Embedding(old.shape[0] + vectors.shape[0], old.shape[1])
    new.weight.data[: old.shape[0]] = old
    new.weight.data[old.shape[0] :] = vectors
    ref.set_input_embeddings(new)
    return ref, list(range(old.shape[0], old.shape[0] + vectors.shape[0]))


def test_embedding_vectors_injected(sd1, te_l):
    vec = torch.randn(2, 32)
    lib = EmbeddingLibrary(embeddings=[Embedding("myemb", {"*": vec})])
    c = encode_prompt(sd1, "a myemb cat", embeddings=lib)
    ref, new_ids = _with_new_tokens(te_l, vec)
    expected = run(ref, [padded([A, *new_ids, CAT])]).last_hidden_state
    torch.testing.assert_close(c.cross_attn, expected)
    assert c.embeddings_used == {"myemb": ""}
    # ComfyUI syntax places the same vectors
    cc = encode_prompt(sd1, "a embedding:myemb cat", style="comfy", embeddings=lib)
    torch.testing.assert_close(cc.cross_attn, expected)
    # the shared model is untouched: same vocabulary, no hook left behind
    assert te_l.get_input_embeddings().weight.shape[0] == 49408
    assert not te_l.embeddings._forward_pre_hooks
    # a width that does not fit: the word stays text, nothing reported
    bad = EmbeddingLibrary(embeddings=[Embedding("myemb", {"*": torch.randn(2, 16)})])
    c_bad = encode_prompt(sd1, "a myemb cat", embeddings=bad)
    assert c_bad.embeddings_used == {}
    torch.testing.assert_close(c_bad.cross_attn, encode_prompt(sd1, "a myemb cat").cross_attn)


def test_sdxl_embedding_per_encoder(sdxl, te_l, te_g):
    vl, vg = torch.randn(3, 32), torch.randn(3, 48)
    lib = EmbeddingLibrary(embeddings=[Embedding("xlemb", {"clip_l": vl, "clip_g": vg})])
    c = encode_prompt(sdxl, "xlemb dog", embeddings=lib)
    ref_l, ids_l = _with_new_tokens(te_l, vl)
    ref_g, ids_g = _with_new_tokens(te_g, vg)
    out_l = run(ref_l, [padded([*ids_l, DOG])])
    out_g = run(ref_g, [padded([*ids_g, DOG], pad=0)])
    torch.testing.assert_close(c.cross_attn[..., :32], out_l.hidden_states[-2])
    torch.testing.assert_close(c.cross_attn[..., 32:], out_g.hidden_states[-2])
    torch.testing.assert_close(c.pooled, out_g.text_embeds)  # EOS found despite the placeholder ids


def test_legacy_eos_config_pooling_with_embedding(tok_l, tok_g, make_clip):
    te_l2 = make_clip(32, seed=5, eos_token_id=2)
    te_g2 = make_clip(48, projection=True, seed=6, eos_token_id=2)  # old configs pool at argmax(input_ids)
    enc = TextEncoders(Family.SDXL, [te_l2, te_g2], [tok_l, tok_g])
    emb = Embedding("xlemb", {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)})
    lib = EmbeddingLibrary(embeddings=[emb])
    c = encode_prompt(enc, "a xlemb", embeddings=lib)
    hidden = encode_prompt(TextEncoders(Family.SDXL_REFINER, [te_g2], [tok_g]), "a embedding:xlemb", embeddings=lib,
                           clip_skip=0, style="comfy")  # comfy clip skip 0 on SDXL: the final layer, no LN
    with torch.no_grad():
        eos_state = te_g2.text_model.final_layer_norm(hidden.cross_attn[0, 4])  # BOS a v v EOS
        torch.testing.assert_close(c.pooled[0], te_g2.text_projection(eos_state))


# --- schedules, padding, errors, dtypes, Checkpoint ------------------------------------------------------------------


def test_encode_schedule(sd1, te_l):
    sched = encode_schedule(sd1, "a [cat:dog:0.5]", 10)
    assert [e for e, _ in sched] == [5, 10]
    torch.testing.assert_close(sched[0][1].cross_attn, run(te_l, [padded([A, CAT])]).last_hidden_state)
    torch.testing.assert_close(sched[1][1].cross_attn, run(te_l, [padded([A, DOG])]).last_hidden_state)
    (only,) = encode_schedule(sd1, "a [cat:dog:0.5]", 10, style="comfy")
    assert only[0] == 10


def test_padding_helpers(sd1):
    cond = encode_prompt(sd1, "cat " * 100).cross_attn
    uncond = encode_prompt(sd1, "blurry").cross_attn
    empty = encode_prompt(sd1, "").cross_attn
    c2, u2 = pad_to_same_length(cond, uncond, empty)
    assert c2 is cond and u2.shape == cond.shape
    torch.testing.assert_close(u2[:, 77:], empty)
    torch.testing.assert_close(u2[:, :77], uncond)
    a, b = repeat_to_common_length(uncond, cond)
    assert a.shape == b.shape == cond.shape and torch.equal(a[:, 77:], uncond)


def test_errors(sd1, te_l, tok_l):
    with pytest.raises(ValueError, match="prompt style"):
        encode_prompt(sd1, "x", style="novelai")
    with pytest.raises(ValueError, match="emphasis"):
        encode_prompt(sd1, "x", emphasis="loud")
    with pytest.raises(ValueError, match="no prompt"):
        encode_prompt(sd1, [])
    with pytest.raises(ValueError, match="needs 2 text encoder"):
        TextEncoders.of(TextEncoders(Family.SDXL, [te_l], [tok_l]))
    with pytest.raises(TypeError, match="Checkpoint"):
        encode_prompt(object(), "x")


def test_checkpoint_and_bf16(te_l, tok_l):
    low = copy.deepcopy(te_l).to(torch.bfloat16)
    ckpt = Checkpoint(name="tiny", kind=ModelKind(Family.SD1), unet=None, vae=None, text_encoders=[low],
                      tokenizers=[tok_l], dtype=torch.bfloat16)
    c = encode_prompt(ckpt, "a (cat:1.2)")
    assert c.cross_attn.dtype == torch.float32
    ref = encode_prompt(TextEncoders(Family.SD1, [te_l], [tok_l]), "a (cat:1.2)").cross_attn
    torch.testing.assert_close(c.cross_attn, ref, atol=0.1, rtol=0.05)


def test_injection_only_affects_its_own_thread(te_l):
    import threading

    from darkroom.conditioning.encode import _inject

    rows = [padded([A, CAT])]
    plain = run(te_l, rows).last_hidden_state
    ids = torch.tensor(rows)
    other = {}
    with _inject(te_l, ids, [[(1, torch.randn(1, 32))]]):
        t = threading.Thread(target=lambda: other.setdefault("z", run(te_l, rows).last_hidden_state))
        t.start()
        t.join()
        inside = run(te_l, rows).last_hidden_state
    assert torch.equal(other["z"], plain)
    assert not torch.allclose(inside, plain)
    assert torch.equal(run(te_l, rows).last_hidden_state, plain)


def test_no_autograd_graph(sd1):
    assert not encode_prompt(sd1, "a cat", clip_skip=2).cross_attn.requires_grad
