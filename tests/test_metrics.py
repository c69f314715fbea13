"""Ranking metrics: hand-computed examples, pessimistic ties, chunking, full ranking; the
feedback protocol's AUC / GAUC / MRR@10 / NDCG@10 / auc_pos and the random floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainers.metrics import (
    FeedbackAccumulator,
    RankHistogram,
    RankingAccumulator,
    items_ranked_above,
    rank_of_positive,
    ranking_metrics,
)
from trainers.protocols import PROTOCOLS


def test_rank_counts_ties_against_the_positive():
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3],  # best: rank 1
        [0.5, 0.5, 0.1, 0.7],  # one tie + one above: rank 3
        [0.2, 0.3, 0.4, 0.5],  # worst: rank 4
    ])
    assert rank_of_positive(scores).tolist() == [1, 3, 4]


def test_constant_scorer_gets_the_worst_rank_and_zero_auc():
    scores = np.zeros((6, 100), dtype=np.float32)  # numpy accepted too
    assert rank_of_positive(scores).tolist() == [100] * 6
    m = ranking_metrics(scores, np.arange(6))
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 100)
    assert m["auc"] == 0.0 and m["gauc"] == 0.0


def test_hand_computed_metrics():
    # ranks 1, 3, 7 over C = 10 candidates (negatives strictly below: 9, 7, 3)
    scores = torch.zeros(3, 10)
    scores[0, 0] = 1.0  # all negatives 0 -> rank 1
    scores[1] = torch.tensor([0.5, 0.9, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # rank 3
    scores[2] = torch.tensor([0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.1, 0.1, 0.1])  # ties: rank 7
    assert rank_of_positive(scores).tolist() == [1, 3, 7]
    m = ranking_metrics(scores, torch.tensor([1, 2, 3]))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 3)
    assert m["auc"] == pytest.approx((9 / 9 + 7 / 9 + 3 / 9) / 3)
    assert m["gauc"] == pytest.approx(m["auc"])  # one list per user


def test_gauc_pools_a_users_lists_and_weights_by_list_count():
    scores = torch.tensor([
        [0.9, 0.1, 0.5],  # user 7, list a
        [0.4, 0.3, 0.95],  # user 7, list b
        [0.2, 0.5, 0.5],  # user 8: positive below both negatives
    ])
    users = torch.tensor([7, 7, 8])
    # user 7: positives {0.9, 0.4}, negatives {0.1, 0.5, 0.3, 0.95}; 0.9 beats 3, 0.4 beats 2
    auc_7 = (3 + 2) / (2 * 4)
    auc_8 = 0.0
    m = ranking_metrics(scores, users)
    assert m["gauc"] == pytest.approx((2 * auc_7 + 1 * auc_8) / 3)
    assert m["auc"] == pytest.approx((2 / 2 + 1 / 2 + 0) / 3)


def test_chunked_accumulation_gives_identical_numbers():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (257, 11), generator=gen).float()  # many ties
    users = torch.randint(0, 40, (257,), generator=gen)
    acc = RankingAccumulator()
    for start in range(0, 257, 50):
        acc.update(scores[start : start + 50], users[start : start + 50])
    assert acc.compute() == ranking_metrics(scores, users)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN"):
        rank_of_positive(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="C >= 2"):
        rank_of_positive(torch.zeros(3, 1))
    acc = RankingAccumulator()
    acc.update(torch.zeros(2, 5), torch.arange(2))
    with pytest.raises(ValueError, match="same candidates"):
        acc.update(torch.zeros(2, 6), torch.arange(2))
    with pytest.raises(ValueError, match="zero lists"):
        RankingAccumulator().compute()


def test_full_ranking_in_chunks_with_exclusions():
    # 2 users, 8 items (id 0 = padding). User 0's positive is item 3, user 1's item 5.
    item_scores = torch.tensor([
        [9.0, 0.1, 0.7, 0.5, 0.5, 0.9, 0.2, 0.3],
        [9.0, 0.8, 0.8, 0.1, 0.2, 0.8, 0.9, 0.0],
    ])
    positive = torch.tensor([3, 5])
    pos_score = item_scores[torch.arange(2), positive]
    exclude = torch.zeros(2, 8, dtype=torch.bool)
    exclude[:, 0] = True  # padding never ranks, even with the top score
    exclude[torch.arange(2), positive] = True  # the positive does not tie with itself
    above = sum(
        items_ranked_above(pos_score, item_scores[:, s : s + 3], exclude[:, s : s + 3])
        for s in range(0, 8, 3)
    )
    ranks = 1 + above
    # user 0: 0.7, 0.5 (tie), 0.9 at or above 0.5 -> rank 4; user 1: 0.8, 0.8, 0.9 -> rank 4
    assert ranks.tolist() == [4, 4]
    hist = RankHistogram()
    hist.add(ranks)
    assert hist.metrics()["hr@5"] == 1.0 and hist.metrics()["mrr"] == pytest.approx(0.25)
    shared = torch.zeros(8, dtype=torch.bool)  # (N,) mask shared by every user
    assert items_ranked_above(pos_score, item_scores, shared).tolist() == [5, 5]


def _feedback(scores, users, labels) -> tuple[dict[str, float], FeedbackAccumulator]:
    acc = FeedbackAccumulator()
    acc.update(torch.tensor(scores), torch.tensor(users), torch.tensor(labels))
    return acc.compute(), acc


def test_feedback_metrics_by_hand():
    # Three groups of C = 3 (target first). Candidate rows with labels:
    #   user 1, group a: target 0.9 (label 1) vs 0.5, 0.2 -> rank 1
    #   user 1, group b: target 0.3 (label 0: disliked) vs 0.4, 0.1 -> not ranked
    #   user 2, group c: target 0.4 (label 1) vs 0.4 (tie), 0.6 -> rank 3 (pessimistic)
    m, acc = _feedback([[0.9, 0.5, 0.2], [0.3, 0.4, 0.1], [0.4, 0.4, 0.6]], [1, 1, 2],
                       [1, 0, 1])
    negatives = [0.5, 0.2, 0.3, 0.4, 0.1, 0.4, 0.6]  # every label-0 row of every group
    # pooled AUC: 0.9 beats all 7; 0.4 beats 0.2, 0.3, 0.1 (ties with 0.4 count 0)
    assert m["auc"] == pytest.approx((7 + 3) / (2 * len(negatives)))
    # per user: user 1 has 1 positive vs 5 negatives (all below) -> 1; user 2: 0.4 vs
    # {0.4, 0.6} -> 0; weights = groups (2 and 1)
    assert m["gauc"] == pytest.approx((2 * 1.0 + 1 * 0.0) / 3)
    assert acc.gauc_users == 2 and acc.gauc_skipped_users == 0
    # MRR@10 / NDCG@10 over the two positive-target groups only: ranks 1 and 3
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    # auc_pos: pooled over groups a and c only: 0.9 beats 4, 0.4 beats 1 (0.2) of 4
    assert m["auc_pos"] == pytest.approx((4 + 1) / (2 * 4))


def test_gauc_weights_users_by_rows_and_skips_one_class_users():
    scores = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.5],  # user 7: three groups
              [0.3, 0.7],  # user 8: one group
              [0.5, 0.1], [0.9, 0.2]]  # user 9: only negative targets -> no AUC
    users, labels = [7, 7, 7, 8, 9, 9], [1, 0, 1, 1, 0, 0]
    m, acc = _feedback(scores, users, labels)
    # user 7: positives {0.9, 0.6} vs negatives {0.1, 0.2, 0.8, 0.5}: 0.9 beats 4, 0.6 beats 3
    auc_7, auc_8 = (4 + 3) / (2 * 4), 0.0
    assert m["gauc"] == pytest.approx((3 * auc_7 + 1 * auc_8) / 4)
    assert acc.gauc_users == 2 and acc.gauc_skipped_users == 1
    # The unweighted mean of the users' AUCs is another number: the weights matter.
    assert m["gauc"] != pytest.approx((auc_7 + auc_8) / 2)


def test_feedback_chunks_and_bad_inputs():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 15, (120, 10), generator=gen).float()  # many ties
    users = torch.randint(0, 12, (120,), generator=gen)
    labels = torch.randint(0, 2, (120,), generator=gen)
    whole = FeedbackAccumulator()
    whole.update(scores, users, labels)
    chunked = PROTOCOLS["feedback"].new_accumulator()
    for start in range(0, 120, 35):
        chunked.update(scores[start:start + 35], users[start:start + 35],
                       labels[start:start + 35])
    assert chunked.compute() == whole.compute()
    with pytest.raises(ValueError, match="0 or 1"):
        FeedbackAccumulator().update(scores[:2], users[:2], torch.tensor([1, 2]))
    only_negative = FeedbackAccumulator()
    only_negative.update(scores[:3], users[:3], torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no group has a positive target"):
        only_negative.compute()
    with pytest.raises(ValueError, match="feedback protocol"):
        PROTOCOLS["slices"].new_accumulator().update(scores[:2], users[:2], torch.tensor([1, 0]))


def test_random_scores_hit_the_random_floor():
    # 10-candidate groups (DFAR): MRR@10 = H_10 / 10 = .2929, NDCG@10 = .4544 (PROTOCOLS.md)
    floor = PROTOCOLS["feedback"].random_floor(10)
    assert floor["mrr@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    assert floor["mrr@10"] == pytest.approx(0.2929, abs=1e-4)
    assert floor["ndcg@10"] == pytest.approx(0.4544, abs=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    acc = FeedbackAccumulator()
    acc.update(torch.rand(n, 10, generator=gen), torch.randint(0, 500, (n,), generator=gen),
               torch.randint(0, 2, (n,), generator=gen))
    m = acc.compute()
    for key in ("mrr@10", "ndcg@10", "auc", "gauc", "auc_pos"):
        assert m[key] == pytest.approx(floor[key], abs=0.01), key
    # the ranking protocols' floor over 100 candidates
    ranking = PROTOCOLS["leave_one_out"].random_floor(100)
    assert ranking["hr@10"] == pytest.approx(0.1) and ranking["hr@1"] == pytest.approx(0.01)
    scores = torch.rand(20_000, 100, generator=gen)
    measured = ranking_metrics(scores, torch.arange(20_000))
    for key in ("hr@10", "ndcg@10", "mrr", "auc"):
        assert measured[key] == pytest.approx(ranking[key], abs=0.01), key


def test_per_user_metrics_by_hand():
    """Issue 26: each user's metrics (the mean over the user's lists), what paired tests
    read; under feedback each user's AUC over their rows and MRR@10 over positive groups."""
    from trainers.metrics import FeedbackAccumulator, RankingAccumulator

    acc = RankingAccumulator()
    # user 7: ranks 1 and 3 (a tie counts against); user 2: rank 2
    acc.update(torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.6], [0.4, 0.6, 0.1]]),
               torch.tensor([7, 7, 2]))
    per = acc.per_user()
    assert per["user"].tolist() == [2, 7]
    assert per["mrr"].tolist() == pytest.approx([1 / 2, (1 + 1 / 3) / 2])
    assert per["hr@1"].tolist() == [0.0, 0.5]
    assert per["ndcg@5"].tolist() == pytest.approx([1 / math.log2(3), (1 + 0.5) / 2])

    fb = FeedbackAccumulator()
    # user 1: a positive group (target rank 2) and a negative one; user 4: negative only
    fb.update(torch.tensor([[0.5, 0.9, 0.1], [0.3, 0.2, 0.8], [0.7, 0.1, 0.2]]),
              torch.tensor([1, 1, 4]), torch.tensor([1, 0, 0]))
    per = fb.per_user()
    assert per["user"].tolist() == [1, 4]
    # user 1: one positive (0.5) against five label-0 rows (0.9, 0.1, 0.3, 0.2, 0.8): 3 below
    assert per["auc"][0].item() == pytest.approx(3 / 5) and math.isnan(per["auc"][1].item())
    assert per["mrr@10"][0].item() == 0.5 and math.isnan(per["mrr@10"][1].item())
