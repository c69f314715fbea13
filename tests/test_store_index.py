"""Dense loaders (store/index.py) against the Parquet rows they come from."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store.files import write_json
from store import index as index_store

S, T, U, I = 3, 4, 5, 7


def _sets_table(rng, n_entities, rows):
    keys = sorted({(int(e), int(t)) for e, t in zip(rng.integers(1, n_entities + 1, rows),
                                                   rng.integers(0, T, rows))})
    return pa.table({
        "entity": pa.array([k[0] for k in keys], pa.int32()),
        "slice": pa.array([k[1] for k in keys], pa.int16()),
        "interaction": pa.array([rng.integers(1, 9, S).tolist() for _ in keys],
                                pa.list_(pa.int32())),
        "co_interaction": pa.array([rng.integers(0, 9, S).tolist() for _ in keys],
                                   pa.list_(pa.int32())),
    })


@pytest.fixture
def index_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "index"
    tables = {"user_sets": _sets_table(rng, U, 12), "item_sets": _sets_table(rng, I, 15)}
    for name, table in tables.items():
        (root / name).mkdir(parents=True)
        half = table.num_rows // 2  # two files: the loader reads a folder of parts
        pq.write_table(table.slice(0, half), root / name / "part-0.parquet")
        pq.write_table(table.slice(half), root / name / "part-1.parquet")
    samples = pa.table({
        "user": pa.array([4, 1, 1], pa.int32()), "cut": pa.array([3, 3, 2], pa.int32()),
        "candidates": pa.array([[5, 1, 2], [7, 3, 4], [2, 6, 5]], pa.list_(pa.int32())),
        "real_negatives": pa.array([0, 1, 0], pa.int16()),
        "target_label": pa.array([1, 1, 0], pa.int8()),
    })
    (root / "samples" / "test").mkdir(parents=True)
    pq.write_table(samples, root / "samples" / "test" / "part-0.parquet")
    pop = pa.table({"item": pa.array([1, 7, 7], pa.int32()), "slice": pa.array([0, 0, 3], pa.int16()),
                    "count": pa.array([4, 2, 9], pa.int64())})
    (root / "item_popularity").mkdir()
    pq.write_table(pop, root / "item_popularity" / "part-0.parquet")
    seq = pa.table({
        "user": pa.array([3, 1], pa.int32()),
        "items": pa.array([[5, 6, 5], [2]], pa.list_(pa.int32())),
        "ts": pa.array([[10, 20, 30], [15]], pa.list_(pa.int64())),
        "slice": pa.array([[0, 1, 1], [0]], pa.list_(pa.int16())),
        "label": pa.array([[1, 0, 1], [1]], pa.list_(pa.int8())),
    })
    (root / "sequences").mkdir()
    pq.write_table(seq, root / "sequences" / "part-0.parquet")
    write_json(str(root / "manifest.json"), {"num_users": U, "num_items": I, "num_slices": T,
                                             "set_size": S})
    return root, tables


def test_dense_sets_equal_the_parquet_rows(index_dir):
    root, tables = index_dir
    arrays = index_store.load_set_arrays(str(root))
    assert arrays.users.shape == (U + 1, T, 2, S) and arrays.items.shape == (I + 1, T, 2, S)
    assert arrays.users.dtype == np.int32
    for dense, table in ((arrays.users, tables["user_sets"]), (arrays.items, tables["item_sets"])):
        seen = np.zeros(dense.shape[:2], dtype=bool)
        for row in table.to_pylist():
            e, t = row["entity"], row["slice"]
            assert dense[e, t, 0].tolist() == row["interaction"]
            assert dense[e, t, 1].tolist() == row["co_interaction"]
            seen[e, t] = True
        assert not dense[~seen].any()  # zeros wherever no row exists, row 0 included


def test_samples_popularity_and_sequences(index_dir):
    root, _ = index_dir
    s = index_store.load_samples(str(root), "test")
    assert s["user"].tolist() == [1, 1, 4]  # sorted by (user, cut, target)
    assert s["candidates"].tolist() == [[2, 6, 5], [7, 3, 4], [5, 1, 2]]
    assert s["real_negatives"].tolist() == [0, 1, 0] and s["cut"].tolist() == [2, 3, 3]
    assert s["target_label"].tolist() == [0, 1, 1]
    pop = index_store.load_popularity(str(root))
    assert pop.shape == (I + 1, T) and pop.sum() == 15 and pop[7, 3] == 9 and pop[1, 0] == 4
    seq = index_store.load_sequences(str(root))
    assert seq.offsets.tolist() == [0, 0, 1, 1, 4, 4, 4]
    assert seq.items.tolist() == [2, 5, 6, 5] and seq.ts.tolist() == [15, 10, 20, 30]
    assert seq.label.tolist() == [1, 1, 0, 1] and seq.slice.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown split"):
        index_store.load_samples(str(root), "dev")


def test_rows_that_do_not_fit_the_manifest_are_rejected(index_dir):
    root, _ = index_dir
    write_json(str(root / "manifest.json"), {"num_users": 2, "num_items": I, "num_slices": T,
                                             "set_size": S})
    with pytest.raises(ValueError, match="out of range"):
        index_store.load_set_arrays(str(root))
    with pytest.raises(FileNotFoundError, match="seqrec index"):
        index_store.load_set_arrays(str(root / "nowhere"))


def test_protocol_defaults_to_slices_and_unknown_names_fail(index_dir):
    root, _ = index_dir
    assert index_store.index_protocol(str(root.parent)) == "slices"  # manifest without the key
    for name in ("leave_one_out", "feedback"):
        assert index_store.protocol_of({"protocol": name}) == name
    with pytest.raises(ValueError, match="unknown protocol 'sessions'"):
        index_store.protocol_of({"protocol": "sessions"})


def test_samples_of_an_older_index_name_the_missing_columns(index_dir):
    root, _ = index_dir
    old = pa.table({"user": pa.array([1], pa.int32()), "slice": pa.array([3], pa.int16()),
                    "candidates": pa.array([[1, 2]], pa.list_(pa.int32())),
                    "real_negatives": pa.array([0], pa.int16())})
    (root / "samples" / "valid").mkdir()
    pq.write_table(old, root / "samples" / "valid" / "part-0.parquet")
    with pytest.raises(ValueError, match=r"lack columns \['cut', 'target_label'\]"):
        index_store.load_samples(str(root), "valid")


def test_unsliced_sequences_and_train_part_popularity(tmp_path):
    root = tmp_path / "index"
    (root / "sequences").mkdir(parents=True)
    pq.write_table(pa.table({
        "user": pa.array([2, 1], pa.int32()),
        "items": pa.array([[3, 4, 3, 5], [1, 3, 2]], pa.list_(pa.int32())),
        "ts": pa.array([[1, 2, 3, 4], [5, 6, 7]], pa.list_(pa.int64())),
        "label": pa.array([[1, 0, 1, 1], [1, 1, 1]], pa.list_(pa.int8())),
    }), root / "sequences" / "part-0.parquet")
    write_json(str(root / "manifest.json"), {"protocol": "feedback", "num_users": 3,
                                             "num_items": 5})
    seq = index_store.load_sequences(str(root))
    assert seq.slice is None and seq.items.tolist() == [1, 3, 2, 3, 4, 3, 5]
    # user 1: valid row at position 1, test at 2 -> train part [1]; user 2: test at 3 ->
    # train part [3, 4 (negative, not counted), 3]; user 3 has no events.
    counts = index_store.train_popularity(seq, np.array([1, 1, 2]), np.array([2, 1, 3]), 5)
    assert counts.tolist() == [0, 1, 0, 2, 0, 0]


def test_slice_negative_weights_by_hand():
    from store.index import slice_negative_weights

    counts = np.array([[0, 0, 0, 0],    # padding row
                       [3, 0, 1, 0],    # item 1: active in 2 slices
                       [1, 1, 1, 1],    # item 2: 4
                       [0, 0, 0, 5],    # item 3: 1
                       [0, 2, 2, 2]])   # item 4: 3
    assert slice_negative_weights(counts, "uniform", 1, 3) is None
    np.testing.assert_array_equal(slice_negative_weights(counts, "popularity", 1, 3),
                                  [1, 4, 3, 1, 3])  # 1 + positives in slices 0..1
    np.testing.assert_array_equal(slice_negative_weights(counts, "active", 1, 3),
                                  [0, 0, 1, 0, 1])  # slices of all T count, not only 0..1
    np.testing.assert_array_equal(slice_negative_weights(counts, "active", 1, 1),
                                  [0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="lower index.active_min_slices"):
        slice_negative_weights(counts, "active", 1, 5)
