"""SCoRe model: shapes, masks, co-attention, ablations, one training step, round-trip."""

from __future__ import annotations

import io

import pytest
import torch

from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.registry import DataSizes, build_model
from trainers.models.score import CoAttention, pool

SIZES = DataSizes(num_users=30, num_items=40, history_slices=4, set_size=5, sequence_len=8)
PARAMS = {"embed_dim": 8, "embed_init_std": 0.5, "hidden_dim": 8, "attention_hidden": [12, 6],
          "head_hidden": [10], "ablation": "none"}
B, C = 6, 3


def make_batch(seed: int = 0, fill: float = 0.7) -> dict[str, torch.Tensor]:
    """Random batch: ~30% padding slots, slice 0 all-empty for everyone, one empty user."""
    g = torch.Generator().manual_seed(seed)
    H, S = SIZES.history_slices, SIZES.set_size
    items = lambda *shape: torch.randint(1, SIZES.num_items + 1, shape, generator=g)  # noqa: E731
    users = lambda *shape: torch.randint(1, SIZES.num_users + 1, shape, generator=g)  # noqa: E731
    user_sets = torch.stack([items(B, H, S), users(B, H, S)], dim=2)  # (B, H, 2, S)
    item_sets = torch.stack([users(B, C, H, S), items(B, C, H, S)], dim=3)  # (B, C, H, 2, S)
    user_sets *= torch.rand(user_sets.shape, generator=g) < fill
    item_sets *= torch.rand(item_sets.shape, generator=g) < fill
    user_sets[:, 0] = 0
    item_sets[:, :, 0] = 0
    user_sets[1] = 0  # a user with no history at all
    label = torch.zeros(B, C)
    label[:, 0] = 1.0
    return {"user": users(B), "items": items(B, C), "user_sets": user_sets,
            "item_sets": item_sets, "label": label}


def make_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model("score", {**PARAMS, **overrides}, SIZES)


def test_yaml_params_build_the_model():
    cfg = load_config("sample", "score")
    model = build_model("score", cfg.model.params, SIZES)
    assert model(make_batch()).scores.shape == (B, C)


def test_shapes_and_no_nan_with_empty_slices():
    model = make_model()
    scores = model(make_batch()).scores
    assert scores.shape == (B, C) and torch.isfinite(scores).all()
    empty = make_batch()
    empty["user_sets"].zero_()
    empty["item_sets"].zero_()
    out = model(empty)
    scores = out.scores
    assert torch.isfinite(scores).all()
    model.loss(out, empty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_slots_have_no_effect_but_empty_sets_use_the_empty_embedding():
    model = make_model().eval()
    batch = make_batch(fill=0.6)
    batch["user_sets"][:, :, :, 0] = 3  # no all-empty set: every 0 left is padding
    batch["item_sets"][..., 0] = 5
    before = model(batch).scores
    with torch.no_grad():
        model.embedding.weight[0] += 10.0  # row 0: padding and the "empty" embedding
    assert torch.equal(model(batch).scores, before)
    # all-empty slices stand for the learned empty embedding, so they do depend on row 0
    empty = make_batch()
    first = model(empty).scores
    with torch.no_grad():
        model.embedding.weight[0] -= 10.0
    assert not torch.allclose(model(empty).scores, first)


def test_co_attention_matches_eq_10_11_and_is_not_mean_pooling():
    torch.manual_seed(3)
    d, S = 4, 5
    coatt = CoAttention(d)
    with torch.no_grad():
        coatt.w.bias.fill_(3.0)  # keep the ReLU of Eq. 10 active: non-uniform weights
    x = torch.randn(2, 1, 3, S, d)  # user-side set (C axis of 1, broadcast)
    y = torch.randn(2, 2, 3, S, d)  # pair-side set
    target = torch.randn(2, 2, d)
    x_ok = torch.ones(2, 1, 3, S, dtype=torch.bool)
    y_ok = torch.ones(2, 2, 3, S, dtype=torch.bool)
    x_ok[..., 3:] = False  # two padding slots in x
    y_ok[0, 1, 2, 1:] = False  # y has a single real slot there
    as_mask = lambda ok: torch.zeros(ok.shape).masked_fill(~ok, float("-inf"))  # noqa: E731
    g_x, g_y = coatt(x, as_mask(x_ok), y, as_mask(y_ok), target)

    # Eq. 10-11 written out with the concatenation [x_i, y_j, target], O(S² d).
    xs = x.expand(2, 2, 3, S, d)[..., :, None, :].expand(2, 2, 3, S, S, d)
    ys = y[..., None, :, :].expand(2, 2, 3, S, S, d)
    ts = target[:, :, None, None, None, :].expand(2, 2, 3, S, S, d)
    logits = torch.relu(coatt.w(torch.cat([xs, ys, ts], dim=-1))[..., 0])
    mask = x_ok.expand(2, 2, 3, S)[..., :, None] & y_ok[..., None, :]
    ref = logits.masked_fill(~mask, float("-inf")).flatten(-2).softmax(-1).unflatten(-1, (S, S))
    torch.testing.assert_close(g_x, ref.sum(-1))
    torch.testing.assert_close(g_y, ref.sum(-2))

    assert torch.equal(g_x[..., 3:], torch.zeros_like(g_x[..., 3:]))  # padding: no weight
    torch.testing.assert_close(g_x.sum(-1), torch.ones(2, 2, 3))
    torch.testing.assert_close(g_y[0, 1, 2], torch.tensor([1.0, 0, 0, 0, 0]))
    # both sides' weights are non-uniform, so the aggregate differs from the masked mean
    # (the original code's tiling made one side exactly the mean)
    mean_x = (x * x_ok[..., None]).sum(-2) / x_ok.sum(-1, keepdim=True)
    mean_y = y.mean(-2)
    assert (g_x[..., :3].std(-1) > 1e-3).all() and (g_y[1].std(-1) > 1e-3).all()
    assert not torch.allclose(pool(x, g_x), mean_x.expand(2, 2, 3, d), atol=1e-3)
    assert not torch.allclose(pool(y, g_y)[1], mean_y[1], atol=1e-3)


@pytest.mark.parametrize("ablation", ["RIA", "RCA", "user_only", "item_only"])
def test_each_ablation_changes_the_scores(ablation):
    batch = make_batch()
    full = make_model(seed=0).eval()(batch).scores
    ablated = make_model(seed=0, ablation=ablation).eval()(batch).scores
    assert ablated.shape == full.shape and torch.isfinite(ablated).all()
    assert not torch.allclose(ablated, full, atol=1e-4)


def capture(module: torch.nn.Module) -> dict:
    """Record the inputs and output of ``module``'s next forward calls (a list per call)."""
    seen = {"inputs": [], "output": []}

    def hook(_, inputs, output):
        seen["inputs"].append(inputs)
        seen["output"].append(output)

    module.register_forward_hook(hook)
    return seen


def perturb_(module: torch.nn.Module, seed: int = 9) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("side", ["user_only", "item_only"])
def test_one_side_ablation_reads_only_that_sides_representation(side):
    """user_only feeds r_u (and [u, v]) to the head, item_only r_v: with β held fixed
    (R's last layer zeroed, so β is uniform over slices), changing the other side's GRU
    changes the full model's scores but not the ablated one's."""
    batch = make_batch()
    other = "item_gru" if side == "user_only" else "user_gru"
    own = "user_gru" if side == "user_only" else "item_gru"
    for ablation, must_change in ((side, False), ("none", True)):
        model = make_model(seed=0, ablation=ablation).eval()
        with torch.no_grad():
            model.relation.rest[-1].weight.zero_()  # β = 1/H whatever the slices hold
            before = model(batch).scores
            perturb_(getattr(model, other))
            after = model(batch).scores
        assert (not torch.allclose(after, before, atol=1e-5)) == must_change, ablation
    model = make_model(seed=0, ablation=side).eval()
    with torch.no_grad():
        model.relation.rest[-1].weight.zero_()
        before = model(batch).scores
        perturb_(getattr(model, own))
        assert not torch.allclose(model(batch).scores, before, atol=1e-5)  # its own side counts


def test_ria_scores_the_last_gru_states_and_skips_interactive_attention():
    """RIA: r_u, r_v are h_u, h_v at the last slice (the newest), R plays no part."""
    batch = make_batch()
    model = make_model(seed=0, ablation="RIA").eval()
    user_states, item_states, head = (capture(model.user_gru), capture(model.item_gru),
                                      capture(model.head))
    with torch.no_grad():
        scores = model(batch).scores
        h_u, h_v = user_states["output"][0][0], item_states["output"][0][0]  # (P, H, h)
        head_in = head["inputs"][0][0]  # (P, 2h + 2d)
        hidden = model.params.hidden_dim
        torch.testing.assert_close(head_in[:, :hidden], h_u[:, -1], rtol=0, atol=0)
        torch.testing.assert_close(head_in[:, hidden:2 * hidden], h_v[:, -1], rtol=0, atol=0)
        M = SIZES.num_users
        u = model.embedding.weight[batch["user"]].unsqueeze(1).expand(B, C, -1)
        v = model.embedding.weight[batch["items"] + M]
        torch.testing.assert_close(head_in[:, 2 * hidden:],
                                   torch.cat([u, v], dim=-1).view(B * C, -1), rtol=0, atol=0)
        perturb_(model.relation)
        torch.testing.assert_close(model(batch).scores, scores, rtol=0, atol=0)


def test_interactive_attention_weights_the_gru_states_and_reads_the_gammas():
    """Eq. 21-23: R's slice input is [h_u, h_v, γ_u1, γ_v2, γ_u2, γ_v1] (the co-attention
    outputs, Eq. 13-16), and r = Σ_t β_t h_t."""
    batch = make_batch()
    model = make_model(seed=0).eval()
    item_coatt, user_coatt = capture(model.item_coatt), capture(model.user_coatt)
    user_states, item_states = capture(model.user_gru), capture(model.item_gru)
    relation, head = capture(model.relation), capture(model.head)
    with torch.no_grad():
        model(batch)
    g_u1, g_v2 = item_coatt["output"][0]
    g_v1, g_u2 = user_coatt["output"][0]
    H, S, hidden = SIZES.history_slices, SIZES.set_size, model.params.hidden_dim
    slices = relation["inputs"][0][0]  # (P, H, 2h + 4S)
    gammas = torch.cat([g_u1, g_v2, g_u2, g_v1], dim=-1).view(B * C, H, 4 * S)
    assert gammas.abs().sum() > 0
    torch.testing.assert_close(slices[..., 2 * hidden:], gammas, rtol=0, atol=0)
    h_u, h_v = user_states["output"][0][0], item_states["output"][0][0]
    torch.testing.assert_close(slices[..., :2 * hidden], torch.cat([h_u, h_v], dim=-1))
    beta = relation["output"][0]  # (P, H, 1)
    head_in = head["inputs"][0][0]
    torch.testing.assert_close(head_in[:, :hidden], (beta * h_u).sum(1))
    torch.testing.assert_close(head_in[:, hidden:2 * hidden], (beta * h_v).sum(1))
    assert (beta.std(dim=1) > 1e-4).all()  # β is not uniform: γ and h move it
    # γ reaches R: the same states with other γ's give other β.
    other = slices.clone()
    other[..., 2 * hidden:] = other[..., 2 * hidden:].flip(-1)
    targets = relation["inputs"][0][1]
    with torch.no_grad():
        assert not torch.allclose(model.relation(other, targets), beta, atol=1e-6)


def test_rca_sums_each_set_and_feeds_the_valid_mask_as_gamma():
    """RCA: u_t = [Σ G_t(u) items, Σ G_t(v|u) users], v_t likewise (γ = 1 on valid slots,
    the "empty" slot of an all-empty set included), co-attention plays no part."""
    batch = make_batch()
    model = make_model(seed=0, ablation="RCA").eval()
    user_in, item_in, relation = (capture(model.user_gru), capture(model.item_gru),
                                  capture(model.relation))
    with torch.no_grad():
        scores = model(batch).scores
    M, H, S, d = SIZES.num_users, SIZES.history_slices, SIZES.set_size, PARAMS["embed_dim"]
    E = model.embedding.weight
    shift = torch.tensor([[M], [0]])

    def summed(rows: torch.Tensor) -> torch.Tensor:  # (..., 2, S) -> (..., 2d), γ = 1 valid
        valid = rows != 0
        valid[..., 0] |= ~valid.any(-1)
        return (E[rows] * valid.unsqueeze(-1)).sum(-2).flatten(-2)

    user_rows = batch["user_sets"] + (batch["user_sets"] > 0) * shift
    item_rows = batch["item_sets"] + (batch["item_sets"] > 0) * shift.flip(0)
    u_t = summed(user_rows).unsqueeze(1).expand(B, C, H, 2 * d).reshape(B * C, H, 2 * d)
    v_t = summed(item_rows).reshape(B * C, H, 2 * d)
    torch.testing.assert_close(user_in["inputs"][0][0], u_t)
    torch.testing.assert_close(item_in["inputs"][0][0], v_t)
    gammas = relation["inputs"][0][0][..., 2 * model.params.hidden_dim:]
    assert set(gammas.unique().tolist()) == {0.0, 1.0}  # the valid masks, not attention
    with torch.no_grad():
        perturb_(model.item_coatt), perturb_(model.user_coatt)
        torch.testing.assert_close(model(batch).scores, scores, rtol=0, atol=0)


def test_one_step_lowers_the_loss_and_regularization_is_dense_l2():
    model = make_model(embed_init_std=0.1).train()
    batch = make_batch()
    opt = build_optimizer(model, lr=0.01, l2=1e-4)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = model.loss(model(batch), batch)
        (loss + 1e-4 * model.regularization()).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    dense = sum((p.detach() ** 2).sum() for n, p in model.named_parameters()
                if n != "embedding.weight")
    torch.testing.assert_close(model.regularization().detach(), dense / 2)


def test_state_dict_round_trip_reproduces_scores():
    model = make_model(seed=0).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = make_model(seed=1).eval()
    batch = make_batch()
    assert not torch.equal(other(batch).scores, model(batch).scores)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other(batch).scores, model(batch).scores)


def test_bad_batches_are_named():
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="user_sets"):
        model({**batch, "user_sets": batch["user_sets"][:, :2]})
    bad = make_batch()
    bad["item_sets"][0, 0, 1, 0, 0] = SIZES.num_users + 1
    with pytest.raises(ValueError, match="user id 31"):
        model(bad)
