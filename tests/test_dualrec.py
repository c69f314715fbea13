"""DualRec and its dual backbones (trainers/models/dual.py, dualrec.py, dual_gru4rec.py,
dual_fmlp.py): Eq. 8 windows, masks both ways, the transfer, Eq. 14 by hand, the ablations,
and the chunked full softmax (trainers/models/softmax.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainers.batches import BatchBuilder, EventSequences, Samples
from trainers.embedding import build_optimizer
from trainers.protocols import PROTOCOLS
from trainers.models.dual import crop_padding, symmetric_kl, transfer_loss, window_sizes
from trainers.models.softmax import full_softmax_ce
from trainers.models.transformer import direction_mask
from trainers.registry import DataSizes, Output, build_model
from trainers.train import train_epoch, validate

L, N = 8, 20
SIZES = DataSizes(num_users=5, num_items=N, history_slices=1, set_size=1, sequence_len=L)
COMMON = dict(embed_dim=8, init_std=0.3, dropout=0.0, encoders="dual", alpha=0.3, beta=0.1,
              transfer_reduction="mean", softmax_max_logits=60,  # 3 rows a block
              loss="ce", loss_negatives=8, gbce_t=0.75)
BACKBONES = {
    "dualrec": dict(num_layers=2, num_heads=4, ffn_dim=8, relative_position="learned",
                    multi_scale=True, windows_at_inference=False, layer_norm=True,
                    residual=True),
    "dual_gru4rec": dict(num_layers=1, num_scales=4),
    "dual_fmlp": dict(num_layers=2, ffn_dim=8, num_scales=4),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(name: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(name, {**COMMON, **BACKBONES[name], **over}, SIZES)


def toy_batch(short: bool = False) -> dict[str, torch.Tensor]:
    """Three rows, one without padding; ``short``: the full row drops its 5 oldest items, so
    every row starts with padding (the models crop slots that are padding in every row)."""
    sequence = torch.tensor([[0, 0, 0, 0, 0, 0, 3, 4],
                             [1, 2, 3, 4, 5, 6, 7, 8],
                             [0, 0, 0, 9, 2, 2, 11, 12]])
    if short:
        sequence[1, :5] = 0
    items = torch.tensor([[5, 19], [9, 1], [13, 20]])
    return {"user": torch.tensor([1, 2, 3]), "sequence": sequence, "items": items,
            "label": torch.tensor([[1.0, 0.0]] * 3)}


# --------------------------------------------------------------------------- Eq. 8-9


def test_window_sizes_are_eq8():
    assert window_sizes(8, 50) == [2, 3, 4, 5, 7, 11, 21, 50]
    # h=4, n=10: 2, 3, then 2 + ceil(e^1/e^2 * 8) = 2 + ceil(2.94) = 5, 2 + ceil(8) = 10
    assert window_sizes(4, 10) == [2, 3, 5, 10]
    with pytest.raises(ValueError, match="even"):
        window_sizes(3, 10)


@pytest.mark.parametrize("name", ["dual_gru4rec", "dual_fmlp"])
def test_multi_scale_inputs_need_an_even_number_of_scales(name):
    """Eq. 8 splits h scales in halves: an odd ``num_scales`` is a config error at load."""
    with pytest.raises(ValueError, match="num_scales must be even"):
        build(name, num_scales=3)


def test_direction_masks_with_windows_by_hand():
    windows = torch.tensor([2, 3])
    past = ~direction_mask(4, "past", windows, torch.device("cpu"))  # True = visible
    future = ~direction_mask(4, "future", windows, torch.device("cpu"))
    assert past[0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert past[1].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]]
    assert future[0].int().tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    plain = ~direction_mask(4, "past", None, torch.device("cpu"))
    assert plain.shape == (1, 4, 4)
    assert plain[0].int().tolist() == torch.ones(4, 4).tril().int().tolist()


def test_crop_padding_drops_slots_that_are_padding_in_every_row():
    assert crop_padding(torch.tensor([[0, 0, 0, 1], [0, 0, 2, 3]])).tolist() == [[0, 1], [2, 3]]
    assert crop_padding(torch.tensor([[4, 5], [0, 6]])).tolist() == [[4, 5], [0, 6]]
    assert crop_padding(torch.zeros(2, 3, dtype=torch.int64)).shape == (2, 1)


# --------------------------------------------------------------------------- Eq. 10-11


def test_symmetric_kl_by_hand():
    p = torch.tensor([0.0, 0.0])  # P = (.5, .5)
    q = torch.tensor([math.log(3.0), 0.0])  # Q = (.75, .25)
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(symmetric_kl(p, q)) == pytest.approx((kl_pq + kl_qp) / 2, abs=1e-6)
    x, y = torch.randn(5, 3, 7), torch.randn(5, 3, 7)
    assert torch.allclose(symmetric_kl(x, y), symmetric_kl(y, x))
    assert torch.allclose(symmetric_kl(x, x), torch.zeros(5, 3), atol=1e-6)
    assert (symmetric_kl(x, y) > 0).all()


def test_transfer_reductions():
    p = [torch.randn(4, 3, 5), torch.randn(4, 3, 5)]
    f = [torch.randn(4, 3, 5), torch.randn(4, 3, 5)]
    per_level = [symmetric_kl(a, b) for a, b in zip(p, f)]  # (B, S) each
    mean = (per_level[0].mean() + per_level[1].mean()) / 2
    assert torch.allclose(transfer_loss(p, f, "mean"), mean)
    assert torch.allclose(transfer_loss(p, f, "sum"), 3 * mean)  # Eq. 10 sums the S heads


# --------------------------------------------------------------------------- softmax


def test_chunked_softmax_equals_unchunked_loss_and_gradient():
    torch.manual_seed(0)
    M, d = 13, 4
    inputs = [torch.randn(M, d, requires_grad=True), torch.randn(N, d, requires_grad=True),
              torch.randn(N, requires_grad=True)]
    targets = torch.randint(1, N + 1, (M,))
    results = []
    for max_logits in (4 * N, 100 * N):  # 4 blocks of 4 rows (checkpointed) vs one block
        losses = full_softmax_ce(inputs[0], targets, inputs[1], max_logits, inputs[2])
        grads = torch.autograd.grad((losses * torch.arange(1.0, M + 1)).sum(), inputs)
        results.append((losses.detach(), grads))
    (l4, g4), (l1, g1) = results
    assert torch.allclose(l4, l1, atol=1e-6)
    for a, b in zip(g4, g1):
        assert torch.allclose(a, b, atol=1e-6)
    logits = inputs[0] @ inputs[1].T + inputs[2]  # item k is row k-1
    by_hand = -logits.log_softmax(-1).gather(1, (targets - 1)[:, None]).squeeze(1)
    assert torch.allclose(l1, by_hand.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="1..20"):
        full_softmax_ce(inputs[0], torch.zeros(M, dtype=torch.int64), inputs[1], 4 * N)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name,over", [
    ("dualrec", {}), ("dualrec", {"relative_position": "sinusoidal"}),
    ("dual_gru4rec", {}), ("dual_fmlp", {})])
@pytest.mark.parametrize("training", [True, False])
def test_no_output_depends_on_the_other_side(name, over, training):
    model = build(name, **over).train(training)
    sequence = toy_batch()["sequence"]
    keep = sequence != 0
    for direction, encoder in (("past", model.past), ("future", model.future)):
        e = model.item(sequence).detach().requires_grad_()
        states = encoder(e, keep, direction, False)[0]  # (B, L, d)
        probe = torch.randn(states.shape[-1])  # a LayerNorm output's plain sum is constant
        for t in range(L):
            g = torch.autograd.grad(states[:, t] @ probe, e, grad_outputs=torch.ones(3),
                                    retain_graph=True)[0].abs().sum(-1)
            hidden = g[:, t + 1:] if direction == "past" else g[:, :t]
            seen = g[:, :t + 1] if direction == "past" else g[:, t:]
            assert (hidden == 0).all(), (direction, t)
            # the visible side matters wherever the query is a real item
            assert (seen.sum(1)[keep[:, t]] > 0).all(), (direction, t)
            assert (states[:, t][~keep[:, t]] == 0).all()  # padding rows are 0


@pytest.mark.parametrize("name", ["dual_gru4rec", "dual_fmlp"])
def test_scales_are_the_inputs_truncated_to_each_window(name):
    model = build(name).train()
    sequence = toy_batch()["sequence"]
    for direction, encoder in (("past", model.past), ("future", model.future)):
        e = model.item(sequence)
        _, levels = encoder(e, sequence != 0, direction, True)
        assert len(levels) == 1 and levels[0].shape == (3, 4, 8)
        for k, w in enumerate(window_sizes(4, L)):  # [2, 3, 4, 8] for L=8
            truncated = sequence * (torch.arange(L) >= L - w)  # only the w newest slots
            states = encoder(model.item(truncated), truncated != 0, direction, False)[0]
            n = (truncated != 0).sum(1)
            at = -1 if direction == "past" else L - n  # where the window has been read whole
            expected = states[torch.arange(3), at] if direction == "future" else states[:, at]
            assert torch.allclose(levels[0][:, k], expected, atol=1e-5), (direction, w)


# --------------------------------------------------------------------------- Eq. 14


def _hand_ce(states: torch.Tensor, table: torch.Tensor,
             positions: list[tuple[int, int, int]]) -> torch.Tensor:
    """Mean −log softmax over items 1..N at (row, slot, target) triples."""
    terms = [-(states[b, t] @ table[1:].T).log_softmax(-1)[target - 1]
             for b, t, target in positions]
    return torch.stack(terms).mean()


def _positions(full: torch.Tensor, direction: str) -> list[tuple[int, int, int]]:
    """Hand list: past slot t (item full[t]) predicts full[t+1]; future slot t (item full[t+1])
    predicts full[t]; both must be items."""
    out = []
    for b in range(full.shape[0]):
        for t in range(L):
            item, target = ((full[b, t], full[b, t + 1]) if direction == "past"
                            else (full[b, t + 1], full[b, t]))
            if item != 0 and target != 0:
                out.append((b, t, int(target)))
    return out


def test_first_row_targets_by_hand():
    full = torch.cat([toy_batch()["sequence"], toy_batch()["items"][:, :1]], 1)[:1]
    # [0 0 0 0 0 0 3 4 5]: past 3->4, 4->5; future: 4->3, 5->4 (slot 5 holds 3, whose
    # previous item is padding, so it predicts nothing)
    assert _positions(full, "past") == [(0, 6, 4), (0, 7, 5)]
    assert _positions(full, "future") == [(0, 6, 3), (0, 7, 4)]


def _head_features(model, batch) -> dict[str, list[torch.Tensor]]:
    """Per encoder and layer, (B, h, e) head outputs averaged over real positions, rebuilt
    from the attention modules' own outputs."""
    captured = {"past": [], "future": []}
    hooks = []
    for name in captured:
        for layer in getattr(model, name).layers:
            hooks.append(layer.attn.register_forward_hook(
                lambda m, args, out, name=name: captured[name].append(out[1])))
    full = torch.cat([batch["sequence"], batch["items"][:, :1]], 1)
    model(batch)
    for h in hooks:
        h.remove()
    features = {}
    for name, inputs in (("past", full[:, :-1]), ("future", full[:, 1:])):
        real = (inputs != 0).float()[:, None, :, None]  # (B, 1, L, 1)
        real = [real[:, :, L - heads.shape[2]:] for heads in captured[name]]  # cropped slots
        features[name] = [(heads * r).sum(2) / r.sum(2) for heads, r in zip(captured[name], real)]
    return features


@pytest.mark.parametrize("short", [False, True])
@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_loss_is_eq14_by_hand(name, short):
    model = build(name).train()
    batch = toy_batch(short)
    full = torch.cat([batch["sequence"], batch["items"][:, :1]], 1)
    table = model.item.weight
    past = model.past(model.item(full[:, :-1]), full[:, :-1] != 0, "past", True)
    future = model.future(model.item(full[:, 1:]), full[:, 1:] != 0, "future", True)
    ce_past = _hand_ce(past[0], table, _positions(full, "past"))
    ce_future = _hand_ce(future[0], table, _positions(full, "future"))
    if name == "dualrec":  # the head outputs, averaged over each input's real slots
        features = _head_features(model, batch)
        levels_p, levels_f = features["past"], features["future"]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(levels_p, past[1]))
    else:
        levels_p, levels_f = past[1], future[1]
    kl = torch.stack([
        torch.stack([symmetric_kl(p[:, s], f[:, s]) for s in range(p.shape[1])]).mean()
        for p, f in zip(levels_p, levels_f)]).mean()  # mean over batch, scales, then levels
    expected = 0.3 * ce_past + 0.7 * ce_future + 0.1 * kl
    scores = model(batch)
    assert torch.allclose(model.loss(scores, batch), expected, atol=1e-5)

    # β = 0: exactly the two weighted cross-entropy terms, and the rest was β·L_reg
    no_transfer = build(name, beta=0.0)
    no_transfer.load_state_dict(model.state_dict())
    no_transfer.train()
    got = no_transfer.loss(no_transfer(batch), batch)
    assert torch.allclose(got, 0.3 * ce_past + 0.7 * ce_future, atol=1e-5)
    assert torch.allclose(model.loss(model(batch), batch) - got, 0.1 * kl, atol=1e-5)


def test_transfer_sum_is_eq10():
    mean, summed = build("dualrec"), build("dualrec", transfer_reduction="sum")
    summed.load_state_dict(mean.state_dict())
    no_transfer = build("dualrec", beta=0.0)
    no_transfer.load_state_dict(mean.state_dict())
    batch = toy_batch()
    base = no_transfer.loss(no_transfer(batch), batch)
    kl_mean = mean.loss(mean(batch), batch) - base
    kl_sum = summed.loss(summed(batch), batch) - base
    assert torch.allclose(kl_sum, 4 * kl_mean, atol=1e-5)  # 4 heads summed, not averaged


# --------------------------------------------------------------------------- ablations


def _eval_output(model, batch) -> Output:
    model.eval()
    with torch.no_grad():
        return model(batch)


def _eval_scores(model, batch) -> torch.Tensor:
    return _eval_output(model, batch).scores


@pytest.mark.parametrize("short", [False, True])
@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_inference_uses_the_past_encoder_only(name, short):
    model, batch = build(name), toy_batch(short)
    before = _eval_scores(model, batch)
    with torch.no_grad():
        for p in model.future.parameters():
            p.add_(1.0)
    assert torch.equal(_eval_scores(model, batch), before)
    with torch.no_grad():
        states = model.past(model.item(batch["sequence"]), batch["sequence"] != 0, "past",
                            False)[0]
    expected = (model.item(batch["items"]) @ states[:, -1, :, None]).squeeze(-1)  # Eq. 12
    assert torch.allclose(before, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_past_only_is_the_past_encoder_and_its_loss(name):
    dual = build(name, beta=0.0)
    past_only = build(name, encoders="past", beta=0.0)
    assert past_only.future is None
    past_only.load_state_dict(dual.state_dict(), strict=False)
    batch = toy_batch()
    assert torch.equal(_eval_scores(past_only, batch), _eval_scores(dual, batch))
    dual.train(), past_only.train()
    ce = dual.encoder_losses(dual(batch).terms.ce)
    assert torch.allclose(past_only.loss(past_only(batch), batch), ce["past"], atol=1e-6)


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_future_only_trains_the_future_and_reads_the_past(name):
    dual = build(name, beta=0.0)
    future_only = build(name, encoders="future", beta=0.0)
    assert future_only.past is None
    future_only.load_state_dict(dual.state_dict(), strict=False)  # item + future encoder
    batch = toy_batch()
    dual.train(), future_only.train()
    ce = dual.encoder_losses(dual(batch).terms.ce)
    assert torch.allclose(future_only.loss(future_only(batch), batch), ce["future"], atol=1e-6)
    # at inference its (future-trained) parameters read the history as a past encoder
    past_only = build(name, encoders="past", beta=0.0)
    past_only.item.load_state_dict(dual.item.state_dict())
    past_only.past.load_state_dict(dual.future.state_dict())
    assert torch.allclose(_eval_scores(future_only, batch), _eval_scores(past_only, batch))


def test_windows_score_as_they_train_by_default_and_train_only_as_the_code():
    """Eq. 9's windows are the heads in training and at inference (the preset, the paper's
    3.5.2: the past encoder sees one context in both); ``windows_at_inference: false`` is the
    released code's training-only windows (inference: the plain causal mask)."""
    from conf.loading import load_config

    assert load_config("sample-loo", "dualrec", "local", []).model.params[
        "windows_at_inference"] is True
    batch = toy_batch()
    paper = build("dualrec", windows_at_inference=True)
    code = build("dualrec", windows_at_inference=False)
    plain = build("dualrec", multi_scale=False)
    code.load_state_dict(paper.state_dict())
    plain.load_state_dict(paper.state_dict())
    paper.train()
    windowed = paper(batch).scores.detach()  # training forward (dropout 0): windows on
    assert torch.allclose(_eval_scores(paper, batch), windowed, atol=1e-6)
    assert torch.allclose(_eval_scores(code, batch), _eval_scores(plain, batch))
    assert not torch.allclose(windowed, _eval_scores(plain, batch))


def test_transfer_needs_both_encoders():
    with pytest.raises(ValueError, match="set beta: 0 or encoders: dual"):
        build("dualrec", encoders="past")
    with pytest.raises(ValueError, match="even num_heads"):
        build("dualrec", num_heads=1, embed_dim=8)


def test_loss_without_a_training_forward_is_an_error():
    model, batch = build("dualrec"), toy_batch()
    with pytest.raises(RuntimeError, match="training forward"):
        model.loss(_eval_output(model, batch), batch)


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_a_few_steps_fit_a_toy_sequence(name):
    model, batch = build(name), toy_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert float(model.item.weight[0].detach().abs().sum()) == 0.0  # the padding row stays zero


# --------------------------------------------------------------------------- the real loop


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp", "fmlp", "bert4rec"])
def test_presets_train_and_validate_through_the_loop(name):
    """Each preset's params and train recipe, leave_one_out batches from trainers/batches.py,
    one trainers.train.train_epoch and validate: the batch contract and the loop's settings
    (weight decay, grad clip) hold for every model of this family."""
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "models"
                             / f"{name}.yaml").read_text())
    params, recipe = preset["model"]["params"], preset["train"]
    g = np.random.default_rng(0)
    lengths = g.integers(5, 12, size=12)  # users 1..12
    offsets = np.concatenate([[0, 0], np.cumsum(lengths)])  # user 0 is padding
    events = g.integers(1, N + 1, size=int(lengths.sum()))
    sequences = EventSequences.from_csr(offsets, events, np.ones_like(events))
    users = np.arange(1, 13)

    def split(back: int, negatives: int) -> Samples:  # leave-one-out: cut = n - back
        cut = lengths - back
        target = events[offsets[users] + cut]
        cand = np.concatenate([target[:, None], g.integers(1, N + 1, (12, negatives))], 1)
        return Samples.from_arrays({"user": users, "cut": cut, "candidates": cand,
                                    "real_negatives": np.zeros(12), "target_label": np.ones(12)})

    torch.manual_seed(0)
    model = build_model(name, params, SIZES)
    builder = BatchBuilder(PROTOCOLS["leave_one_out"], model.inputs, None, None, 0, sequences, L)
    optimizer = build_optimizer(model, recipe["lr"], recipe["l2"], recipe["weight_decay"])
    loss, rate = train_epoch(model, model, optimizer, builder, split(3, 1), torch.arange(12),
                             5, recipe["l2"], 1, 0, 1, recipe["grad_clip"])
    assert math.isfinite(loss) and rate > 0
    metrics = validate(model, builder, split(2, 9), 5, 0, 1, PROTOCOLS["leave_one_out"])
    assert 0.0 < metrics["mrr"] <= 1.0 and 0.0 <= metrics["hr@1"] <= metrics["hr@10"] == 1.0


# --------------------------------------------------------------------------- Table 3


@pytest.mark.parametrize("name", ["dualrec", "dual_gru4rec", "dual_fmlp"])
def test_without_dual_encoders_one_encoder_reads_both_directions(name):
    """Table 3 "w/o DE": the future representations come from the past encoder's own
    parameters (its right-to-left mask); Eq. 14 and the transfer are unchanged, so the
    loss is the dual model's with the future encoder a copy of the past one."""
    shared = build(name, encoders="shared")
    assert shared.future is shared.past
    dual = build(name)
    assert (sum(p.numel() for p in shared.parameters())
            == sum(p.numel() for p in dual.parameters())
            - sum(p.numel() for p in dual.future.parameters()))
    dual.item.load_state_dict(shared.item.state_dict())
    dual.past.load_state_dict(shared.past.state_dict())
    dual.future.load_state_dict(shared.past.state_dict())
    batch = toy_batch()
    shared.train(), dual.train()
    assert torch.allclose(shared.loss(shared(batch), batch), dual.loss(dual(batch), batch),
                          atol=1e-6)


def test_without_ln_and_without_rc_are_eq6_7_without_them():
    """Table 3 "w/o LN": H = X + Drop(MSA(X)), X' = H + Drop(PFF(H)); "w/o RC":
    H = LN(Drop(MSA(X))), X' = LN(Drop(PFF(H)))."""
    from trainers.models.transformer import TransformerLayer

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    blocked = direction_mask(5, "past", None, x.device)[None]
    keep = torch.ones(2, 5, 1)
    for layer_norm, residual in ((False, True), (True, False)):
        torch.manual_seed(1)
        layer = TransformerLayer(8, 2, 16, 0.0, "none", 5, layer_norm, residual).eval()
        a = layer.attn(x, blocked)[0]
        if not layer_norm:
            h = x + a
            expected = h + layer.ffn(h)
        else:
            h = layer.ln_attn(a)
            expected = layer.ln_ffn(layer.ffn(h))
        assert torch.allclose(layer(x, blocked, keep)[0], expected, atol=1e-6)
        assert any(isinstance(m, torch.nn.LayerNorm) for m in layer.modules()) == layer_norm


def test_without_relative_positions_the_order_of_the_history_does_not_matter():
    """Table 3 "w/o RPE": DualRec has no absolute positions (Eq. 2), so without Eq. 3's
    relative term a one-layer encoder's last state depends on the set of earlier items only;
    with it, on their order."""
    batch = toy_batch()
    swapped = {**batch, "sequence": batch["sequence"].clone()}
    swapped["sequence"][1, [0, 3]] = batch["sequence"][1, [3, 0]]  # reorder the history
    for relative, same in (("none", True), ("learned", False)):
        model = build("dualrec", relative_position=relative, num_layers=1, multi_scale=False,
                      beta=0.0).eval()
        assert any("position" in n for n, _ in model.named_parameters()) != same
        a, b = _eval_scores(model, batch)[1], _eval_scores(model, swapped)[1]
        assert torch.allclose(a, b, atol=1e-6) == same


def test_tune_runs_every_row_of_table_3_and_table_5():
    from conf.loading import load_config

    cfg = load_config("sample-loo", "dualrec", "local", [])
    assert list(cfg.sweep.variants) == ["DualRec", "w/o DE", "w/o BIT", "w/o RPE", "w/o LN",
                                        "w/o RC", "past only", "future only"]
    for overrides in cfg.sweep.variants.values():
        params = {**cfg.model.params,
                  **{k.removeprefix("model.params."): v for k, v in overrides.items()}}
        build_model("dualrec", params, SIZES)  # every row is a valid model


@pytest.mark.parametrize("name, backbone", [("dual_gru4rec", "GRU4Rec"),
                                            ("dual_fmlp", "FMLP-Rec")])
def test_tune_runs_table_4s_rows_under_one_recipe(name, backbone):
    """Table 4 compares each backbone with its dual network; ``seqrec tune --model <dual>``
    runs all three rows with the dual preset's own training recipe, so the plain row is the
    past encoder alone (no future encoder, no transfer), not the backbone's own preset."""
    from conf.loading import load_config

    cfg = load_config("sample-loo", name, "local", [])
    rows = {f"Dual{backbone} with BIT": ("future", 0.1), f"Dual{backbone}": ("future", 0.0),
            f"{backbone} past only": (None, 0.0)}
    assert list(cfg.sweep.variants) == list(rows) and cfg.sweep.mode == "variants"
    for row, (future, beta) in rows.items():
        params = {**cfg.model.params, **{k.removeprefix("model.params."): v
                                         for k, v in cfg.sweep.variants[row].items()}}
        model = build_model(name, params, SIZES)
        assert model.past is not None and (model.future is not None) == (future is not None)
        assert model.params.beta == beta
