"""FMLP-Rec (trainers/models/fmlp.py): the global and the causal filter, prefix training
with no target visible to the filter, and the loss by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.models.fmlp import FilterLayer, FilterStack
from trainers.models.next_item import prefix_rows
from trainers.registry import DataSizes, build_model

L, N = 6, 15
SIZES = DataSizes(num_users=5, num_items=N, history_slices=1, set_size=1, sequence_len=L)
PARAMS = dict(embed_dim=4, embed_init_std=0.3, num_layers=2, ffn_dim=8, dropout=0.0,
              filter="global", loss="bce", loss_negatives=8, gbce_t=0.75, softmax_max_logits=60,
              history_targets=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def batch() -> dict[str, torch.Tensor]:
    return {"user": torch.tensor([1, 2]),
            "sequence": torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6]]),
            "items": torch.tensor([[7, 9], [8, 10]]), "label": torch.tensor([[1.0, 0.0]] * 2)}


def test_global_filter_is_fft_multiply_ifft():
    layer = FilterLayer(L, 3, 0.0, causal=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[..., 0] = 1.0  # W = 1: the identity filter
    x = torch.randn(2, L, 3)
    assert torch.allclose(layer.filtered(x), x, atol=1e-6)
    torch.manual_seed(0)
    layer = FilterLayer(L, 3, 0.0, causal=False)
    w = torch.view_as_complex(layer.weight)
    expected = torch.fft.ifft(torch.fft.fft(x, dim=1) * torch.cat([w, w[1:-1].flip(0).conj()]),
                              dim=1).real  # the full spectrum of a real signal, L even
    assert torch.allclose(layer.filtered(x), expected, atol=1e-6)
    # global: the first slot's output depends on the last slot's input
    x.requires_grad_()
    g = torch.autograd.grad(layer.filtered(x)[:, 0].sum(), x)[0]
    assert g[:, -1].abs().sum() > 0


def test_causal_filter_is_a_linear_convolution_by_hand():
    torch.manual_seed(0)
    layer = FilterLayer(L, 2, 0.0, causal=True)
    kernel = torch.fft.irfft(torch.view_as_complex(layer.weight), n=2 * L, dim=0,
                             norm="ortho")[:L]  # (L, d)
    x = torch.randn(3, L, 2)
    by_hand = torch.zeros_like(x)
    for t in range(L):
        for k in range(t + 1):
            by_hand[:, t] += kernel[k] * x[:, t - k]
    assert torch.allclose(layer.filtered(x), by_hand, atol=1e-6)


def test_prefix_rows_by_hand():
    sequence = torch.tensor([[0, 5, 6, 7]])
    valid = torch.tensor([[False, True, True]])  # t = 1, 2
    prefixes, b, t = prefix_rows(sequence, valid)
    assert prefixes.tolist() == [[0, 0, 0, 5], [0, 0, 5, 6]]
    assert b.tolist() == [0, 0] and t.tolist() == [1, 2]


def test_training_prefix_scores_see_no_later_item():
    torch.manual_seed(0)
    model = build_model("fmlp", PARAMS, SIZES).train()
    b = batch()
    torch.manual_seed(1)
    before = model(b).terms.pairs  # (M, 2), row order = valid.nonzero()
    changed = {**b, "sequence": b["sequence"].clone()}
    changed["sequence"][:, -1] = 11  # the newest item: only the last prefix's target
    torch.manual_seed(1)
    after = model(changed).terms.pairs
    # prefixes: row 0 at t = 3, 4; row 1 at t = 0..4; t = 4 predicts the changed item
    last = torch.tensor([False, True, False, False, False, False, True])
    assert torch.equal(before[~last], after[~last])
    assert torch.equal(before[last, 1], after[last, 1])  # same negative, same state
    assert not torch.equal(before[last, 0], after[last, 0])


def test_loss_by_hand_and_inference():
    torch.manual_seed(0)
    model = build_model("fmlp", PARAMS, SIZES).train()
    b = batch()
    out = model(b)
    scores, prefixes = out.scores, out.terms.pairs  # (B, C), (M, 2)
    assert prefixes.shape == (7, 2)
    bce = lambda s, y: -(y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).sum(-1)
    rows = bce(scores, b["label"])
    per_prefix = bce(prefixes, torch.tensor([1.0, 0.0]))
    expected = torch.cat([rows, per_prefix]).sum() / (2 + 7)
    assert torch.allclose(model.loss(out, b), expected, atol=1e-6)
    model.eval()
    with torch.no_grad():
        h = model.stack(model.item(b["sequence"]), b["sequence"] != 0)[:, -1]
        expected = (model.item(b["items"]) @ h[..., None]).squeeze(-1)
        assert torch.allclose(model(b).scores, expected, atol=1e-6)
    assert torch.allclose(scores, expected, atol=1e-5)  # dropout 0: training scores alike


def test_causal_filter_trains_every_position_in_one_pass():
    """``filter: causal``: no state at t depends on a later slot, each position's score is
    its own causal state against [next item, the batch's negative], and the loss is the
    candidates' and positions' BCE mean (the same targets the prefixes train)."""
    torch.manual_seed(0)
    model = build_model("fmlp", {**PARAMS, "filter": "causal"}, SIZES).train()
    b = batch()
    b["next_negatives"] = torch.tensor([[2, 2, 2, 2, 2], [9, 9, 9, 9, 9]])
    out = model(b)
    scores, (history, _, valid) = out.scores, out.terms  # (B, C), (B, L-1, 2)
    # row 0 holds items from slot 3, row 1 from slot 0; the last slot has no next item here
    assert valid.tolist() == [[False, False, False, True, True], [True] * 5]
    with torch.no_grad():
        states = model.stack(model.item(b["sequence"]), b["sequence"] != 0)  # (B, L, d)
        changed = b["sequence"].clone()
        changed[:, -1] = 11
        later = model.stack(model.item(changed), changed != 0)
        torch.testing.assert_close(states[:, :-1], later[:, :-1])  # slot < L-1: unchanged
        nxt = torch.stack([b["sequence"][:, 1:], b["next_negatives"]], -1)  # (B, L-1, 2)
        expected = (model.item(nxt) @ states[:, :-1].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(history[valid], expected[valid])
    bce = lambda s, y: -(y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).sum(-1)
    rows = bce(scores, b["label"])
    per_position = bce(history[valid], torch.tensor([1.0, 0.0]))
    expected_loss = torch.cat([rows, per_position]).sum() / (2 + 7)
    torch.testing.assert_close(model.loss(out, b), expected_loss)
    assert not hasattr(model, "_prefixes")


def test_global_filter_prefixes_take_the_batch_negatives():
    torch.manual_seed(0)
    model = build_model("fmlp", PARAMS, SIZES).train()
    b = {**batch(), "next_negatives": torch.full((2, L - 1), 13)}
    prefixes = model(b).terms.pairs  # (M, 2)
    model.eval()
    with torch.no_grad():  # the prefix at (row 1, t = 0) is [1] alone
        one = torch.tensor([[0, 0, 0, 0, 0, 1]])
        h = model.stack(model.item(one), one != 0)[:, -1]
        expected = model.item(torch.tensor([[2, 13]])) @ h.unsqueeze(-1)
    torch.testing.assert_close(prefixes[2], expected.view(2))


@pytest.mark.parametrize("causal", [False, True])
def test_last_states_equal_the_full_stack_at_the_last_slot(causal):
    """``FilterStack.last_states`` (packed kept slots, the last block at the last slot) is
    the stack's last slot, values and gradients, for either filter; the causal one also over
    the newest L' < L slots; a row whose last slot is padding gets 0."""
    torch.manual_seed(0)
    stack = FilterStack(L, 4, num_layers=2, ffn_dim=8, dropout=0.0, causal=causal)
    layer = stack.blocks[0].filter
    x = torch.randn(3, L, 4)
    torch.testing.assert_close(layer.filtered_last(x), layer.filtered(x)[:, -1])
    sequence = torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 9, 0]])
    for width in ([L, L - 2] if causal else [L]):
        e = torch.randn(3, width, 4, requires_grad=True)
        keep = sequence[:, L - width:] != 0
        full = stack(e, keep)[:, -1]  # (3, 4)
        last = stack.last_states(e, keep)
        torch.testing.assert_close(last, full)
        assert torch.equal(last[2], torch.zeros(4))
        weights = torch.randn(3, 4)
        grads = [torch.autograd.grad((h * weights).sum(), [e, *stack.parameters()])
                 for h in (full, last)]
        for g_full, g_last in zip(*grads):
            torch.testing.assert_close(g_last, g_full)
    with pytest.raises(ValueError, match="built for length"):
        layer.filtered_last(torch.randn(1, L + 1, 4))
