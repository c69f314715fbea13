"""BERT4Rec (trainers/models/bert4rec.py): Cloze masking, the loss by hand, bidirectional
attention, [mask] appended at inference, and BERT's LayerNorms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.registry import DataSizes, build_model

L, N = 6, 15
SIZES = DataSizes(num_users=5, num_items=N, history_slices=1, set_size=1, sequence_len=L)
PARAMS = dict(embed_dim=8, init_std=0.3, num_layers=2, num_heads=2, ffn_dim=16, dropout=0.0,
              mask_prob=1.0, mask_last_prob=0.0, softmax_max_logits=60,  # 4 rows
              loss="ce", loss_negatives=8, gbce_t=0.75, embed_norm=True, head_norm=True)


def head(model, states: torch.Tensor) -> torch.Tensor:
    """LN(GELU(h W^P + b^P)) of Eq. 7, BERT's masked-LM head, by hand."""
    ln = model.head_norm
    return F.layer_norm(F.gelu(model.project(states)), (8,), ln.weight, ln.bias, 1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(**over):
    torch.manual_seed(0)
    return build_model("bert4rec", {**PARAMS, **over}, SIZES)


def batch(short: bool = False) -> dict[str, torch.Tensor]:
    """``short``: the second row drops its 3 oldest items, so both rows start with padding
    (the model crops slots that are padding in every row)."""
    second = [0, 0, 0, 4, 5, 6] if short else [1, 2, 3, 4, 5, 6]
    return {"user": torch.tensor([1, 2]),
            "sequence": torch.tensor([[0, 0, 0, 3, 4, 5], second]),
            "items": torch.tensor([[7, 9], [8, 10]]), "label": torch.tensor([[1.0, 0.0]] * 2)}


def test_cloze_masks():
    full = torch.tensor([[0, 0, 3, 4, 5, 7], [2, 3, 4, 5, 6, 8]])
    assert torch.equal(build().cloze(full), full != 0)  # ρ = 1: every real item
    only_last = build(mask_last_prob=1.0).cloze(full)
    assert only_last.int().tolist() == [[0, 0, 0, 0, 0, 1]] * 2
    torch.manual_seed(3)
    some = build(mask_prob=0.5).cloze(torch.randint(1, N + 1, (200, L)))
    assert 0.4 < some.float().mean() < 0.6


@pytest.mark.parametrize("short", [False, True])
def test_loss_by_hand(short):
    model, b = build().train(), batch(short)
    scores = model(b)
    full = torch.cat([b["sequence"], b["items"][:, :1]], 1)[:, 1:]  # newest L items
    # [0 0 3 4 5 7], [2 3 4 5 6 8]: every real item is [mask] (ρ = 1) and a target
    tokens = torch.where(full != 0, N + 1, 0)
    states = model.encode(tokens)
    logits = (head(model, states) @ model.item.weight[1:N + 1].T
              + model.item_bias[1:])  # (B, L, N): Eq. 7
    nll = -logits.log_softmax(-1).gather(-1, (full - 1).clamp(min=0)[..., None]).squeeze(-1)
    expected = nll[full != 0].mean()
    assert torch.allclose(model.loss(scores, b), expected, atol=1e-5)


def test_attention_is_bidirectional():
    model = build().eval()
    tokens = torch.tensor([[0, 3, 4, 5, 6, N + 1]])
    e = model.item(tokens).detach().requires_grad_()
    keep = (tokens != 0).unsqueeze(-1).float()
    x = model.embed_norm(e + model.position.weight)
    for layer in model.layers:
        x, _ = layer(x, ~(tokens != 0)[:, None, None, :], keep)
    g = torch.autograd.grad(x[0, 1] @ torch.randn(8), e)[0].abs().sum(-1)  # slot 1's output
    assert (g[0, 2:] > 0).all()  # later slots matter
    assert g[0, 0] == 0  # padding does not


@pytest.mark.parametrize("short", [False, True])
def test_inference_appends_mask(short):
    model, b = build().eval(), batch(short)
    with torch.no_grad():
        scores = model(b).scores
        tokens = torch.cat([b["sequence"][:, 1:], torch.full((2, 1), N + 1)], 1)
        assert tokens[1].tolist() == [0, 0, 4, 5, 6, N + 1] if short else [2, 3, 4, 5, 6, N + 1]
        h = head(model, model.encode(tokens)[:, -1])
        expected = (model.item(b["items"]) @ h[..., None]).squeeze(-1) + model.item_bias[b["items"]]
    assert torch.allclose(scores, expected, atol=1e-6)


def test_a_few_steps_fit():
    model, b = build(mask_last_prob=1.0), batch()  # deterministic: the last item is masked
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.loss(model(b), b)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_berts_layer_norms_and_their_printed_forms():
    """The released code's (BERT's) LN over v + p and after the head's GELU; false gives
    the paper's printed h^0 = v + p (Section 3.4) and Eq. 7. Both on in the preset."""
    from conf.loading import load_config

    tokens = torch.tensor([[0, 0, 3, 4, 5, N + 1]])
    for on in (True, False):
        model = build(embed_norm=on, head_norm=on).eval()
        seen = []
        model.layers[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        with torch.no_grad():
            model.encode(tokens)
            x = model.item(tokens) + model.position.weight
            x = F.layer_norm(x, (8,), eps=1e-12) if on else x  # LN's start: weight 1, bias 0
            assert torch.allclose(seen[0], x * (tokens != 0)[..., None], atol=1e-6)
            states = torch.randn(4, 8)
            expected = head(model, states) if on else F.gelu(model.project(states))
            assert torch.allclose(model.output(states), expected, atol=1e-6)
        assert isinstance(model.head_norm, torch.nn.LayerNorm) == on
    params = load_config("beauty", "bert4rec", "local", []).model.params
    assert params["embed_norm"] and params["head_norm"]


def test_feed_forward_has_no_dropout_between_its_layers():
    """BERT4Rec Eq. 4-5 (and BERT): PFF(x) = GELU(x W1 + b1) W2 + b2, dropout only on the
    sub-layer's output; the DualRec code's layer drops out inside it too."""
    from trainers.models.transformer import TransformerLayer

    x = torch.randn(3, L, 8)
    ffn = build(dropout=0.5).train().layers[0].ffn
    assert torch.equal(ffn(x), ffn(x))
    dual = TransformerLayer(8, 2, 16, 0.5, "none", L).train().ffn
    assert not torch.equal(dual(x), dual(x))
