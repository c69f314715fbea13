"""Leave-one-out index on a tiny hand-made log: targets by hand (ties broken by raw line
order), negatives never touched and shared by valid and test, fixed negatives from ingest,
seeded stability, short users counted."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index_data import NUM_ITEMS, ts, write_ingest

from conf.loading import load_config
from spark_jobs import negatives as neg
from spark_jobs.index import run_index
from spark_jobs.index_leave_one_out import split_batch

LOG = [
    (1, 3, ts(0, 9), 1), (1, 5, ts(1, 9), 1), (1, 7, ts(2, 9), 1), (1, 9, ts(3, 9), 1),
    # user 2: items 8 and 6 share a timestamp; the raw line order puts 8 first
    (2, 4, ts(0, 9), 1), (2, 8, ts(1, 10), 1), (2, 6, ts(1, 10), 1),
    (3, 2, ts(0, 9), 1), (3, 4, ts(1, 9), 1),  # two events: too short
    (4, 10, ts(0, 9), 1), (4, 11, ts(0, 10), 0), (4, 12, ts(0, 11), 1),  # label 0 counts too
    # user 5 repeats item 1; lines out of time order are sorted by ts
    (5, 3, ts(4, 9), 1), (5, 1, ts(0, 9), 1), (5, 2, ts(1, 9), 1), (5, 1, ts(2, 9), 1),
    (5, 4, ts(5, 9), 1),
]
# user -> (train target, valid target, test target) and cuts (n-3, n-2, n-1)
TARGETS = {1: ((5, 1), (7, 2), (9, 3)), 2: ((4, 0), (8, 1), (6, 2)),
           4: ((10, 0), (11, 1), (12, 2)), 5: ((1, 2), (3, 3), (4, 4))}
TOUCHED = {u: {i for v, i, _, _ in LOG if v == u} for u in range(1, 6)}
FIXED = {1: [20, 21, 22, 23, 24], 2: [30, 31, 32, 33, 34]}


def _config(root, extra=()):
    return load_config("sample", "score", "local",
                       [f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
                        f"tracking.uri=sqlite:///{root}/mlflow.db",
                        f"tracking.artifact_location={root}/mlartifacts",
                        "spark.master=local[2]", "spark.driver_memory=2g",
                        "spark.shuffle_partitions=2", "index.protocol=leave_one_out",
                        "index.eval_negatives=5", "index.train_negatives=2", "index.seed=5",
                        *extra])


def _samples(result, split):
    return {r["user"]: r for r in pq.read_table(f"{result['uri']}/samples/{split}").to_pylist()}


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("loo")
    write_ingest(root / "work", LOG)
    return run_index(_config(root))


@pytest.fixture(scope="module")
def built_fixed(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("loo_fixed")
    write_ingest(root / "work", LOG, fixed_negatives=FIXED)
    return run_index(_config(root))


def test_targets_and_cuts_by_hand(built):
    for k, split in enumerate(("train", "valid", "test")):
        rows = _samples(built, split)
        assert set(rows) == set(TARGETS)  # user 3 (two events) has no row
        for user, row in rows.items():
            assert (row["candidates"][0], row["cut"]) == TARGETS[user][k]
            assert row["target_label"] == 1 and row["real_negatives"] == 0
            assert len(row["candidates"]) == 1 + (2 if split == "train" else 5)


def test_negatives_never_touched_and_shared_by_valid_and_test(built):
    valid, test, train = (_samples(built, s) for s in ("valid", "test", "train"))
    for user in TARGETS:
        for row in (valid[user], test[user], train[user]):
            cand = row["candidates"]
            assert len(set(cand)) == len(cand) and all(1 <= c <= NUM_ITEMS for c in cand)
            assert not set(cand[1:]) & TOUCHED[user]
        assert valid[user]["candidates"][1:] == test[user]["candidates"][1:]


def test_sequences_and_manifest(built):
    seqs = {r["user"]: r for r in pq.read_table(f"{built['uri']}/sequences").to_pylist()}
    assert seqs[2]["items"] == [4, 8, 6] and seqs[5]["items"] == [1, 2, 1, 3, 4]
    assert seqs[4]["label"] == [1, 0, 1] and set(seqs[2]) == {"user", "items", "ts", "label"}
    m = built["manifest"]
    assert m["protocol"] == "leave_one_out"
    assert m["counts"]["users_too_short"] == 1 and m["counts"]["sequences"] == 5
    assert m["counts"]["eval_negatives_fixed"] == 0 and m["counts"]["eval_negatives_sampled"] == 4
    assert m["counts"]["samples_valid"] == 4


def test_fixed_negatives_used_when_present(built, built_fixed):
    valid, test = _samples(built_fixed, "valid"), _samples(built_fixed, "test")
    for user, fixed in FIXED.items():
        assert valid[user]["candidates"][1:] == fixed == test[user]["candidates"][1:]
    # users without a line keep their seeded draws, the same as without the table
    assert valid[5]["candidates"] == _samples(built, "valid")[5]["candidates"]
    assert built_fixed["manifest"]["counts"]["eval_negatives_fixed"] == 2


def _batch(fixed=None):
    users = sorted(TOUCHED)
    items = [[i for _, i, _, _ in sorted((t, n, i, u) for n, (u, i, t, _) in enumerate(LOG)
                                         if u == v)] for v in users]
    return pa.RecordBatch.from_pydict({
        "user": pa.array(users, pa.int32()), "items": pa.array(items, pa.list_(pa.int32())),
        "fixed": pa.array([(fixed or {}).get(u) for u in users], pa.list_(pa.int32())),
    })


def test_draws_are_seeded_and_stable():
    def run(seed, split="test", fixed=None):
        return split_batch(_batch(fixed), split,
                           neg.NegativeSampler(NUM_ITEMS, 5, seed, neg.split_salt("valid"), None)
                           ).to_pydict()["candidates"]

    assert run(1) == run(1) and run(1) != run(2)
    assert [c[1:] for c in run(1, "valid")] == [c[1:] for c in run(1, "test")]


def test_fixed_negatives_that_do_not_fit_are_errors():
    sampler = neg.NegativeSampler(NUM_ITEMS, 5, 1, 2, None)
    with pytest.raises(ValueError, match="index.eval_negatives=5"):
        split_batch(_batch({1: [20, 21]}), "test", sampler)
    with pytest.raises(ValueError, match="in the user's sequence"):
        split_batch(_batch({1: [3, 21, 22, 23, 24]}), "test", sampler)  # 3 is user 1's item


def test_ingest_without_seq_names_the_rerun(spark, tmp_path):
    write_ingest(tmp_path / "work", LOG)
    part = tmp_path / "work" / "ingest" / "interactions" / "part-0.parquet"
    pq.write_table(pq.read_table(part).drop(["seq"]), part)
    with pytest.raises(ValueError, match=r"\['seq'\].*rerun `seqrec ingest`"):
        run_index(_config(tmp_path))
