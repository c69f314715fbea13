"""Feedback index (DFAR) on a hand-made log over local days 0-2: the per-user day split by
hand (a local day that starts the previous UTC day), the global-noon and leave-one-out
splits, target labels, negatives the user never touched, fixed by the seed, and drawn by the
trainers' weights (1 + positive events of the users' train parts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from index_data import NUM_ITEMS, ts, write_ingest

from conf.loading import load_config
from spark_jobs import negatives as neg
from spark_jobs.index import run_index
from spark_jobs.index_feedback import assign_splits, last_day_bounds, split_batch, train_part
from trainers.split_data import load_split_data

ZONE = "Asia/Shanghai"
LOG = [
    (1, 1, ts(0, 9), 1), (1, 2, ts(0, 10), 0),
    (1, 3, ts(1, 9), 1), (1, 4, ts(1, 10), 0),
    (1, 5, ts(2, 10), 1), (1, 6, ts(2, 15), 1),
    # user 2: 00:30 local on day 2 is 16:30 UTC on day 1, still local day 2
    (2, 7, ts(1, 23, 30), 1), (2, 8, ts(2, 0, 30), 0), (2, 9, ts(2, 13), 1),
    (3, 1, ts(0, 9), 1),  # one event: no row
    (4, 10, ts(2, 8), 1), (4, 11, ts(2, 9), 0),
]
# user_days by hand: split -> {(user, cut): (target item, target label)}
USER_DAYS = {
    "train": {(1, 1): (2, 0)},
    "valid": {(1, 2): (3, 1), (1, 3): (4, 0)},
    "test": {(1, 4): (5, 1), (1, 5): (6, 1), (2, 1): (8, 0), (2, 2): (9, 1), (4, 1): (11, 0)},
}
TOUCHED = {u: {i for v, i, _, _ in LOG if v == u} for u in range(1, 5)}


def _ordered(user):
    return sorted((t, n, i, lb) for n, (u, i, t, lb) in enumerate(LOG) if u == user)


def _config(root: Path):
    return load_config("sample", "score", "local",
                       [f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
                        f"tracking.uri=sqlite:///{root}/mlflow.db",
                        f"tracking.artifact_location={root}/mlartifacts",
                        "spark.master=local[2]", "spark.driver_memory=2g",
                        "spark.shuffle_partitions=2", "index.protocol=feedback",
                        "index.feedback_split=user_days", "index.negative_sampling=popularity",
                        "index.eval_negatives=9", "index.train_negatives=9", "index.seed=3"])


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    write_ingest(root / "work", LOG)
    return run_index(_config(root))


def test_user_days_split_by_hand(built):
    for split, expected in USER_DAYS.items():
        rows = pq.read_table(f"{built['uri']}/samples/{split}").to_pylist()
        got = {(r["user"], r["cut"]): (r["candidates"][0], r["target_label"]) for r in rows}
        assert got == expected
        for r in rows:
            cand = r["candidates"]
            assert len(cand) == 10 and len(set(cand)) == 10 and r["real_negatives"] == 0
            assert not set(cand[1:]) & TOUCHED[r["user"]]
            assert all(1 <= c <= NUM_ITEMS for c in cand)
    m = built["manifest"]
    assert m["protocol"] == "feedback" and m["feedback_split"] == "user_days"
    assert m["counts"]["users_single_event"] == 1
    assert m["counts"]["positive_targets_test"] == 3 and m["counts"]["samples_test"] == 5


def test_sequences_keep_labels_in_time_order(built):
    seqs = {r["user"]: r for r in pq.read_table(f"{built['uri']}/sequences").to_pylist()}
    assert seqs[2]["items"] == [7, 8, 9] and seqs[2]["label"] == [1, 0, 1]
    assert seqs[1]["ts"] == sorted(seqs[1]["ts"])


def _arrays(users):
    events = [_ordered(u) for u in users]
    offsets = np.cumsum([0] + [len(e) for e in events])
    stamps = np.array([t for e in events for t, _, _, _ in e], dtype=np.int64)
    return offsets, stamps


def test_global_noon_and_leave_one_out_splits():
    offsets, stamps = _arrays([1, 2, 4])
    noon = last_day_bounds(int(stamps.max()), ZONE)
    assert noon == (ts(2, 0), ts(2, 12))
    # per event of users 1 (6), 2 (3), 4 (2): 0 train, 1 valid, 2 test
    assert assign_splits(offsets, stamps, "global_noon", ZONE, noon).tolist() == \
        [0, 0, 0, 0, 1, 2] + [0, 1, 2] + [1, 1]
    assert assign_splits(offsets, stamps, "leave_one_out", ZONE, None).tolist() == \
        [0, 0, 0, 0, 1, 2] + [0, 1, 2] + [1, 2]
    assert assign_splits(offsets, stamps, "user_days", ZONE, None).tolist() == \
        [0, 0, 1, 1, 2, 2] + [1, 2, 2] + [2, 2]


def test_eval_groups_are_fixed_by_the_seed():
    users = [1, 2, 4]
    batch = pa.RecordBatch.from_pydict({
        "user": pa.array(users, pa.int32()),
        "items": pa.array([[i for _, _, i, _ in _ordered(u)] for u in users],
                          pa.list_(pa.int32())),
        "ts": pa.array([[t for t, _, _, _ in _ordered(u)] for u in users], pa.list_(pa.int64())),
        "label": pa.array([[lb for _, _, _, lb in _ordered(u)] for u in users],
                          pa.list_(pa.int8())),
    })

    def run(seed):
        sampler = neg.NegativeSampler(NUM_ITEMS, 9, seed, neg.split_salt("test"), None)
        return split_batch(batch, "test", sampler, "user_days", ZONE, None).to_pydict()

    first = run(7)
    assert first == run(7) and first["candidates"] != run(8)["candidates"]
    assert first["target_label"] == [1, 1, 0, 1, 0]


def test_train_part_ends_at_the_first_valid_or_test_row():
    offsets, stamps = _arrays([1, 2, 4])
    codes = assign_splits(offsets, stamps, "user_days", ZONE, None)
    # user 1: rows from position 2 on are valid; user 2's first event is a valid-day event
    # but no row (no history), so it stays; user 4's one row is at position 1
    assert train_part(offsets, codes, np.array([True, True, True])).tolist() == \
        [True, True, False, False, False, False] + [True, False, False] + [True, False]
    # a user without valid/test rows (index.max_eval_users left it out) keeps every event
    assert train_part(offsets, codes, np.array([True, False, True]))[6:9].tolist() == [True] * 3


def test_candidates_are_drawn_by_the_trainers_negative_weights(built):
    """Evaluation and training candidates are drawn by 1 + positive events of the users'
    train parts, the weights the trainers draw their own negatives by (issue 23): not by
    every interaction of the whole log, test period included."""
    cfg = _config(Path(built["uri"]).parent.parent)
    data = load_split_data(cfg, frozenset({"sequence", "sequence_label"}), ("train",), "cpu")
    weights = data.protocol.negative_weights(cfg, data.index_uri, data.num_slices,
                                             data.train_counts).numpy()
    # train parts by hand (USER_DAYS): user 1's events 0-1 (item 1 positive, 2 negative),
    # user 2's first event (7; its valid day has no row), user 3's only event (1), user 4's
    # first (10); the valid/test targets 3-6, 8, 9, 11 weigh nothing
    expected = np.ones(NUM_ITEMS + 1)
    expected[[1, 7, 10]] += [2, 1, 1]
    np.testing.assert_array_equal(weights, expected)

    seqs = pq.read_table(f"{built['uri']}/sequences")
    seqs = seqs.filter(pc.greater_equal(pc.list_value_length(seqs.column("items")), 2))
    batch = seqs.combine_chunks().to_batches()[0]  # the users with a row, as the index reads
    for split in ("train", "valid", "test"):
        sampler = neg.NegativeSampler(NUM_ITEMS, 9, 3, neg.split_salt(split), weights)
        drawn = split_batch(batch, split, sampler, "user_days", ZONE, None).to_pylist()
        written = pq.read_table(f"{built['uri']}/samples/{split}").to_pylist()
        assert sorted(written, key=_row_key) == sorted(drawn, key=_row_key), split


def _row_key(row: dict) -> tuple[int, int]:
    return row["user"], row["cut"]
