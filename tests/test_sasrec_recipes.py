"""SASRec's two settings for the published rows (issue 23): ``block: post_ln`` (FMLP-Rec's
released code's SASRec layer) and ``training: prefixes`` (one right-aligned prefix per
prediction). Each test pins what the setting means, not only that outputs differ."""

from __future__ import annotations

import torch
from torch import nn

from test_baselines import SIZES, make_batch, make_model
from trainers.models.next_item import HistoryScores

CODE = dict(block="post_ln", ffn_dim=32, num_heads=2)  # the code's layer (4d at d = 8)


def long_batch(B: int = 6, seed: int = 3) -> dict:
    """A batch whose rows hold 2..L real items (left-padded), none empty."""
    batch = make_batch(B=B, seed=seed)
    L = SIZES.sequence_len
    lengths = torch.arange(B) % (L - 1) + 2
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, SIZES.num_items + 1, (B, L), generator=g)
    batch["sequence"] = seq * (torch.arange(L) >= L - lengths[:, None])
    return batch


def history_scores(model: nn.Module, batch: dict) -> HistoryScores:
    model.train()
    torch.manual_seed(7)  # the same sampled negatives in every forward
    return model(batch).terms


def scored_alone(model: nn.Module, prefix: torch.Tensor, item: torch.Tensor) -> float:
    """What scoring gives ``item`` for a user whose whole history is ``prefix`` (L,)."""
    model.eval()
    with torch.no_grad():
        batch = {"sequence": prefix[None], "items": item.view(1, 1),
                 "label": torch.ones(1, 1)}
        return float(model(batch).scores[0, 0])


def test_prefix_training_scores_each_history_item_as_scoring_would():
    """``training: prefixes``: the history prediction at position t is exactly the score that
    evaluation gives its next item for a user whose history is sequence[:t+1] (the newest
    item on the last positional row). ``positions`` (Eq. 7's one pass) reads the same items
    from earlier rows, so its predictions differ wherever the window is not yet full."""
    for block in ({}, CODE):
        torch.manual_seed(0)
        model = make_model("sasrec", dropout=0.0, training="prefixes", **block)
        batch = long_batch()
        terms = history_scores(model, batch)
        seq, L = batch["sequence"], SIZES.sequence_len
        checked = 0
        for b, t in terms.valid.nonzero().tolist():
            prefix = torch.cat([seq.new_zeros(L - 1 - t), seq[b, :t + 1]])  # right-aligned
            alone = scored_alone(model, prefix, seq[b, t + 1])
            assert abs(float(terms.pairs[b, t, 0].detach()) - alone) < 1e-5, (block, b, t)
            checked += 1
        assert checked >= 10
        one_pass = make_model("sasrec", dropout=0.0, training="positions", **block)
        one_pass.load_state_dict(model.state_dict())
        other = history_scores(one_pass, batch)
        assert torch.equal(other.valid, terms.valid)  # the same predictions, from other rows
        assert torch.equal(other.labels, terms.labels)
        assert not torch.allclose(other.pairs[terms.valid], terms.pairs[terms.valid])
        for m in (model, one_pass):  # ... and the candidates' state is the window's own
            m.eval()
        with torch.no_grad():
            torch.testing.assert_close(one_pass(batch).scores, model(batch).scores)


def test_prefix_training_reads_feedback_labels_of_the_prefix():
    """Under ``feedback`` each prefix carries its events' labels: flipping the label of the
    newest event changes only the prediction made after it."""
    torch.manual_seed(0)
    model = make_model("sasrec", dropout=0.0, training="prefixes")
    batch = long_batch()
    feedback = (batch["sequence"] != 0).long()
    base = history_scores(model, {**batch, "sequence_label": feedback})
    flipped = feedback.clone()
    flipped[:, -2] = 0  # the event at L-2: read at position L-2 only (as state input)
    out = history_scores(model, {**batch, "sequence_label": flipped})
    torch.testing.assert_close(out.pairs[:, :-1], base.pairs[:, :-1])
    assert not torch.allclose(out.pairs[:, -1], base.pairs[:, -1])


def test_post_ln_is_the_codes_layer():
    """``block: post_ln``: E = Drop(LN(M + P)); per layer LN(x + Drop(MSA(x))), then
    LN(h + Drop(FFN(h))) with FFN = GELU(h W1 + b1) W2 + b2 of inner size ``ffn_dim``; no final
    LayerNorm. Built by hand from the model's own weights (dropout 0) and compared."""
    torch.manual_seed(0)
    model = make_model("sasrec", dropout=0.0, **CODE).eval()
    seq = long_batch()["sequence"]
    B, L = seq.shape
    d, h = model.params.embed_dim, model.params.num_heads
    keep = (seq != 0).unsqueeze(-1).float()
    x = model.ln_in(model.item.weight[seq] + model.position.weight) * keep
    for layer in model.blocks:
        q, k, v = layer.attn.qkv(x).view(B, L, 3, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5  # (B, h, L, L)
        blocked = torch.ones(L, L, dtype=torch.bool).triu(1) | (seq == 0)[:, None, None, :]
        blocked = blocked & ~torch.eye(L, dtype=torch.bool)
        a = (scores.masked_fill(blocked, float("-inf")).softmax(-1) @ v)
        a = layer.attn.out(a.transpose(1, 2).reshape(B, L, d))
        x = nn.functional.layer_norm(x + a, (d,), layer.ln_attn.weight, layer.ln_attn.bias,
                                     1e-12)
        w1, w2 = layer.ffn[0], layer.ffn[3]
        assert w1.out_features == 32 and isinstance(layer.ffn[1], nn.GELU)
        f = w2(nn.functional.gelu(w1(x)))
        x = nn.functional.layer_norm(x + f, (d,), layer.ln_ffn.weight, layer.ln_ffn.bias,
                                     1e-12) * keep
    torch.testing.assert_close(model.position_states(seq), x, rtol=1e-5, atol=1e-5)
    assert isinstance(model.ln_in, nn.LayerNorm) and model.ln_in.eps == 1e-12
    assert isinstance(model.ln_out, nn.Identity)
    paper = make_model("sasrec")  # pre_ln: no LN on the embedding, the final LN of III-D
    assert isinstance(paper.ln_in, nn.Identity) and isinstance(paper.ln_out, nn.LayerNorm)


def test_post_ln_trains_no_empty_history_state():
    """Its padding states are 0 (no final LayerNorm shift): the padding slot before a
    sequence's first item predicts nothing, where ``pre_ln`` trains that empty-history state."""
    batch = make_batch(B=6)
    pre = history_scores(make_model("sasrec"), batch)
    post = history_scores(make_model("sasrec", **CODE), batch)
    real = batch["sequence"][:, :-1] != 0
    assert torch.equal(post.valid, pre.valid & real)
    assert (pre.valid & ~real).any()  # there was such a slot to drop


def test_post_ln_never_looks_ahead():
    """The code's layer keeps every state causal: changing item j moves states j.. only
    (prefixes read those states, test_prefix_training_scores_each_history_item_as_scoring_would)."""
    model = make_model("sasrec", **CODE).eval()
    seq = long_batch()["sequence"]
    seq[:, -4:] = torch.randint(1, SIZES.num_items + 1, (seq.shape[0], 4))
    base = model.position_states(seq)
    for j in range(seq.shape[1] - 4, seq.shape[1]):
        changed = seq.clone()
        changed[:, j] = changed[:, j] % SIZES.num_items + 1
        out = model.position_states(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out[:, j], base[:, j])


def test_prefix_training_with_nothing_to_predict_trains_the_candidates_alone():
    """A batch whose rows hold one event each has no history prediction under ``post_ln``
    (and none at all without history targets): the forward still scores the candidates."""
    batch = long_batch()
    L = SIZES.sequence_len
    batch["sequence"] = batch["sequence"] * (torch.arange(L) == L - 1)  # one event a row
    for over in (CODE, {"history_targets": False}):
        model = make_model("sasrec", training="prefixes", **over).train()
        out = model(batch)
        assert not out.terms.valid.any()
        loss = model.loss(out, batch)
        assert torch.isfinite(loss)
        loss.backward()
