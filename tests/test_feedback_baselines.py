"""DIN, DIEN, DFN and FeedRec (trainers/models/din.py, dien.py, dfn.py, feedrec.py): built
from their presets through the registry, on tiny (item, label) batches: shapes, empty and
one-sided histories, what each loss adds, and that a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conf.loading import load_config
from test_dfar import SIZES, make_batch
from trainers.embedding import build_optimizer
from trainers.models.feedback_layers import FieldNorm
from trainers.registry import build_model

BASELINES = ["din", "dien", "dfn", "feedrec"]


def make_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    params = dict(load_config("sample", name, "local", []).model.params)
    return build_model(name, {**params, **overrides}, SIZES)


@pytest.mark.parametrize("name", BASELINES)
def test_shapes_and_finite_scores_for_empty_and_one_sided_histories(name):
    model = make_model(name)
    assert model.inputs == {"sequence", "sequence_label"}
    batch = make_batch()  # row 0 empty, row 1 negatives only, row 2 positives only
    for mode in (model.train, model.eval):
        mode()
        out = model(batch)
        scores = out.scores
        assert scores.shape == (6, 4) and torch.isfinite(scores).all()
        loss = model.loss(out, batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()
                   if p.grad is not None)


@pytest.mark.parametrize("name", BASELINES)
def test_candidates_are_scored_independently(name):
    model = make_model(name).eval()
    batch = make_batch()
    scores = model(batch).scores
    one = dict(batch, items=batch["items"][:, 2:3], label=batch["label"][:, 2:3])
    torch.testing.assert_close(model(one).scores, scores[:, 2:3])


@pytest.mark.parametrize("name", BASELINES)
def test_feedback_labels_reach_the_scores(name):
    model = make_model(name).eval()
    batch = make_batch()
    flipped = dict(batch, sequence_label=(1 - batch["sequence_label"]) * (batch["sequence"] != 0))
    assert not torch.allclose(model(flipped).scores[3:], model(batch).scores[3:])


def test_the_towers_first_norm_gives_every_field_its_own_scale():
    """``tower_norm: field`` normalizes each D-wide field of the tower's input on its own:
    a field's scale (a LayerNorm output at ~1, a raw embedding at ~0.1) changes nothing.
    ``joint`` is ``nn.LayerNorm`` over the concatenation: there the small field is drowned
    (issue 23: FeedRec never ranked a row's candidates apart at full size under it)."""
    torch.manual_seed(0)
    user, target = torch.randn(5, 8), 0.1 * torch.randn(5, 8)  # a LayerNorm output, an item
    x = torch.cat([user, target], dim=-1)
    field, joint = FieldNorm(2, 8, "field"), FieldNorm(2, 8, "joint")
    with torch.no_grad():
        for norm in (field, joint):
            norm.weight.normal_()
            norm.bias.normal_()
    expected = torch.cat([F.layer_norm(user, (8,)), F.layer_norm(target, (8,))], dim=-1)
    torch.testing.assert_close(field(x), expected * field.weight + field.bias)
    torch.testing.assert_close(field(torch.cat([user, 10 * target], dim=-1)), field(x),
                               rtol=1e-2, atol=1e-2)  # up to LayerNorm's eps
    torch.testing.assert_close(
        joint(x), F.layer_norm(x, (16,), joint.weight, joint.bias))
    # how much the target's own variation weighs after each norm (a unit-variance row: ~1)
    joint_target = F.layer_norm(x, (16,))[:, 8:].var(dim=-1, unbiased=False).mean()
    field_target = F.layer_norm(x.unflatten(-1, (2, 8)), (8,))[:, 1].var(-1, unbiased=False)
    assert joint_target < 0.05 and field_target.mean() > 0.99


def test_dien_adds_its_auxiliary_loss_in_training_only():
    batch = make_batch()
    model = make_model("dien", aux_weight=0.5).train()
    out = model(batch)
    scores, aux = out.scores, out.terms.aux
    bce = F.binary_cross_entropy_with_logits(scores, batch["label"])
    torch.testing.assert_close(model.loss(out, batch), bce + 0.5 * aux, rtol=0, atol=0)
    assert aux > 0
    model.eval()
    out = model(batch)
    scores = out.scores
    torch.testing.assert_close(model.loss(out, batch),
                               F.binary_cross_entropy_with_logits(scores, batch["label"]))


def test_dien_auxiliary_negatives_uniform_or_by_the_batchs_interactions():
    """L_aux's ê_{t+1}: ``in_batch`` (the preset) a behaviour of the batch's histories, so
    each item comes as often as it occurs there (the released code's draw from its review
    lines), never the real next item, and a pair without another item leaves L_aux;
    ``uniform`` over the item set, never the real next item."""
    from trainers.models.dien import DIEN

    torch.manual_seed(0)
    # the batch's behaviours: item 3 six times, item 5 twice, item 7 once
    sequence = torch.tensor([[0, 3, 3, 3, 5], [0, 0, 3, 3, 3], [0, 0, 0, 5, 7]])
    nexts = sequence[:, 1:].repeat(20_000, 1)  # many draws per slot
    draws = DIEN._batch_behaviours(sequence, nexts)
    real = nexts != 0
    assert set(draws[real].unique().tolist()) <= {3, 5, 7}
    assert not (draws == nexts)[real].any()
    # where the next item is 3, the others come by their counts: 5 twice as often as 7
    others = draws[nexts == 3]
    share = (others == 5).float().mean()
    assert abs(share - 2 / 3) < 0.01, share
    in_batch = make_model("dien").train()
    assert in_batch.params.aux_negatives == "in_batch"  # the released code's, by default
    # a batch whose histories hold a single item: in_batch has no other one, so no pair
    # counts and L_aux is 0; uniform still contrasts every pair
    batch = make_batch()
    single = dict(batch, sequence=(batch["sequence"] != 0).long() * 4)
    assert in_batch(single).terms.aux == 0
    assert make_model("dien", aux_negatives="uniform").train()(single).terms.aux > 0
    assert in_batch(batch).terms.aux > 0


def test_feedrec_adds_the_absolute_cosine_of_its_two_interests():
    batch = make_batch()
    model = make_model("feedrec", lambda_disentangle=0.7).eval()
    out = model(batch)
    scores, aux = out.scores, out.terms.disentangle
    assert (aux >= 0).all() and (aux[:3] == 0).all()  # a one-sided history has a zero interest
    bce = F.binary_cross_entropy_with_logits(scores, batch["label"])
    torch.testing.assert_close(model.loss(out, batch), bce + 0.7 * aux.mean(), rtol=0, atol=0)


def test_dfn_reads_click_and_unclick_sequences_apart():
    """Positives are DFN's clicks, negatives its unclicks: with no negative in the history,
    changing which items are negative elsewhere cannot matter, and moving one event from
    the click to the unclick sequence changes the score."""
    model = make_model("dfn").eval()
    batch = make_batch()
    base = model(batch).scores
    moved = batch["sequence_label"].clone()
    moved[2, -1] = 0  # row 2 (all positive): its newest event becomes an unclick
    assert not torch.allclose(model(dict(batch, sequence_label=moved)).scores[2], base[2])
    assert not hasattr(model.embed, "label") or model.embed.label is None


@pytest.mark.parametrize("readout", ["target", "sum"])
def test_dfn_internal_transformer_reads_out_at_t_or_sums_its_positions(readout):
    """DFN's internal interaction is one post-LN Transformer layer over [t; the feedback's
    behaviours]: ``target`` is its output at t, ``sum`` (the authors' code) the sum of its
    outputs over t and the kept behaviours. Checked against the layer written out for one
    candidate at a time, over the kept behaviours only."""
    from trainers.models.dfn import _TargetTransformer

    torch.manual_seed(0)
    layer = _TargetTransformer(8, 2, 0.0, readout).eval()
    target, history = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    keep = torch.tensor([[False, True, True, False, True], [False] * 5])
    got = layer(target, history, keep)  # (2, 3, 8)

    def one(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # (8,), (n, 8) -> (8,)
        x = torch.cat([t[None], h])  # (1+n, 8)
        q, k, v = (f(x).view(-1, 2, 4).transpose(0, 1) for f in (layer.q, layer.k, layer.v))
        mixed = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v  # (2, 1+n, 4)
        x = layer.ln_attn(x + layer.out(mixed.transpose(0, 1).reshape(-1, 8)))
        x = layer.ln_ffn(x + layer.ffn(x))
        return x[0] if readout == "target" else x.sum(dim=0)

    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(got[b, c], one(target[b, c], history[b][keep[b]]))


def test_din_weights_are_not_normalised():
    """DIN keeps Σ_j a_j (no softmax): repeating the history's items changes the interest."""
    model = make_model("din").eval()
    seq = torch.tensor([[0, 0, 0, 0, 5, 7], [0, 0, 5, 7, 5, 7]])
    y = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]])
    batch = {"user": torch.tensor([1, 2]), "items": torch.tensor([[3], [3]]),
             "label": torch.zeros(2, 1), "sequence": seq, "sequence_label": y}
    scores = model(batch).scores
    assert not torch.allclose(scores[0], scores[1])


@pytest.mark.parametrize("name", BASELINES)
def test_a_few_steps_lower_the_loss(name):
    batch = make_batch(B=8)
    model = make_model(name, dropout=0.0).train()
    opt = build_optimizer(model, lr=0.01, l2=0.0)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model.loss(model(batch), batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
