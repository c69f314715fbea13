"""The seven baselines of SCoRe Section 4.1.3: shapes, causality, learning, checkpoints.

Every model is built from its own preset (conf/models/<name>.yaml) through the registry,
exactly as the training loop builds it, on tiny random batches.
"""

from __future__ import annotations

import pytest
import torch

from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.registry import Batch, DataSizes, build_model

BASELINES = ["svdpp", "delf", "gru4rec", "caser", "sasrec", "rrn", "deems"]
SEQUENTIAL = ["gru4rec", "caser", "sasrec"]  # per-position outputs: ``position_states``
SIZES = DataSizes(num_users=30, num_items=40, history_slices=3, set_size=4, sequence_len=8)


def preset_params(name: str) -> dict:
    return dict(load_config("sample", name, "local", []).model.params)


def make_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, {**preset_params(name), **overrides}, SIZES)


def make_batch(B: int = 5, C: int = 3, seed: int = 1) -> Batch:
    """Random batch with every field; about a third of ids are padding (0), row 0's
    history is completely empty (a new user), and candidates are never padding."""
    g = torch.Generator().manual_seed(seed)
    H, S, L = SIZES.history_slices, SIZES.set_size, SIZES.sequence_len
    U, I = SIZES.num_users, SIZES.num_items

    def ids(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        x = torch.randint(1, high + 1, shape, generator=g)
        return x * (torch.rand(shape, generator=g) > 0.35)

    user_sets = torch.stack([ids(I, (B, H, S)), ids(U, (B, H, S))], dim=2)  # items, users
    item_sets = torch.stack([ids(U, (B, C, H, S)), ids(I, (B, C, H, S))], dim=3)  # users, items
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = 0
    seq = torch.randint(1, I + 1, (B, L), generator=g)
    seq = seq * (torch.arange(L) >= L - lengths[:, None])  # left-padded
    user_sets[0], seq[0] = 0, 0
    label = torch.zeros(B, C)
    label[:, 0] = 1.0
    return {"user": torch.randint(1, U + 1, (B,), generator=g),
            "items": torch.randint(1, I + 1, (B, C), generator=g), "label": label,
            "user_sets": user_sets, "item_sets": item_sets, "sequence": seq}


def objective(model: torch.nn.Module, batch: Batch, l2: float) -> torch.Tensor:
    """What the training loop minimises: data term + λ · dense L2 (SCoRe's Eq. 25 split)."""
    return model.loss(model(batch), batch) + l2 * model.regularization()


@pytest.mark.parametrize("name", BASELINES)
def test_forward_shapes_and_finite_loss(name):
    model = make_model(name)
    batch = make_batch()
    for mode in (model.train, model.eval):
        mode()
        out = model(batch)
        scores = out.scores
        assert scores.shape == (5, 3)
        assert torch.isfinite(scores).all(), f"{name}: non-finite score (empty history row?)"
        loss = model.loss(out, batch)
        assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", BASELINES)
def test_declares_only_known_inputs(name):
    model = make_model(name)
    assert model.inputs and model.inputs <= {"slice_sets", "sequence"}
    assert getattr(model, "optional_inputs", frozenset()) <= {"sequence_label", "next_negatives"}
    batch = make_batch()
    drop = {"sequence"} if "sequence" not in model.inputs else {"user_sets", "item_sets"}
    slim = {k: v for k, v in batch.items() if k not in drop}
    model.eval()
    # needs nothing it did not declare
    torch.testing.assert_close(model(slim).scores, model(batch).scores)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_sequence_models_never_look_ahead(name):
    model = make_model(name).eval()
    seq = make_batch(B=6, seed=3)["sequence"]
    seq[:, -5:] = torch.randint(1, SIZES.num_items + 1, (6, 5))  # at least 5 real items
    base = model.position_states(seq)  # (B, L, d)
    L = seq.shape[1]
    for j in range(L - 5, L):
        changed = seq.clone()
        changed[:, j] = changed[:, j] % SIZES.num_items + 1  # another real item
        out = model.position_states(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out[:, j], base[:, j]), f"{name}: position {j} ignores its item"


def test_gru4rec_state_ignores_padding_length():
    model = make_model("gru4rec").eval()
    seq = torch.tensor([[0, 0, 0, 0, 5, 9, 2, 7]])
    shorter = seq[:, 3:]  # the same items with less left padding
    torch.testing.assert_close(model.position_states(seq)[:, -1],
                               model.position_states(shorter)[:, -1])
    assert model.position_states(torch.zeros(1, 8, dtype=torch.long)).abs().sum() == 0


def test_svdpp_matches_equation_15():
    model = make_model("svdpp").eval()
    batch = make_batch(B=2, C=2)
    scores = model(batch).scores
    u, v = int(batch["user"][1]), int(batch["items"][1, 1])
    history = [j for j in batch["sequence"][1].tolist() if j]
    y = model.implicit.weight[history].sum(0) / len(history) ** 0.5
    expected = (model.global_bias + model.user_bias.weight[u, 0] + model.item_bias.weight[v, 0]
                + model.item.weight[v] @ (model.user.weight[u] + y))
    torch.testing.assert_close(scores[1, 1], expected)


def test_deems_combines_players_and_plays_the_game():
    model = make_model("deems").eval()
    batch = make_batch()
    s_u, s_v = model.player_scores(batch)
    average = (torch.sigmoid(s_u) + torch.sigmoid(s_v)) / 2
    torch.testing.assert_close(torch.sigmoid(model(batch).scores), average)
    model.train()
    kept = model.loss(model(batch), batch)  # the players' graphs, in the output's terms
    with torch.no_grad():
        recomputed = model.loss(model(batch), batch)  # the same players, without graphs
    torch.testing.assert_close(kept.detach(), recomputed)
    solo = make_model("deems", game_weight=0.0).train()
    gap = ((torch.sigmoid(s_u) - torch.sigmoid(s_v)) ** 2).mean() * 2
    with torch.no_grad():
        torch.testing.assert_close(kept - solo.loss(solo(batch), batch), 0.05 * gap)


@pytest.mark.parametrize("name", BASELINES)
def test_one_training_step_lowers_the_loss(name):
    model = make_model(name)
    batch = make_batch(B=16, C=3)
    optimizer = build_optimizer(model, lr=0.01, l2=1e-5)

    def eval_objective() -> float:
        model.eval()
        with torch.no_grad():
            return float(objective(model, batch, l2=1e-5))

    before = eval_objective()
    model.train()
    optimizer.zero_grad()
    objective(model, batch, l2=1e-5).backward()
    optimizer.step()
    assert eval_objective() < before


@pytest.mark.parametrize("name", BASELINES)
def test_checkpoint_round_trip(name, tmp_path):
    model = make_model(name, seed=0)
    optimizer = build_optimizer(model, lr=0.01, l2=0.0)
    batch = make_batch()
    model.train()  # one step so the saved weights are not the initial ones
    optimizer.zero_grad()
    model.loss(model(batch), batch).backward()
    optimizer.step()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    restored = make_model(name, seed=99)
    restored.load_state_dict(torch.load(tmp_path / "model.pt"))
    model.eval(), restored.eval()
    torch.testing.assert_close(restored(batch).scores, model(batch).scores, rtol=0, atol=0)


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="num_heads"):
        build_model("sasrec", {**preset_params("sasrec"), "num_heads": 3}, SIZES)
    with pytest.raises(ValueError, match="model.params.windw"):
        build_model("caser", {**preset_params("caser"), "windw": 3}, SIZES)


def test_history_pairs_targets_labels_negatives_and_mask():
    from trainers.models.next_item import combined_mean, history_pairs

    torch.manual_seed(0)
    sequence = torch.tensor([[0, 0, 3, 1, 2], [0, 0, 0, 0, 4], [5, 1, 1, 2, 3]])
    feedback = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1]])
    targets, labels, negatives, valid = history_pairs(sequence, num_items=3)
    assert torch.equal(targets, sequence[:, 1:])
    assert torch.equal(labels, torch.ones(3, 4))  # no labels: every next item is positive
    # real positions, and the padding slot right before the first item (the empty history)
    assert torch.equal(valid, torch.tensor([[False, True, True, True],
                                            [False, False, False, True],
                                            [True, True, True, True]]))
    _, labels, _, valid_fb = history_pairs(sequence, 3, feedback)
    assert torch.equal(labels, feedback[:, 1:].float()) and torch.equal(valid_fb, valid)
    for _ in range(50):  # with 3 items a draw often hits the target: it must move
        _, _, negatives, _ = history_pairs(sequence, num_items=3)
        assert not (negatives == targets).any()
        assert negatives.min() >= 1 and negatives.max() <= 3
    history = torch.arange(12.0).view(3, 4)
    # (candidates 1 + 2) + valid history (1 + 2 + 3 + 7 + 8 + 9 + 10 + 11), over 2 + 8
    expected = (1.0 + 2.0 + 1 + 2 + 3 + 7 + 8 + 9 + 10 + 11) / 10
    assert float(combined_mean(torch.tensor([1.0, 2.0]), history, valid)) == pytest.approx(expected)


def test_history_pairs_take_the_batch_negatives():
    """Given ``next_negatives``, those are each position's negative (moved off the target
    only where they equal it); the draw is the data's, not the model's."""
    from trainers.models.next_item import history_pairs

    sequence = torch.tensor([[0, 3, 1, 2]])
    given = torch.tensor([[2, 2, 2]])
    _, _, negatives, _ = history_pairs(sequence, 3, None, given)
    assert negatives.tolist() == [[2, 2, 3]]  # position 2's target is 2: moved to 3


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_sequence_models_train_on_the_batch_history_negatives(name):
    """The history loss scores the batch's ``next_negatives``: with them given, the loss no
    longer depends on torch's RNG, and other negatives give another loss."""
    one = {"negatives": 1} if name == "caser" else {}  # Caser draws n - 1 more per target
    model = make_model(name, dropout=0.0, **one).train()
    batch = make_batch(B=6, seed=3)
    L = batch["sequence"].shape[1]
    batch["next_negatives"] = torch.randint(1, SIZES.num_items + 1, (6, L - 1),
                                            generator=torch.Generator().manual_seed(5))
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(model.loss(model(batch), batch))
    torch.testing.assert_close(losses[0], losses[1])
    other = {**batch, "next_negatives": batch["next_negatives"] % SIZES.num_items + 1}
    assert not torch.allclose(model.loss(model(other), other), losses[0])


def test_history_bce_treats_negative_feedback_as_a_negative_target():
    """bce_with_history: a next item with label 0 costs -log(1 - σ(r)), not -log σ(r)."""
    from trainers.models.next_item import bce_with_history

    scores, labels = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.0]])
    pairs = torch.tensor([[[2.0, 0.3], [-0.7, 1.1]]])  # [next item, sampled] at 2 positions
    next_label = torch.tensor([[1.0, 0.0]])
    valid = torch.tensor([[True, True]])
    ls = torch.nn.functional.logsigmoid
    t = torch.tensor
    candidates = -ls(t(0.5)) - ls(t(1.0))
    liked = -ls(t(2.0)) - ls(t(-0.3))  # -log σ(next) - log(1 - σ(sampled))
    disliked = -ls(t(0.7)) - ls(t(-1.1))  # -log(1 - σ(next)) - log(1 - σ(sampled))
    expected = (candidates + liked + disliked) / 3
    got = bce_with_history(scores, labels, (pairs, next_label, valid))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_sequence_models_read_feedback_labels_causally(name):
    """With ``sequence_label`` a label embedding is added to each history item: flipping the
    label of position j changes the states from j on and none before it."""
    model = make_model(name).eval()
    assert model.optional_inputs == {"sequence_label", "next_negatives"}
    batch = make_batch(B=6, seed=3)
    seq = batch["sequence"]
    seq[:, -5:] = torch.randint(1, SIZES.num_items + 1, (6, 5))
    feedback = (torch.rand(seq.shape, generator=torch.Generator().manual_seed(4)) < 0.5).long()
    feedback = feedback * (seq != 0)
    with torch.no_grad():
        base = model.position_states(seq, feedback)
        assert not torch.allclose(base[:, -1], model.position_states(seq)[:, -1])
        for j in range(seq.shape[1] - 5, seq.shape[1]):
            flipped = feedback.clone()
            flipped[:, j] = 1 - flipped[:, j]
            out = model.position_states(seq, flipped)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
            assert not torch.allclose(out[:, j], base[:, j]), f"{name}: label {j} unread"
        scores = model({**batch, "sequence_label": feedback}).scores
        assert not torch.allclose(scores, model(batch).scores)


def test_gru4rec_ranks_disliked_items_below_the_sampled_ones():
    """GRU4Rec's ranking terms put index 0 first after a positive (next event or target)
    and last after a negative one: liked > unobserved > disliked."""
    model = make_model("gru4rec", loss="bpr")
    scores = torch.tensor([[2.0, 0.5, -1.0], [2.0, 0.5, -1.0]])
    liked = torch.tensor([True, False])
    bpr = model._ranking(scores, liked)
    ls = torch.nn.functional.logsigmoid
    torch.testing.assert_close(bpr[0], -ls(torch.tensor([1.5, 3.0])))
    torch.testing.assert_close(bpr[1], -ls(torch.tensor([-1.5, -3.0])))
    top1 = make_model("gru4rec", loss="top1")._ranking(scores, liked)
    sg = torch.sigmoid
    torch.testing.assert_close(top1[1], sg(torch.tensor([1.5, 3.0])) + sg(torch.tensor(4.0)))
    # In training the history keeps each next event's label for the loss.
    batch = make_batch(B=6, seed=3)
    feedback = (torch.rand(batch["sequence"].shape, generator=torch.Generator().manual_seed(4))
                < 0.5).long() * (batch["sequence"] != 0)
    model.train()
    labels = model({**batch, "sequence_label": feedback}).terms.labels
    torch.testing.assert_close(labels, feedback[:, 1:].float())
    disliked_target = {**batch, "label": torch.zeros_like(batch["label"])}
    model.eval()
    with torch.no_grad():
        out = model(batch)
        s = out.scores
        torch.testing.assert_close(model.loss(out, disliked_target),
                                   -ls(s[:, 1:] - s[:, :1]).mean())


def test_gru4rec_ranks_each_next_item_above_the_mini_batchs_other_targets():
    """Section 3.1.2 (``ranking_negatives: in_batch``): a history position's
    negatives are B-1 draws from the batch's own valid next items; one equal to the
    position's next item does not count, so a batch whose every next item is one item has
    no history term left (its loss is the candidates' alone)."""
    from trainers.models.gru4rec import in_batch_negatives

    targets = torch.tensor([[0, 7, 7, 3], [0, 0, 7, 9]])
    valid = targets != 0
    draws = in_batch_negatives(targets, valid, 4000)
    assert set(draws.tolist()) == {3, 7, 9}  # never padding, never an item outside the batch
    assert 0.55 < float((draws == 7).float().mean()) < 0.65  # 3 of 5 events: as often as seen
    assert in_batch_negatives(targets, valid & False, 5).numel() == 0

    model = make_model("gru4rec", loss="top1", dropout=0.0, ranking_negatives="in_batch")
    batch = make_batch(B=6, seed=3)
    model.train()
    terms = model(batch).terms
    assert terms.scores.shape[-1] == 1 + 5  # the next item, then B-1 shared negatives
    same = {**batch, "sequence": torch.where(batch["sequence"] != 0, 11, 0)}
    model.train()
    out = model(same)
    assert not out.terms.valid.any() and not out.terms.counted.any()
    liked = same["label"][:, 0] > 0
    torch.testing.assert_close(model.loss(out, same),
                               model._ranking(out.scores, liked).mean(dim=1).mean())
    # the hand computation of one position: TOP1 averaged over its counted negatives
    out = model(batch)
    b, t = (out.terms.valid).nonzero()[0].tolist()
    row, counted = out.terms.scores[b, t], out.terms.counted[b, t]
    top1 = torch.sigmoid(row[1:] - row[0]) + torch.sigmoid(row[1:] ** 2)
    assert counted.any()
    expected = top1[counted].mean()
    ranked = model._ranking(out.terms.scores, out.terms.labels > 0)[b, t]
    torch.testing.assert_close((ranked * counted).sum() / counted.sum(), expected)


def test_gru4rec_tied_embedding_reads_the_output_rows():
    """``tied_embedding`` (the released code's constrained_embedding): the GRU's input at a
    position is the output row W of its item, so one table both reads and scores, and a
    row trains from its uses as input too; widths that cannot tie are refused."""
    model = make_model("gru4rec", tied_embedding=True, dropout=0.0, embed_dim=8,
                       hidden_dim=8)
    assert model.item_in is model.item_out
    tables = [n for n, _ in model.named_parameters() if n.startswith("item_")]
    assert tables == ["item_out.weight", "item_bias.weight"]  # one item table, W
    batch = make_batch(B=4, seed=5)
    seq = batch["sequence"]
    b = int((seq != 0).sum(1).argmax())  # the row with the most items
    items = seq[b][seq[b] != 0]
    with torch.no_grad():
        expected = model.gru(model.item_out.weight[items].unsqueeze(0))[0][0, -1]
        torch.testing.assert_close(model.encode_users(batch)[b], expected)
    # an item only in the input (never a target or candidate) still moves its W row
    model.item_out.make_dense()
    only = torch.zeros_like(seq)
    only[0, -2:] = torch.tensor([5, 6])
    model.train()
    candidates = torch.tensor([[7, 8, 9]]).expand(seq.shape[0], 3)
    trained = {**batch, "sequence": only, "items": candidates,
               "next_negatives": torch.full_like(seq[:, 1:], 9)}  # 5: no target nor negative
    model.loss(model(trained), trained).backward()
    grad = model.item_out.weight.grad
    assert grad[5].abs().sum() > 0  # item 5 is input only: its next item 6 is the target
    with pytest.raises(ValueError, match="embed_dim = hidden_dim"):
        make_model("gru4rec", tied_embedding=True, embed_dim=8, hidden_dim=16)


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "caser"])
def test_sequence_models_learn_from_every_history_position(name):
    """A training forward adds the next-item terms of the history to the loss; changing an
    item in the middle of the history changes them, evaluation scores only the candidates."""
    model = make_model(name, dropout=0.0)
    batch = make_batch(B=6, C=3)
    model.eval()
    with torch.no_grad():
        candidates_only = float(model.loss(model(batch), batch))
    model.train()
    torch.manual_seed(5)
    with_history = model.loss(model(batch), batch)
    assert float(with_history.detach()) != pytest.approx(candidates_only)
    with_history.backward()  # the history terms reach the item table through the graph
    assert "_history" not in model.__dict__  # consumed: a later eval forward starts clean
    longest = int((batch["sequence"] != 0).sum(1).argmax())
    changed = {**batch, "sequence": batch["sequence"].clone()}
    L = changed["sequence"].shape[1]
    changed["sequence"][longest, L - 3] = changed["sequence"][longest, L - 3] % SIZES.num_items + 1
    torch.manual_seed(5)
    assert float(model.loss(model(changed), changed).detach()) != pytest.approx(
        float(with_history.detach()))


def test_rrn_paper_head_is_inner_products():
    """head=dot: r̂ = <ũ_T, m̃_T> + <u, m> (RRN paper); zeroing the stationary tables leaves
    exactly the dynamic inner product."""
    model = make_model("rrn", head="dot").eval()
    batch = make_batch(B=4, C=3)
    with torch.no_grad():
        full = model(batch).scores
        model.user_static.weight.zero_()
        dynamic = model(batch).scores
        _, u_T = model.user_rnn(model._sum_pool(model.item_in, batch["user_sets"][:, :, 0]))
        y_item = model._sum_pool(model.user_in, batch["item_sets"][:, :, :, 0])
        _, m_T = model.item_rnn(y_item.reshape(12, y_item.shape[2], -1))
        expected = (model.item_out(m_T[0]).view(4, 3, -1) @ model.user_out(u_T[0])[..., None])
    assert full.shape == (4, 3)
    assert torch.allclose(dynamic, expected.squeeze(-1), atol=1e-6)
    assert not torch.allclose(full, dynamic)


def test_caser_states_equal_convolving_each_window():
    """The whole-sequence convolutions give each window's Eq. 2-6 exactly."""
    import torch.nn.functional as F

    model = make_model("caser").eval()
    sequence = make_batch(B=4, C=2)["sequence"]
    W = model.params.window
    with torch.no_grad():
        states = model.position_states(sequence)  # (B, L, d)
        padded = F.pad(sequence, (W - 1, 0))
        for t in (0, 3, sequence.shape[1] - 1):
            window = padded[:, t:t + W]  # (B, W) the last W items up to position t
            E = (model.item(window) * (window != 0).unsqueeze(-1)).unsqueeze(1)
            o = [F.relu(conv(E)).squeeze(3).amax(dim=2) for conv in model.horizontal]
            o_v = model.vertical(E).flatten(1)
            z = F.relu(model.fc(torch.cat(o + [o_v], dim=1)))
            assert torch.allclose(states[:, t], z, atol=1e-5)


def test_sasrec_blocks_start_as_the_reimplementations_or_at_torch_defaults():
    """Issue 23: attention and FFN weights start as N(0, init_std²) with zero biases (RecBole
    and the S3-Rec / FMLP-Rec code, initializer_range 0.02); ``init_std: null`` keeps torch's
    defaults (xavier for the packed q, k, v: std sqrt(2 / (d + 3d)), 0.18 at d = 16), with
    which SASRec stays on popularity's plateau on sparse data."""
    params = preset_params("sasrec")
    assert params["init_std"] == params["embed_init_std"] == 0.02
    torch.manual_seed(0)
    model = make_model("sasrec")
    d = model.params.embed_dim
    for name, weight in model.blocks.named_parameters():
        if name.startswith(("0.ln", "1.ln")):  # LayerNorm: 1 and 0, as ever
            continue
        if name.endswith("bias"):
            assert torch.all(weight == 0), name
        else:
            assert 0.017 < float(weight.std()) < 0.023, (name, float(weight.std()))
    default = make_model("sasrec", init_std=None)
    in_proj = float(default.blocks[0].attn.in_proj_weight.std())
    assert abs(in_proj - (2 / (d + 3 * d)) ** 0.5) < 0.02


def test_caser_without_personalization_scores_by_the_sequence_alone():
    """Caser without p (the paper's component analysis): Eq. 7 is y_i = W'_i · z + b'_i, so
    two users with the same window get the same scores; with P_u (the preset) they differ
    by P_u's part of W'_i."""
    batch = make_batch(B=4, C=3)
    other = {**batch, "user": batch["user"] % SIZES.num_users + 1}  # every user changed
    personal = make_model("caser").eval()
    plain = make_model("caser", personalized=False).eval()
    d = plain.params.embed_dim
    assert plain.user is None and plain.item_table()[0].shape[1] == d
    assert personal.item_table()[0].shape[1] == 2 * d
    with torch.no_grad():
        assert torch.equal(plain(batch).scores, plain(other).scores)
        assert not torch.allclose(personal(batch).scores, personal(other).scores)
        z = plain.position_states(batch["sequence"])[:, -1]  # (B, d)
        W, b = plain.item_table()
        expected = (W[batch["items"]] @ z[..., None]).squeeze(-1) + b[batch["items"]]
        assert torch.allclose(plain(batch).scores, expected, atol=1e-6)
        assert torch.equal(plain.encode_users(batch), z)
    plain.train()
    assert torch.isfinite(plain.loss(plain(batch), batch))  # training forward: history terms


def test_caser_windows_target_their_next_T_items(monkeypatch):
    """Eq. 10-11's skip targets: the training loss is BCE averaged over the candidate rows
    and, for every window p and k = 1..T, the item at p+k against the n items drawn for
    that item, their terms averaged (``negatives_reduction: mean``, the released code's) or
    summed; T = 1 is the next item alone. Computed here from the scores by hand,
    with the items the model drew."""
    import torch.nn.functional as F

    import trainers.models.caser as caser_module
    from trainers.models.next_item import history_pairs, more_negatives

    drawn = []

    def spy(*args):
        drawn.append(more_negatives(*args))
        return drawn[-1]

    monkeypatch.setattr(caser_module, "more_negatives", spy)
    batch = make_batch(B=4, C=3, seed=2)
    L = batch["sequence"].shape[1]
    batch["next_negatives"] = torch.randint(1, SIZES.num_items + 1, (4, L - 1),
                                            generator=torch.Generator().manual_seed(7))
    for T, n, reduction in ((1, 1, "sum"), (3, 1, "sum"), (3, 3, "sum"), (3, 3, "mean")):
        model = make_model("caser", dropout=0.0, targets_ahead=T, negatives=n,
                           negatives_reduction=reduction).train()
        got = model.loss(model(batch), batch).detach()  # a training forward: history terms
        negatives = drawn[-1]  # (B, L-1, n)
        with torch.no_grad():
            seq = batch["sequence"]
            targets, _, first, valid = history_pairs(seq, SIZES.num_items, None,
                                                     batch["next_negatives"])
            assert negatives.shape == (4, L - 1, n) and torch.equal(negatives[..., 0], first)
            assert not (negatives == targets.unsqueeze(-1)).any()
            P = model.user(batch["user"])
            states = torch.cat([model.position_states(seq),
                                P[:, None].expand(-1, L, -1)], dim=-1)  # (B, L, 2d)
            W, b = model.item_table()
            terms = [F.binary_cross_entropy_with_logits(
                model(batch).scores, batch["label"], reduction="none").sum(1)]  # (B,)
            count = 4
            for p in range(L):
                for k in range(1, T + 1):
                    if p + k >= L:
                        continue
                    item, sampled = seq[:, p + k], negatives[:, p + k - 1]  # (B,), (B, n)
                    real = valid[:, p] if k == 1 else (item != 0) & (seq[:, p] != 0)
                    pos = (states[:, p] * W[item]).sum(-1) + b[item]
                    neg = (states[:, p, None] * W[sampled]).sum(-1) + b[sampled]  # (B, n)
                    # -log σ(pos) - Σ_j log(1 - σ(neg_j)), or the mean over j
                    negative_terms = F.softplus(neg).sum(-1) / (n if reduction == "mean" else 1)
                    loss = F.softplus(-pos) + negative_terms
                    terms.append(loss[real])
                    count += int(real.sum())
            expected = torch.cat(terms).sum() / count
        torch.testing.assert_close(got, expected)
    params = make_model("caser").params
    assert (params.targets_ahead, params.negatives, params.negatives_reduction) == (3, 3, "mean")


def test_more_negatives_follow_the_batch_draws_or_are_uniform():
    """Caser's n - 1 further items per target: resampled from the batch's own draws (the
    candidates' distribution) when the batch has them, else uniform; never the target."""
    from trainers.models.next_item import more_negatives

    targets = torch.full((50, 40), 7)
    drawn = torch.randint(1, 4, (50, 40))  # the batch's draws: items 1..3 only
    torch.manual_seed(0)
    resampled = more_negatives(targets, drawn, 4, 100, resample=True)
    assert resampled.shape == (50, 40, 4) and torch.equal(resampled[..., 0], drawn)
    assert set(resampled.unique().tolist()) == {1, 2, 3}
    uniform = more_negatives(targets, drawn, 4, 100, resample=False)[..., 1:]
    assert int(uniform.max()) > 50 and not (uniform == 7).any()
    assert torch.equal(more_negatives(targets, drawn, 1, 100, True), drawn.unsqueeze(-1))


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "fmlp"])
def test_without_history_targets_only_the_candidate_rows_train(name):
    """``history_targets: false`` (DFAR's released code's baselines; under ``feedback`` the
    history repeats each event in ~L rows an epoch): a training forward's loss is the
    candidate rows' loss alone, so it equals the evaluation loss and no history negative
    enters it; with history targets (the papers) it does not. Under another objective the
    predictions are the rows' targets alone."""
    batch = make_batch(B=6, C=3, seed=3)
    L = batch["sequence"].shape[1]
    batch["next_negatives"] = torch.randint(1, SIZES.num_items + 1, (6, L - 1),
                                            generator=torch.Generator().manual_seed(5))
    other = {**batch, "next_negatives": batch["next_negatives"] % SIZES.num_items + 1}
    assert preset_params(name)["history_targets"] is True
    for history in (True, False):
        model = make_model(name, dropout=0.0, history_targets=history)
        with torch.no_grad():
            candidates_only = float(model.eval().loss(model(batch), batch))
        train = float(model.train().loss(model(batch), batch).detach())  # grad: history
        moved = float(model.loss(model(other), other).detach())
        if history:
            assert train != pytest.approx(candidates_only) and moved != pytest.approx(train)
        else:
            assert train == pytest.approx(candidates_only) == moved
    model = make_model(name, dropout=0.0, history_targets=False, loss="ce").train()
    predictions = model(batch).terms
    assert predictions.states.shape[0] == predictions.targets.shape[0] == 6  # one a row
    torch.testing.assert_close(predictions.targets, batch["items"][:, 0])
