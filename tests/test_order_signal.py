"""benchmarks/order_signal.py's counts: ordered consecutive pairs and unordered co-occurring
pairs of each user's train part, looked up in bulk (issue 23's order diagnostic)."""

from __future__ import annotations

import numpy as np

from benchmarks.order_signal import PairTable, pair_counts, places, train_parts


def test_train_parts_stop_at_each_users_end():
    offsets = np.array([0, 0, 4, 6])  # user 0 has none, user 1 four events, user 2 two
    items = np.array([1, 2, 3, 4, 2, 3])
    parts = train_parts(offsets, items, np.array([0, 3, 2]))
    assert [p.tolist() for p in parts] == [[], [1, 2, 3], [2, 3]]


def test_pairs_count_transitions_by_direction_and_sets_once_per_user():
    steps, both = pair_counts([np.array([1, 2, 3, 2]), np.array([2, 3]), np.array([5])], 5)
    after, together = PairTable(steps, 6), PairTable(both, 6)
    a = np.array([1, 2, 3, 2, 3, 1, 5])
    b = np.array([2, 3, 2, 1, 1, 3, 5])
    # 1->2 once, 2->3 in both users, 3->2 once, never 2->1, 3->1, 1->3, 5->5
    assert after(a, b).tolist() == [1, 2, 1, 0, 0, 0, 0]
    # users holding both (either order), counted once a user even where a pair repeats
    assert together(a, b).tolist() == [1, 2, 2, 1, 1, 1, 0]
    assert PairTable(np.zeros(0, np.int64), 6)(a, b).tolist() == [0] * 7


def test_places_order_by_count_then_popularity_and_keep_exact_ties():
    """Counts first, popularity breaks their ties, an equal pair stays a tie (ranked
    pessimistically later), and a popularity difference survives counts of any size."""
    counts = np.array([[3, 1, 1, 0, 1], [2e8, 2e8, 0, 0, 1]])
    popularity = np.array([[0, 5, 2, 9, 5], [7, 8, 1, 1, 0]])
    assert places(counts, popularity).tolist() == [[4, 2, 1, 0, 2], [3, 4, 0, 0, 2]]
