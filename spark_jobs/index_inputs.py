"""What every index builder shares: the interactions with their tie-break, table sizes, the
sequences table and the seeded cap on evaluation users (docs/architecture.md, "Evaluation
protocols")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as pads
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from store.files import filesystem, join

ROWS_PER_PARTITION = 2_000_000  # a numpy pass then holds ~1.5M triples with their sketches
NEEDED = ("user_idx", "item_idx", "ts", "seq", "label")


@dataclass(frozen=True)
class Inputs:
    """What index.py hands every builder besides the config and the events."""

    ingest: str  # the ingest folder (optional tables, e.g. fixed_negatives)
    interactions: int  # rows of ingest/interactions
    num_users: int  # largest user idx
    num_items: int  # largest item idx: items are 1..num_items
    partitions: int  # P, the stage's shuffle partitions


def read_events(spark, src: str) -> DataFrame:
    """The ingest interactions as index events.

    Returns:
        DataFrame[user int, item int, ts long, seq long, label byte]; ``seq`` is the raw
        line order, the tie-break for equal ``ts``.

    Raises:
        ValueError: a column is missing (an ingest output older than ``seq``): the message
            names the rerun of ingest.
    """
    raw = spark.read.parquet(join(src, "interactions"))
    missing = [c for c in NEEDED if c not in raw.columns]
    if missing:
        raise ValueError(f"{src}/interactions lacks column(s) {missing} (has {raw.columns}); "
                         f"it was written by an older ingest: rerun `seqrec ingest`")
    return raw.select(F.col("user_idx").cast("int").alias("user"),
                      F.col("item_idx").cast("int").alias("item"),
                      F.col("ts").cast("long").alias("ts"), F.col("seq").cast("long").alias("seq"),
                      F.col("label").cast("byte").alias("label"))


def sequences(events: DataFrame, *extra: str) -> DataFrame:
    """Per user, every event in (ts, seq) order (``seq`` is unique, so the order is total).

    Args:
        events: read_events rows, possibly with the ``extra`` columns.
        extra: further per-event columns kept as lists (``slice`` under slices).

    Returns:
        DataFrame[user int, items array<int>, ts array<long>, label array<byte>, *extra],
        sorted by user within each partition.
    """
    ev = F.struct("ts", "seq", "item", "label", *extra)
    lists = [_field("ev", c).alias(name)
             for c, name in (("item", "items"), ("ts", "ts"), ("label", "label"),
                             *((c, c) for c in extra))]
    return (events.groupBy("user").agg(F.array_sort(F.collect_list(ev)).alias("ev"))
            .select("user", *lists).sortWithinPartitions("user"))


def _field(column: str, field: str):
    """The list of one struct field of an array-of-structs column."""
    return F.transform(column, lambda e: e[field])


def eval_users(users: DataFrame, seed: int, max_users: int | None) -> DataFrame | None:
    """The seeded cap on evaluation users: the ``max_users`` users with the smallest
    ``xxhash64(seed, user)`` among ``users`` (one column ``user``), or None without a cap."""
    if max_users is None:
        return None
    return (users.select("user").distinct()
            .orderBy(F.xxhash64(F.lit(seed), "user"), "user").limit(max_users))


def partitions(configured: int, rows: int) -> int:
    """Shuffle partitions: ``spark.shuffle_partitions``, or more on big inputs, so one
    partition (which a numpy pass holds whole) stays near ROWS_PER_PARTITION interactions."""
    return max(configured, math.ceil(rows / ROWS_PER_PARTITION))


def rows(uri: str) -> int:
    """Rows of a Parquet folder, from the file footers."""
    fs, path = filesystem(uri)
    return sum(f.metadata.num_rows for f in pads.dataset(path, filesystem=fs,
                                                         format="parquet").get_fragments())


def max_idx(uri: str) -> int:
    """Largest ``idx`` of an id map (ids are 1..max; 0 is padding)."""
    fs, path = filesystem(uri)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["idx"])
    return int(np.max(table.column("idx").to_numpy())) if table.num_rows else 0
