"""Histories cut to the batch's longest (``variable_length`` models) and length-bucketed
batches (``train.batch_order: by_length``): the cut never changes a score, the buckets keep
every row once."""

from __future__ import annotations

import pytest
import torch

from conf.loading import load_config
from trainers.batches import BatchBuilder, EventSequences, length_batches
from trainers.protocols import PROTOCOLS
from trainers.registry import DataSizes, build_model, model_class, variable_length

L = 10
SIZES = DataSizes(num_users=8, num_items=30, history_slices=0, set_size=0, sequence_len=L)
OBJECTIVE = dict(loss_negatives=8, gbce_t=0.75, softmax_max_logits=60,  # objectives.py
                 history_targets=True)  # next_item.py
FMLP = dict(embed_dim=8, embed_init_std=0.3, num_layers=2, ffn_dim=16, dropout=0.0,
            loss="bce", **OBJECTIVE)
CUT_MODELS = {  # every model that declares variable_length, with small params
    "sasrec": dict(embed_dim=8, embed_init_std=0.1, init_std=0.1, num_blocks=2, num_heads=1,
                   dropout=0.0, block="pre_ln", ffn_dim=None, training="positions",
                   loss="bce", **OBJECTIVE),
    "gru4rec": dict(embed_dim=8, embed_init_std=0.1, hidden_dim=8, num_layers=1, dropout=0.0,
                    loss="bpr", ranking_negatives="in_batch", tied_embedding=True,
                    **OBJECTIVE),
    "fmlp": {**FMLP, "filter": "causal"},
    **{name: "preset" for name in ("dfar", "tha4rec", "din", "dien", "dfn", "feedrec")},
}


def left_padded(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    seq = torch.randint(1, SIZES.num_items + 1, (B, L), generator=g)
    seq = seq * (torch.arange(L) >= L - torch.tensor(lengths)[:, None])
    label = torch.randint(0, 2, (B, L), generator=g) * (seq != 0)
    items = torch.randint(1, SIZES.num_items + 1, (B, 4), generator=g)
    return {"user": torch.arange(1, B + 1), "sequence": seq, "sequence_label": label,
            "items": items, "label": torch.zeros(B, 4)}


@pytest.mark.parametrize("name", sorted(CUT_MODELS))
def test_cutting_the_left_padding_leaves_every_score_unchanged(name):
    params = CUT_MODELS[name]
    if params == "preset":
        params = dict(load_config("sample-feedback", name).model.params)
    torch.manual_seed(0)
    model = build_model(name, params, SIZES).eval()
    assert variable_length(model)
    batch = left_padded([0, 2, 3, 1])
    with torch.no_grad():
        full = model(batch).scores
        for keep in (4, 6):  # the longest history is 3: any cut >= 3 slots is the same input
            cut = {**batch, "sequence": batch["sequence"][:, L - keep:],
                   "sequence_label": batch["sequence_label"][:, L - keep:]}
            torch.testing.assert_close(model(cut).scores, full)


def test_models_that_need_every_slot_do_not_declare_it():
    torch.manual_seed(0)
    assert not variable_length(build_model("fmlp", {**FMLP, "filter": "global"}, SIZES))
    for name in ("bert4rec", "dualrec", "caser", "score"):
        assert not getattr(model_class(name), "variable_length", False), name


def test_builder_cuts_to_the_longest_history_plus_the_empty_slot():
    # users 1..3 with 2, 5 and 12 events
    counts = [0, 2, 5, 12]
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    items = torch.arange(1, int(offsets[-1]) + 1)
    seqs = EventSequences(offsets, items, torch.ones_like(items))
    builder = BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"sequence"}), None, None, 0, seqs, L)
    builder.trim_padding = True
    user, cand = torch.tensor([1, 2]), torch.ones(2, 3, dtype=torch.int64)
    batch = builder.build(user, torch.tensor([2, 4]), cand, torch.ones(2))
    # the longest history holds 4 events: 5 slots, its empty-history slot included
    assert batch["sequence"].tolist() == [[0, 0, 0, 1, 2], [0, 3, 4, 5, 6]]
    long = builder.build(torch.tensor([1, 3]), torch.tensor([1, 12]), cand, torch.ones(2))
    assert long["sequence"].shape == (2, L)  # a full window needs no empty slot: at most L
    lengths = builder.history_lengths(type("S", (), {"user": torch.tensor([1, 2, 3]),
                                                     "cut": torch.tensor([2, 4, 12])})())
    assert lengths.tolist() == [2, 4, L]


def test_length_batches_keep_every_row_and_group_similar_lengths():
    g = torch.Generator().manual_seed(0)
    n, batch_size = 1000, 32
    rows = torch.randperm(n, generator=g)
    lengths_of_row = torch.randint(0, 50, (n,), generator=g)
    out = length_batches(rows, lengths_of_row[rows], batch_size, epoch=1, seed=3,
                         chunk_batches=8)
    assert sorted(out.tolist()) == list(range(n))  # a permutation: every row once

    def spans(order: torch.Tensor) -> int:
        starts = range(0, n - n % batch_size, batch_size)
        return sum(int(lengths_of_row[order[i:i + batch_size]].max()
                       - lengths_of_row[order[i:i + batch_size]].min()) for i in starts)

    assert spans(out) < spans(rows) / 4  # batches hold similar lengths
    tail = out[n - n % batch_size:]  # the partial batch stays last
    assert len(tail) == n % batch_size
    again = length_batches(rows, lengths_of_row[rows], batch_size, 1, 3, 8)
    assert torch.equal(out, again)  # seeded
    other = length_batches(rows, lengths_of_row[rows], batch_size, 2, 3, 8)
    assert not torch.equal(out, other)  # batch order changes by epoch
