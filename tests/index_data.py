"""A hand-made ingest output (interactions, id maps, manifest) for the index tests, so they
do not depend on the ingest stage. Slices of the ``sample`` preset: Asia/Shanghai days from
2017-11-25, one day each, T = 9 (train target 6, valid 7, test 8)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store.files import write_json

START = dt.datetime(2017, 11, 25, tzinfo=dt.timezone(dt.timedelta(hours=8)))
NUM_USERS, NUM_ITEMS = 12, 40


def ts(day: int, hour: int, minute: int = 0) -> int:
    """UTC seconds of local (Asia/Shanghai) time ``hour:minute`` on day ``day`` of the window."""
    return int((START + dt.timedelta(days=day, hours=hour, minutes=minute)).timestamp())


# (user, item, ts, label). Sets of slices 0-2 are written out by hand in test_index.py.
TOY = [
    # slice 0; the repeated (1, 1) counts once; 23:30 local is still day 0
    (1, 1, ts(0, 10), 1), (1, 1, ts(0, 11), 1), (1, 2, ts(0, 12), 1),
    (2, 2, ts(0, 9), 1), (2, 3, ts(0, 13), 1), (3, 3, ts(0, 23, 30), 1),
    (4, 6, ts(0, 8), 0),  # negative feedback: in no set
    # slice 1; 00:30 local of day 1 is 16:30 UTC of day 0
    (1, 1, ts(1, 0, 30), 1), (4, 4, ts(1, 12), 1),
    # slice 2: item 5 is a hub
    (1, 5, ts(2, 10), 1), (2, 5, ts(2, 10), 1), (3, 5, ts(2, 10), 1), (4, 5, ts(2, 10), 1),
    (1, 6, ts(2, 11), 1),
    # targets: train slice 6, valid 7, test 8
    (1, 7, ts(6, 9), 1), (1, 8, ts(6, 10), 1), (2, 7, ts(6, 11), 1),
    (1, 9, ts(7, 9), 1), (2, 10, ts(7, 9), 1), (2, 11, ts(7, 10), 1), (3, 9, ts(7, 12), 1),
    (1, 12, ts(8, 9), 1), (3, 13, ts(8, 9), 1), (4, 12, ts(8, 10), 1),
    # real negatives in the test slice; (3, 13) is also a positive of user 3, so never a negative
    (1, 14, ts(8, 11), 0), (1, 15, ts(8, 12), 0), (3, 13, ts(8, 13), 0), (3, 16, ts(8, 14), 0),
    (3, 17, ts(8, 15), 0), (3, 18, ts(8, 16), 0),
    # outside the window: dropped
    (12, 1, ts(-1, 12), 1), (12, 1, ts(9, 12), 1),
]


def random_rows(seed: int = 3, n: int = 300) -> list[tuple[int, int, int, int]]:
    """Denser random positives in slices 3-5 (users 1..10, items 20..35) for property checks."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 11, n)
    items = rng.integers(20, 36, n)
    days = rng.integers(3, 6, n)
    return [(int(u), int(i), ts(int(d), 12), 1) for u, i, d in zip(users, items, days)]


def write_ingest(work_dir: str | Path, rows: list[tuple[int, int, int, int]],
                 fixed_negatives: dict[int, list[int]] | None = None,
                 num_users: int = NUM_USERS, num_items: int = NUM_ITEMS) -> None:
    """Write ``<work_dir>/ingest`` as the ingest stage would: ``seq`` is the row's position in
    ``rows`` (the raw line order); ``fixed_negatives`` (user -> ids) becomes
    ``ingest/fixed_negatives`` as from an S3-Rec ``_sample.txt``; ids run 1..num_users and
    1..num_items."""
    out = Path(work_dir) / "ingest"
    (out / "interactions").mkdir(parents=True, exist_ok=True)
    user, item, t, label = (list(c) for c in zip(*rows))
    table = pa.table({
        "user_idx": pa.array(user, pa.int32()), "item_idx": pa.array(item, pa.int32()),
        "ts": pa.array(t, pa.int64()), "behavior": pa.array(["pv"] * len(rows)),
        "rating": pa.array([None] * len(rows), pa.float32()),
        "label": pa.array(label, pa.int8()),
        "seq": pa.array(range(len(rows)), pa.int64()),
    })
    pq.write_table(table, out / "interactions" / "part-0.parquet")
    if fixed_negatives is not None:
        (out / "fixed_negatives").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "user": pa.array(list(fixed_negatives), pa.int32()),
            "negatives": pa.array(list(fixed_negatives.values()), pa.list_(pa.int32())),
        }), out / "fixed_negatives" / "part-0.parquet")
    for name, n in (("users", num_users), ("items", num_items)):
        (out / "id_maps" / name).mkdir(parents=True, exist_ok=True)
        ids = pa.table({"raw": pa.array([f"r{i}" for i in range(1, n + 1)]),
                        "idx": pa.array(range(1, n + 1), pa.int32())})
        pq.write_table(ids, out / "id_maps" / name / "part-0.parquet")
    write_json(str(out / "manifest.json"), {
        "stage": "ingest", "schema_version": 1, "input_hash": "hand", "config_hash": "hand",
        "counts": {"kept": len(rows), "users": num_users, "items": num_items},
    })
