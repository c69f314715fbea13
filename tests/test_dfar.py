"""DFAR (trainers/models/dfar.py) and its attentions (trainers/models/feedback_attention.py):
FHA by hand, the label mask of Eq. 10-11, masking without NaN, no position mixing, the signs
of L^D and BPR, and what each Table 3 ablation changes. Tiny inputs only."""

from __future__ import annotations

import math

import pytest
import torch

from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.models.feedback_attention import FeedbackAttention, label_pair_mask
from trainers.registry import Batch, DataSizes, build_model

SIZES = DataSizes(num_users=20, num_items=30, history_slices=1, set_size=1, sequence_len=6)


def make_model(name: str = "dfar", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    params = dict(load_config("sample", name, "local", []).model.params)
    return build_model(name, {**params, **overrides}, SIZES)


def make_batch(B: int = 6, C: int = 4, seed: int = 1) -> Batch:
    """Row 0: empty history; row 1: negatives only; row 2: positives only; the rest mixed.
    Column 0 is the real target (labels alternate 1/0), the other columns sampled (0)."""
    g = torch.Generator().manual_seed(seed)
    L = SIZES.sequence_len
    lengths = torch.randint(2, L + 1, (B,), generator=g)
    lengths[0] = 0
    seq = torch.randint(1, SIZES.num_items + 1, (B, L), generator=g)
    seq = seq * (torch.arange(L) >= L - lengths[:, None])
    y = torch.randint(0, 2, (B, L), generator=g)
    y[1], y[2] = 0, 1
    y = y * (seq != 0)
    label = torch.zeros(B, C)
    label[:, 0] = (torch.arange(B) % 2 == 0).float()
    return {"user": torch.arange(1, B + 1),
            "items": torch.randint(1, SIZES.num_items + 1, (B, C), generator=g),
            "label": label, "sequence": seq, "sequence_label": y}


def attention(variant: str, mask: bool, heads: int = 2, dim: int = 4, head_dim: int = 3,
              tha_weights: str = "softmax") -> FeedbackAttention:
    torch.manual_seed(0)
    return FeedbackAttention(dim, heads, head_dim, variant, mask, heads, tha_weights)


# --- the attentions ---------------------------------------------------------------------

def test_fha_with_mask_matches_a_hand_computation():
    att = FeedbackAttention(2, 2, 1, "fha", True, 2, "softmax")  # D = 2, H = 2, d = 1
    with torch.no_grad():
        att.q.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # q_0 = x_0, q_1 = x_1
        att.k.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))  # k_0 = x0+x1, k_1 = x0-x1
        att.v.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # v_0 = 2x0, v_1 = 3x1
        att.out.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 1.0]]))
    X = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]]
    y, keep = [1, 0, 1, 0], [True, True, True, False]  # position 3 is padding
    q = [[x[0], x[1]] for x in X]
    k = [[x[0] + x[1], x[0] - x[1]] for x in X]
    v = [[2 * x[0], 3 * x[1]] for x in X]
    expected = []
    for i in range(4):
        pairs = []
        for h1 in range(2):
            for h2 in range(2):  # pair index h1 * H + h2
                keys = [j for j in range(4) if keep[j] and h1 == y[i] and h2 == y[j]]
                z = sum(math.exp(q[i][h1] * k[j][h2]) for j in keys)
                pairs.append(sum(math.exp(q[i][h1] * k[j][h2]) / z * v[j][h2] for j in keys)
                             if keys and keep[i] else 0.0)
        W = att.out.weight.tolist()
        expected.append([sum(W[r][p] * pairs[p] for p in range(4)) for r in range(2)])
    out = att(torch.tensor([X]), torch.tensor([keep]), torch.tensor([y]))
    torch.testing.assert_close(out[0], torch.tensor(expected))


def test_label_mask_keeps_exactly_the_pairs_of_eq_11():
    g = torch.Generator().manual_seed(0)
    H, L = 4, 5
    y = torch.randint(0, 2, (3, L), generator=g)
    M = label_pair_mask(y, H)
    assert M.shape == (3, H, H, L, L)
    for b in range(3):
        for h1 in range(H):
            for h2 in range(H):
                for i in range(L):
                    for j in range(L):
                        # 1-based Eq. 11: h ∈ {y·H/2 + 1, ..., (y+1)·H/2}
                        want = (y[b, i] * H // 2 < h1 + 1 <= (y[b, i] + 1) * H // 2
                                and y[b, j] * H // 2 < h2 + 1 <= (y[b, j] + 1) * H // 2)
                        assert bool(M[b, h1, h2, i, j]) == bool(want)
    # Figure 3: i positive, j negative -> only M_{2,1} (1-based) is kept.
    fig = label_pair_mask(torch.tensor([[1, 0]]), 2)[0, :, :, 0, 1]
    assert fig.tolist() == [[False, False], [True, False]]


def test_masked_queries_give_zeros_and_finite_gradients():
    att = attention("fha", True)
    x = torch.randn(2, 3, 4, requires_grad=True)
    keep = torch.tensor([[False, False, False], [True, True, True]])  # row 0 all padding
    y = torch.tensor([[0, 0, 0], [1, 1, 1]])
    weights, outputs = att.heads_out(x, keep, y)
    assert torch.isfinite(weights).all() and torch.isfinite(outputs).all()
    assert outputs[0].abs().sum() == 0
    # row 1 is all positive: a query's pairs with h1 in the negative half see no key at all.
    assert weights[1, 0].abs().sum() == 0 and weights[1, :, 0].abs().sum() == 0
    torch.testing.assert_close(weights[1, 1, 1].sum(-1), torch.ones(3))
    att(x, keep, y).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_keys_the_mask_hides_never_reach_the_outputs():
    att = attention("fha", True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 4, generator=g)
    y = torch.tensor([[1, 0, 1, 0, 1, 0]])
    keep = torch.tensor([[True, True, True, True, True, False]])
    _, base = att.heads_out(x, keep, y)
    changed = x.clone()
    changed[0, [1, 3]] = torch.randn(2, 4, generator=g)  # new negative items (hidden keys)
    changed[0, 5] = torch.randn(4, generator=g)  # new padding content
    changed[0, [1, 3]] = changed[0, [3, 1]]  # and permuted among themselves
    _, out = att.heads_out(changed, keep, y)
    positive_queries = [0, 2, 4]
    # Pairs whose key head is in the positive half read positive keys only.
    torch.testing.assert_close(out[0, :, 1, positive_queries], base[0, :, 1, positive_queries],
                               rtol=0, atol=0)
    assert not torch.allclose(out[0, 0, 0, [1, 3]], base[0, 0, 0, [1, 3]])  # a real change


@pytest.mark.parametrize("variant,mask", [("fha", True), ("fha", False), ("mha", False),
                                          ("tha", False)])
def test_no_mixing_of_positions(variant, mask):
    """Permuting the history permutes the outputs: query i depends on query i and the set of
    keys only (the released FHA's reshape mixes positions and fails this)."""
    att = attention(variant, mask)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 4, generator=g)
    y = torch.randint(0, 2, (2, 5), generator=g)
    keep = torch.tensor([[True] * 5, [False, True, True, True, True]])
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(att(x[:, perm], keep[:, perm], y[:, perm]),
                               att(x, keep, y)[:, perm])


def test_without_mo_weights_are_the_unmasked_softmax():
    att = attention("fha", False)
    x = torch.randn(1, 4, 4)
    keep = torch.tensor([[False, True, True, True]])
    y = torch.tensor([[0, 1, 0, 1]])
    weights, _ = att.heads_out(x, keep, y)
    q = att.q(x).view(1, 4, 2, 3).transpose(1, 2)  # (1, H, L, d)
    k = att.k(x).view(1, 4, 2, 3).transpose(1, 2)
    for h1 in range(2):
        for h2 in range(2):
            logits = q[0, h1] @ k[0, h2].T / math.sqrt(3)  # (L, L)
            want = torch.softmax(logits[:, 1:], dim=-1)  # padding key 0 excluded
            torch.testing.assert_close(weights[0, h1, h2, :, 1:], want)
            assert weights[0, h1, h2, :, 0].abs().sum() == 0
    masked, _ = attention("fha", True).heads_out(x, keep, y)
    assert not torch.allclose(masked, weights)  # MO does change them


def test_mha_is_eq_2_to_4_and_tha_mixes_heads_as_eq_6_7():
    x = torch.randn(1, 3, 4)
    keep = torch.ones(1, 3, dtype=torch.bool)
    y = torch.tensor([[1, 0, 1]])
    mha = attention("mha", False)
    weights, out = mha.heads_out(x, keep, y)
    q = mha.q(x).view(1, 3, 2, 3).transpose(1, 2)
    k = mha.k(x).view(1, 3, 2, 3).transpose(1, 2)
    v = mha.v(x).view(1, 3, 2, 3).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(3)  # (1, H, L, L)
    torch.testing.assert_close(weights, torch.softmax(logits, -1))
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ v)
    assert mha.out.in_features == 2 * 3  # H heads, not H² pairs
    for fn, name in ((lambda a: torch.softmax(a, -1), "softmax"), (torch.tanh, "tanh")):
        tha = attention("tha", False, tha_weights=name)
        w, _ = tha.heads_out(x, keep, y)
        q = tha.q(x).view(1, 3, 2, 3).transpose(1, 2)
        k = tha.k(x).view(1, 3, 2, 3).transpose(1, 2)
        A = torch.einsum("gh,bhij->bgij", tha.logit_mix, q @ k.transpose(-1, -2) / math.sqrt(3))
        torch.testing.assert_close(w, torch.einsum("hg,bgij->bhij", tha.weight_mix, fn(A)))


def test_label_mask_is_rejected_without_fha_or_with_odd_heads():
    with pytest.raises(ValueError, match="attention: fha"):
        make_model(attention="mha", label_mask=True)
    with pytest.raises(ValueError, match="even"):
        make_model(num_heads=3)
    with pytest.raises(ValueError, match="dual_interest"):
        make_model(dual_interest=False)  # the preset's λ's weigh losses that would not exist
    with pytest.raises(ValueError, match="tha4rec|dfar"):
        make_model("tha4rec", attention="fha", label_mask=True)


# --- DFAR's losses and ablations ----------------------------------------------------------

def forward_loss(model, batch):
    out = model(batch)
    aux = out.terms._asdict() if model.params.dual_interest else None
    return out.scores, aux, model.loss(out, batch)


def bce(scores, batch):
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, batch["label"])


def test_loss_is_bce_plus_weighted_terms_and_each_ablation_drops_its_own():
    batch = make_batch()
    model = make_model(lambda_bpr=0.0, lambda_d=0.0).eval()
    scores, aux, loss = forward_loss(model, batch)
    torch.testing.assert_close(loss, bce(scores, batch), rtol=0, atol=0)
    no_ibl = make_model(lambda_bpr=0.0, lambda_d=0.3).eval()  # w/o IBL: BCE + λ^D L^D exactly
    scores, aux, loss = forward_loss(no_ibl, batch)
    torch.testing.assert_close(loss, bce(scores, batch) + 0.3 * aux["disentangle"].mean(),
                               rtol=0, atol=0)
    no_idl = make_model(lambda_bpr=0.2, lambda_d=0.0).eval()  # w/o IDL: BCE + λ^BPR L^BPR
    scores, aux, loss = forward_loss(no_idl, batch)
    sign = 2 * batch["label"] - 1
    bpr = -torch.nn.functional.logsigmoid(sign * (scores - aux["logit_n"])).mean()
    torch.testing.assert_close(loss, bce(scores, batch) + 0.2 * bpr, rtol=0, atol=0)


def test_bpr_is_signed_by_the_rows_label():
    batch = make_batch()
    model = make_model(lambda_bpr=1.0, lambda_d=0.0).eval()
    scores, aux, loss = forward_loss(model, batch)
    p, n, label = scores.flatten().tolist(), aux["logit_n"].flatten().tolist(), \
        batch["label"].flatten().tolist()
    by_hand = [-math.log(1 / (1 + math.exp(-(pi - ni) if yi == 1 else -(ni - pi))))
               for pi, ni, yi in zip(p, n, label)]
    torch.testing.assert_close(loss - bce(scores, batch),
                               torch.tensor(sum(by_hand) / len(by_hand)))


def test_disentangling_loss_repels_the_interests():
    """L^D enters with a + sign, so gradient steps LOWER cos(f^P, f^N) (the released code's
    sign raises it)."""
    batch = make_batch(B=8)
    batch["sequence_label"][3:, :] = (torch.arange(SIZES.sequence_len) % 2).expand(5, -1)
    batch["sequence_label"] *= batch["sequence"] != 0
    model = make_model(lambda_bpr=0.0, lambda_d=50.0, dropout=0.0).train()
    opt = build_optimizer(model, lr=0.01, l2=0.0)
    cosines = []
    for _ in range(15):
        opt.zero_grad()
        out = model(batch)
        cosines.append(out.terms.disentangle[3:].mean().item())
        model.loss(out, batch).backward()
        opt.step()
    assert cosines[-1] < cosines[0] - 0.2, cosines


def test_ablation_settings_change_what_they_name():
    fha, mha = make_model(), make_model(attention="mha", label_mask=False)  # w/o FHA
    assert fha.encoder.variant == "fha" and fha.encoder.out.in_features == 4 * 32  # H² pairs
    assert mha.encoder.variant == mha.encoder_p.variant == "mha"
    assert mha.encoder.out.in_features == 2 * 32
    no_mo = make_model(label_mask=False)  # w/o MO: the same FHA weights, no mask
    assert no_mo.encoder.variant == "fha" and not no_mo.encoder.label_mask
    assert not fha.encoder_p.label_mask  # Eq. 14's stacks are plain FHA
    batch = make_batch()
    fha.eval(), no_mo.eval()
    # same seed, same weights: MO differs
    assert not torch.allclose(fha(batch).scores, no_mo(batch).scores)
    tha4rec = make_model("tha4rec").eval()
    assert tha4rec.encoder.variant == "tha" and not hasattr(tha4rec, "tower_n")
    out = tha4rec(batch)
    scores = out.scores
    torch.testing.assert_close(tha4rec.loss(out, batch), bce(scores, batch), rtol=0, atol=0)


def test_padding_labels_and_the_empty_history_are_harmless():
    model = make_model().eval()
    batch = make_batch()
    scores = model(batch).scores
    assert torch.isfinite(scores).all()
    noisy = dict(batch, sequence_label=torch.where(batch["sequence"] == 0, 1,
                                                   batch["sequence_label"]))
    # padding is sequence == 0
    torch.testing.assert_close(model(noisy).scores, scores, rtol=0, atol=0)


def reversed_histories(batch: Batch) -> Batch:
    """Each row's real (item, label) events in reverse order, still left-padded."""
    seq = batch["sequence"]
    L = seq.shape[1]
    n = (seq != 0).sum(dim=1, keepdim=True)  # (B, 1) real events
    j = torch.arange(L)
    src = torch.where(j >= L - n, 2 * L - n - 1 - j, j)  # (B, L): slot j reads slot src
    return dict(batch, sequence=seq.gather(1, src),
                sequence_label=batch["sequence_label"].gather(1, src))


@pytest.mark.parametrize("name", ["dfar", "tha4rec"])
def test_positions_none_is_eq_1_and_learned_is_the_released_codes(name):
    """Eq. 1 (E^f = E + L) has no position term: by default the scores depend on the
    history's (item, label) events, not on where each sits; ``positions: learned`` adds
    the released code's position rows, so the order counts."""
    assert load_config("toys-feedback", name).model.params["positions"] == "none"
    batch = make_batch()
    backward = reversed_histories(batch)
    assert not torch.equal(backward["sequence"], batch["sequence"])
    paper = make_model(name).eval()
    assert paper.embed.position is None
    torch.testing.assert_close(paper(backward).scores, paper(batch).scores)
    code = make_model(name, positions="learned").eval()
    assert code.embed.position.num_embeddings == SIZES.sequence_len
    assert not torch.allclose(code(backward).scores, code(batch).scores, atol=1e-4)


@pytest.mark.parametrize("overrides", [
    {}, {"attention": "mha", "label_mask": False}, {"attention": "tha", "label_mask": False},
    {"attention": "tha", "label_mask": False, "tha_weights": "tanh"}])
def test_dfar_variants_learn_a_toy_batch(overrides):
    batch = make_batch(B=8)
    model = make_model(**overrides, dropout=0.0).train()
    assert model.inputs == {"sequence", "sequence_label"}
    opt = build_optimizer(model, lr=0.01, l2=0.0)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model.loss(model(batch), batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
