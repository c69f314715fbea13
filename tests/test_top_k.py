"""Top-K for a user's next step (trainers/top_k.py) and today's histories in a model's ids
(trainers/snapshot.py), on hand-made snapshots and real models (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.loading import load_config
from trainers.registry import DataSizes, build_model
from trainers.snapshot import Snapshot, load, lookup, save, translate
from trainers.top_k import TopK

L = 6


def events(protocol: str, ids: list[str], items: list[str], histories: dict[str, list[str]],
           labels: dict[str, list[int]] | None = None) -> Snapshot:
    """A snapshot whose users / items are ``ids`` / ``items`` (idx = position + 1), each
    user's events the given original item ids."""
    offsets, flat, flat_labels = [0, 0], [], []
    for user in ids:
        seq = histories.get(user, [])
        flat += [items.index(i) + 1 for i in seq]
        flat_labels += (labels or {}).get(user, [1] * len(seq))
        offsets.append(len(flat))
    return Snapshot(protocol=protocol, num_slices=0, string_ids=True,
                    user_ids=np.asarray(["", *ids]), item_ids=np.asarray(["", *items]),
                    offsets=np.asarray(offsets, dtype=np.int64),
                    items=np.asarray(flat, dtype=np.int32),
                    labels=np.asarray(flat_labels, dtype=np.int8), slices=None,
                    user_sets=None, item_sets=None)


def test_translation_goes_through_the_original_ids(tmp_path):
    """Ingest numbers ids anew at every run: today's histories reach the model by original
    id, unknown items leave them, unknown users follow the model's users (cold)."""
    model = events("leave_one_out", ["ann", "bob", "cy"], ["a", "b", "c", "d"],
                   {"ann": ["a", "b"], "bob": ["c"], "cy": ["d", "a"]})
    today = events("leave_one_out", ["bob", "dan", "ann"], ["b", "new", "c", "a"],
                   {"bob": ["c", "new", "b"], "dan": ["a", "new"], "ann": ["a", "b", "c"]})
    moved = translate(today, model)
    snap = moved.snapshot
    assert list(snap.user_ids) == ["", "ann", "bob", "cy", "dan"]
    assert list(moved.users) == [2, 4, 1]  # bob, dan (cold: after the model's 3), ann
    assert (moved.cold_users, moved.dropped_events, moved.unknown_items) == (1, 2, 1)

    def history(user: int) -> list[str]:
        return list(snap.item_ids[snap.items[snap.offsets[user]:snap.offsets[user + 1]]])

    assert history(1) == ["a", "b", "c"] and history(2) == ["c", "b"]
    assert history(3) == [] and history(4) == ["a"]
    assert list(snap.item_ids) == list(model.item_ids)  # the model's item space
    path = str(tmp_path / "s.npz")
    save(snap, path)
    again = load(path)
    assert again.protocol == "leave_one_out" and again.string_ids and again.slices is None
    assert all(np.array_equal(getattr(again, f), getattr(snap, f))
               for f in ("user_ids", "item_ids", "offsets", "items", "labels"))
    assert list(lookup(model.user_ids, np.asarray(["cy", "zed", "ann"]))) == [3, 0, 1]


def test_translation_moves_the_slice_sets_and_refuses_another_window():
    def sliced(users, items, sets_of_user, sets_of_item, T=2, S=2):
        snap = events("slices", users, items, {})
        us = np.zeros((len(users) + 1, T, 2, S), dtype=np.int32)
        its = np.zeros((len(items) + 1, T, 2, S), dtype=np.int32)
        for u, value in sets_of_user.items():
            us[users.index(u) + 1] = value
        for i, value in sets_of_item.items():
            its[items.index(i) + 1] = value
        return Snapshot(**{**snap.__dict__, "num_slices": T, "slices": snap.items.astype(np.int16),
                           "user_sets": us, "item_sets": its})

    model = sliced(["u1", "u2"], ["x", "y"], {}, {})
    # today: u2 is idx 1, u1 idx 2; items y idx 1, x idx 2, z idx 3 (unknown to the model)
    u2_sets = np.array([[[1, 3], [2, 0]], [[2, 0], [0, 0]]])  # items y, z | users u1
    y_sets = np.array([[[1, 2], [2, 3]], [[0, 0], [0, 0]]])  # users u2, u1 | items x, z
    today = sliced(["u2", "u1"], ["y", "x", "z"], {"u2": u2_sets}, {"y": y_sets})
    snap = translate(today, model).snapshot
    # in the model's ids: u1 = 1, u2 = 2, x = 1, y = 2; z (unknown) and padding -> 0
    assert snap.user_sets[2].tolist() == [[[2, 0], [1, 0]], [[1, 0], [0, 0]]]
    assert snap.item_sets[2].tolist() == [[[2, 1], [1, 0]], [[0, 0], [0, 0]]]
    assert not snap.user_sets[1].any() and not snap.item_sets[1].any()
    with pytest.raises(ValueError, match="3 slices"):
        translate(sliced(["u1"], ["x"], {}, {}, T=3), model)


def _sasrec(num_users: int, num_items: int):
    params = dict(load_config("sample-loo", "sasrec", "local", []).model.params)
    params.update(embed_dim=8, init_std=0.3, embed_init_std=0.3, dropout=0.0)
    torch.manual_seed(0)
    return build_model("sasrec", params, DataSizes(num_users, num_items, 0, 0, L)).eval()


def test_next_item_top_k_is_the_models_ranking_of_every_unseen_item():
    items = [f"i{k}" for k in range(1, 13)]
    snap = events("leave_one_out", ["u1", "u2", "u3"], items,
                  {"u1": ["i1", "i2", "i3"], "u2": ["i4"], "u3": ["i5", "i1", "i1", "i6"]})
    model = _sasrec(3, 12)
    top = TopK(model, snap, model_users=3, sequence_len=L)
    user = torch.tensor([1, 2, 3])
    got, scores = top.top(user, 5, exclude_seen=True, candidates=500)
    everything = torch.arange(1, 13).expand(3, -1)
    ones = torch.ones(3, dtype=torch.int64)
    cut = torch.tensor([3, 1, 4])  # after each user's last event
    with torch.no_grad():
        all_scores = model(top.builder.build(user, cut, everything, ones)).scores  # (3, 12)
    for row, seen in enumerate([{1, 2, 3}, {4}, {5, 1, 6}]):
        allowed = [i for i in range(1, 13) if i not in seen]
        ranked = sorted(allowed, key=lambda i: -float(all_scores[row, i - 1]))[:5]
        assert got[row].tolist() == ranked
        assert torch.allclose(scores[row].float(), all_scores[row, got[row] - 1], atol=1e-5)
    shown, _ = top.top(user, 12, exclude_seen=False, candidates=500)
    assert shown.shape == (3, 12) and sorted(shown[0].tolist()) == list(range(1, 13))


def test_a_user_the_model_never_saw_gets_the_popularity_ranking_without_seen_items():
    items = [f"i{k}" for k in range(1, 7)]
    snap = events("leave_one_out", ["u1", "u2", "new"], items,
                  {"u1": ["i1", "i2", "i2", "i3"], "u2": ["i2", "i3", "i4"], "new": ["i2"]})
    top = TopK(_sasrec(2, 6), snap, model_users=2, sequence_len=L)
    got, scores = top.top(torch.tensor([3, top.nobody]), 3, exclude_seen=True, candidates=9)
    # positive events: i2 4, i3 2, i1 1, i4 1; "new" has met i2
    assert got[0][0] == 3 and set(got[0][1:].tolist()) == {1, 4}
    assert scores[0].tolist() == [2.0, 1.0, 1.0]
    assert got[1][:2].tolist() == [2, 3] and scores[1].tolist() == [4.0, 2.0, 1.0]


def test_target_aware_models_rerank_the_most_popular_unseen_items():
    """DIN (feedback) scores the ``candidates`` most popular items its user has not met,
    each with its forward score; a cold user keeps popularity's."""
    items = [f"i{k}" for k in range(1, 9)]
    hist = {"u1": ["i1", "i2", "i3", "i1"], "u2": ["i2", "i4", "i5"], "u3": ["i6"]}
    labels = {"u1": [1, 0, 1, 1], "u2": [1, 1, 1], "u3": [0]}
    snap = events("feedback", ["u1", "u2", "u3"], items, hist, labels)
    params = dict(load_config("sample-feedback", "din", "local", []).model.params)
    torch.manual_seed(0)
    model = build_model("din", params, DataSizes(2, 8, 0, 0, L)).eval()
    top = TopK(model, snap, model_users=2, sequence_len=L)
    # positive events: i1 2, then i2..i5 1 each, i6..i8 0: popular order 1..8 (ties by idx)
    got, scores = top.top(torch.tensor([1, 2, 3]), 3, exclude_seen=True, candidates=4)
    cand = {1: [4, 5, 6, 7], 2: [1, 3, 6, 7]}  # the 4 most popular each user has not met
    with torch.no_grad():
        for user, pool in cand.items():
            cut = torch.tensor([len(hist[f"u{user}"])])
            batch = top.builder.build(torch.tensor([user]), cut, torch.tensor([pool]),
                                      torch.ones(1, dtype=torch.int64))
            forward = model(batch).scores[0]
            best = sorted(range(4), key=lambda j: -float(forward[j]))[:3]
            assert got[user - 1].tolist() == [pool[j] for j in best]
            assert torch.allclose(scores[user - 1].float(), forward[best], atol=1e-5)
    # cold u3: popularity over its candidates 1..4
    assert got[2][0] == 1 and set(got[2][1:].tolist()) < {2, 3, 4}
    assert scores[2].tolist() == [2.0, 1.0, 1.0]


def test_item_chunks_keep_the_same_top_k(monkeypatch):
    """The next-item path keeps a running top-K over item chunks (memory B x chunk, not
    B x I): chunks of 5 of 12 items give exactly the lists of one chunk."""
    import trainers.top_k as top_k

    items = [f"i{k}" for k in range(1, 13)]
    snap = events("leave_one_out", ["u1", "u2", "u3"], items,
                  {"u1": ["i1", "i7", "i3"], "u2": ["i12"], "u3": ["i5", "i6"]})
    top = TopK(_sasrec(2, 12), snap, model_users=2, sequence_len=L)
    users = torch.tensor([1, 2, 3])
    whole = top.top(users, 8, exclude_seen=True, candidates=500)
    monkeypatch.setattr(top_k, "ITEMS_PER_CHUNK", 5)
    chunked = top.top(users, 8, exclude_seen=True, candidates=500)
    # warm users: the same lists; the cold one: popularity, whose ties may order either way
    assert torch.equal(whole[0][:2], chunked[0][:2])
    assert torch.allclose(whole[1], chunked[1], atol=1e-6)
    assert not set(chunked[0][0].tolist()) & {1, 3, 7}
