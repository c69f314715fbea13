"""The next-item objectives (trainers/models/objectives.py): each against a hand
computation on a tiny table, and ``model.params.loss`` = ce | sampled_softmax | gbce
training every next-item model on a real leave_one_out batch (tests/tiny_index.py)."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

import tiny_index
from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.models.dual import transfer_loss
from trainers.models.next_item import history_pairs
from trainers.models.objectives import (Predictions, draw_negatives, gbce_beta,
                                        prediction_losses, sequence_predictions)
from trainers.registry import DataSizes, build_model, model_class, variable_length
from trainers.split_data import declared_inputs, load_split_data

MODELS = ["sasrec", "gru4rec", "caser", "bert4rec", "fmlp", "dualrec", "dual_gru4rec",
          "dual_fmlp"]
OBJECTIVES = ["ce", "sampled_softmax", "gbce"]
K = 16  # loss_negatives on the tiny index (40 items; gbce needs k < I)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# A tiny item table: items 1..5 (row 0 is padding, never a class), d = 2.
I = 5
TABLE = torch.tensor([[50.0, 50.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5],
                      [0.3, -2.0]])
BIAS = torch.tensor([50.0, 0.1, -0.2, 0.3, 0.0, 0.5])
STATES = torch.tensor([[0.5, -1.0], [2.0, 0.5]])  # M = 2


def rows(ids: torch.Tensor):
    return TABLE[ids], BIAS[ids]


def logit(m: int, item: int) -> float:
    """s = h_m · W_item + b_item, by hand."""
    h, w = STATES[m].tolist(), TABLE[item].tolist()
    return h[0] * w[0] + h[1] * w[1] + BIAS[item].item()


def test_ce_is_the_log_softmax_over_items_by_hand():
    targets = torch.tensor([2, 3])
    got = prediction_losses("ce", Predictions(STATES, targets, None), rows, I, 100, 0.75)
    for m, target in enumerate(targets.tolist()):
        normaliser = sum(math.exp(logit(m, i)) for i in range(1, I + 1))  # no padding row
        assert got[m].item() == pytest.approx(math.log(normaliser) - logit(m, target),
                                              rel=1e-6)


def test_sampled_softmax_by_hand_masks_the_target_drawn_as_a_negative():
    targets = torch.tensor([2, 3])
    negatives = torch.tensor([[2, 1, 1]])  # one set for both; item 2 is row 0's target
    got = prediction_losses("sampled_softmax", Predictions(STATES, targets, negatives), rows,
                            I, 100, 0.75)
    for m, target in enumerate(targets.tolist()):
        classes = [target] + [i for i in negatives[0].tolist() if i != target]
        normaliser = sum(math.exp(logit(m, i)) for i in classes)
        assert got[m].item() == pytest.approx(math.log(normaliser) - logit(m, target),
                                              rel=1e-6)


def test_gbce_beta_by_hand():
    # α = k/(I-1) = 2/4; β = α(t(1 - 1/α) + 1/α) = 0.5 (0.75 (1 - 2) + 2) = 0.625
    assert gbce_beta(2, 5, 0.75) == pytest.approx(0.625)
    assert gbce_beta(2, 5, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    assert gbce_beta(2, 5, 1.0) == pytest.approx(0.5)  # t = 1: β = α
    with pytest.raises(ValueError, match="loss_negatives"):
        gbce_beta(5, 5, 0.75)  # α > 1


def test_gbce_loss_by_hand_masks_the_target_drawn_as_a_negative():
    targets = torch.tensor([2, 3])
    negatives = torch.tensor([[2, 5]])  # one set for both; item 2 is row 0's target: left out
    got = prediction_losses("gbce", Predictions(STATES, targets, negatives), rows, I, 100, 0.75)
    beta = 0.625  # k = 2, I = 5: α = 1/2, β = α(t(1 - 1/α) + 1/α) = 0.5 (0.75 (1 - 2) + 2)
    def sigmoid(s: float) -> float:
        return 1 / (1 + math.exp(-s))

    for m, target in enumerate(targets.tolist()):
        negative_terms = sum(math.log(1 - sigmoid(logit(m, i)))
                             for i in negatives[0].tolist() if i != target)
        expected = -(beta * math.log(sigmoid(logit(m, target))) + negative_terms) / 3  # k+1
        assert got[m].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_each_prediction_is_scored_against_its_own_set_of_negatives(loss):
    """Prediction m uses set m mod G (gSASRec's released code draws per position; one set
    shared by a whole batch kept gBCE at random level, issue 23): with a set per prediction,
    each loss equals that prediction's loss against its set alone; with fewer sets than
    predictions, the sets repeat in order."""
    states = torch.cat([STATES, STATES[:1] * 2])  # M = 3
    targets = torch.tensor([2, 3, 1])
    sets = torch.tensor([[2, 1], [5, 4], [3, 3], [1, 1]])  # G = 4 > M: the 4th is unused
    got = prediction_losses(loss, Predictions(states, targets, sets), rows, I, 100, 0.75)
    for m in range(3):
        alone = prediction_losses(loss, Predictions(states[m:m + 1], targets[m:m + 1],
                                                    sets[m:m + 1]), rows, I, 100, 0.75)
        assert got[m].item() == pytest.approx(alone.item(), rel=1e-6)
    two = prediction_losses(loss, Predictions(states, targets, sets[:2]), rows, I, 100, 0.75)
    third = prediction_losses(loss, Predictions(states[2:], targets[2:], sets[:1]), rows, I,
                              100, 0.75)
    assert two[2].item() == pytest.approx(third.item(), rel=1e-6)  # set 2 mod 2 = 0
    assert two[0].item() == pytest.approx(got[0].item(), rel=1e-6)
    none = Predictions(states[:0], targets[:0], sets)  # every target disliked: no terms
    assert prediction_losses(loss, none, rows, I, 100, 0.75).shape == (0,)


def test_negative_feedback_targets_are_no_softmax_targets():
    """Under feedback labels a disliked next item (label 0) or a disliked candidate-row
    target is left out of the softmax objectives' predictions."""
    sequence = torch.tensor([[0, 5, 6, 7], [0, 0, 8, 9]])
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])
    targets, history_labels, _, valid = history_pairs(sequence, 10, labels,
                                                      torch.ones(2, 3, dtype=torch.long))
    states = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)  # state = its slot id
    got_states, got_targets = sequence_predictions(
        states, targets, history_labels, valid, torch.tensor([3, 4]), torch.tensor([1.0, 0.0]))
    # row 0: target 3 (liked) from slot 3; history: slot 0 -> 5 (the empty history), slot 1
    # -> 6 is disliked (out), slot 2 -> 7; row 1: target 4 disliked (out); slot 1 -> 8,
    # slot 2 -> 9
    assert got_targets.tolist() == [3, 5, 7, 8, 9]
    assert got_states.squeeze(1).tolist() == [3, 0, 2, 5, 6]


def test_default_objectives_draw_nothing():
    """A model's own objective draws no sampled negatives: its random draws are unchanged."""
    state = torch.get_rng_state()
    for loss in ("bce", "top1", "bpr", "ce"):
        assert draw_negatives(loss, 40, K, "cpu", 8, 10_000) is None
    assert torch.equal(torch.get_rng_state(), state)
    # as many sets as the budget holds of (K, d) gathered rows: 10,000 // (16 * 8) = 78
    drawn = draw_negatives("gbce", 40, K, "cpu", 8, 10_000)
    assert drawn.shape == (78, K) and 1 <= int(drawn.min()) and int(drawn.max()) <= 40
    assert draw_negatives("gbce", 40, K, "cpu", 8, 10).shape == (1, K)  # at least one


@pytest.fixture(scope="module")
def batch_for(tmp_path_factory):
    """``(model, protocol, overrides) -> (model in train mode, batch)``: a real train batch of
    the tiny index, built as training builds it."""
    root = tmp_path_factory.mktemp("objectives")

    @cache
    def index(protocol: str):
        tiny_index.write_sequence_index(root / protocol / "work", protocol)
        return root / protocol

    @cache
    def split_data(protocol: str, required: frozenset[str], optional: frozenset[str]):
        cfg = tiny_index.tiny_config(index(protocol), ["index.sequence_max_len=10"])
        return load_split_data(cfg, required, ("train",), "cpu", optional)

    def make(name: str, protocol: str, overrides: tuple[str, ...]):
        # the config key is accepted and the params validate (build_model)
        params = dict(load_config("sample-loo", name, "local", list(overrides)).model.params)
        data = split_data(protocol, *declared_inputs(model_class(name)))
        torch.manual_seed(0)
        model = build_model(name, params, data.sizes).train()
        data.builder.trim_padding = variable_length(model)
        torch.manual_seed(0)
        return model, data.builder.rows(data.splits["train"], torch.arange(16))

    return make


def overrides(loss: str, *more: str) -> tuple[str, ...]:
    return (f"model.params.loss={loss}", f"model.params.loss_negatives={K}",
            "model.params.dropout=0.0", *more)


def train_losses(model, batch, steps: int = 6) -> list[float]:
    """Losses of ``steps`` Adam steps on one batch, the same draws (negatives, masks) each."""
    optimizer = build_optimizer(model, 0.01, 0.0)
    losses = []
    for _ in range(steps):
        torch.manual_seed(1)
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("loss", OBJECTIVES)
@pytest.mark.parametrize("name", MODELS)
def test_every_next_item_model_trains_with_every_objective(batch_for, name, loss):
    model, batch = batch_for(name, "leave_one_out", overrides(loss))
    assert model.params.loss == loss
    losses = train_losses(model, batch)
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_objectives_train_on_feedback_labels(batch_for, name):
    model, batch = batch_for(name, "feedback", overrides("sampled_softmax"))
    assert "sequence_label" in batch
    losses = train_losses(model, batch)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("name, more", [("sasrec", ()), ("gru4rec", ()), ("caser", ()),
                                        ("fmlp", ()), ("fmlp", ("model.params.filter=causal",))],
                         ids=["sasrec", "gru4rec", "caser", "fmlp", "fmlp-causal"])
def test_objectives_learn_from_the_predictions_of_the_default(batch_for, name, more):
    """Another objective trains on the default's predictions: the candidate row's target
    and every history position the default scores (prefixes for FMLP-Rec's global filter)."""
    default = "top1" if name == "gru4rec" else "bce"
    model, batch = batch_for(name, "leave_one_out", overrides(default, *more))
    terms = model(batch).terms
    expected = batch["items"].shape[0] + (terms.valid.sum().item() if hasattr(terms, "valid")
                                          else terms.pairs.shape[0])
    model, batch = batch_for(name, "leave_one_out", overrides("ce", *more))
    predictions = model(batch).terms
    assert isinstance(predictions, Predictions) and predictions.negatives is None
    assert predictions.targets.shape[0] == expected
    assert int(predictions.targets.min()) >= 1


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_dual_models_keep_the_transfer_term(batch_for, name):
    """Only the next/previous-item term switches objective: L = α L_past + (1-α) L_future
    + β L_reg, L_reg the KL transfer (Eq. 14)."""
    model, batch = batch_for(name, "leave_one_out", overrides("gbce"))
    p = model.params
    assert p.encoders == "dual" and p.beta > 0
    torch.manual_seed(1)
    out = model(batch)
    terms = model.encoder_losses(out.terms.ce, out.terms.negatives)
    expected = (p.alpha * terms["past"] + (1 - p.alpha) * terms["future"]
                + p.beta * transfer_loss(out.terms.levels["past"], out.terms.levels["future"],
                                         p.transfer_reduction))
    torch.testing.assert_close(model.loss(out, batch), expected)


@pytest.mark.parametrize("name", MODELS)
def test_objective_settings_are_validated(name):
    params = dict(load_config("sample-loo", name).model.params)
    sizes = DataSizes(num_users=3, num_items=40, history_slices=0, set_size=0, sequence_len=10)
    for bad in ({"loss": "softmax"}, {"loss_negatives": 0}, {"gbce_t": 1.5}):
        with pytest.raises(ValueError, match=f"model.params.{next(iter(bad))}"):
            build_model(name, {**params, **bad}, sizes)


@pytest.mark.parametrize("name", MODELS)
def test_sampled_negatives_travel_in_the_forwards_output(batch_for, name):
    """The negatives are drawn in ``forward`` and kept in its ``terms``: ``loss`` reads only
    its own forward's output (trainers/registry.py), whatever ran in between."""
    model, a = batch_for(name, "leave_one_out", overrides("sampled_softmax"))
    torch.manual_seed(1)
    expected = model.loss(model(a), a)
    torch.manual_seed(1)
    out_a = model(a)
    model(a)  # other draws in between
    torch.testing.assert_close(model.loss(out_a, a), expected)
