"""Feedback protocol (DFAR Section 4.1): (item, label) sequences, one row per interaction.

Labels come from ingest (the dataset's rating rule). A user's events in (ts, seq) order;
every event after the user's first is a row: ``cut`` = its position p (history = events
[0, p) with their labels, same-day earlier events included: their feedback was observed),
candidates = [items[p]] + K items the user never interacted with, target_label = label[p]
(the sampled items are label 0), K = ``index.eval_negatives`` for valid/test and
``index.train_negatives`` for train (the presets set 9 for both).

Split (``index.feedback_split``):

- ``user_days`` (paper, default): each user's last active day (local day in
  ``dataset.timezone``) is test, the active day before it valid, earlier days train; a user
  active on one day only has test rows;
- ``global_noon`` (the paper's Micro-video): the dataset's last local day before 12:00 is
  valid, from 12:00 test, earlier days train;
- ``leave_one_out`` (the released code): each user's last event is test, the one before it
  valid, the rest train.

Negatives: ``index.negative_sampling: popularity`` (the released code's popularity sampling)
draws every split's candidates proportional to 1 + the item's positive events in the users'
train parts, ``uniform`` uniformly over 1..num_items; both reject every item of the user's
sequence and repeats. A user's train part is as the trainers bound it
(``store.index.train_popularity``, whose 1 + counts the trainers' per-epoch and history
negatives are drawn by): the events before the user's earliest valid or test row, all of
them for a user without one; so neither a valid/test target nor any negative feedback
weighs on the draws (the released code's count over the whole log, test period included,
did: issue 23). Draws are keyed by (seed, split, user,
p), so valid/test groups are fixed and the same in every run. ``index.max_eval_users`` keeps
the valid/test rows of that many seeded users. Users with one event have no row (counted as
``counts.users_single_event``).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.schema import PipelineConfig
from spark_jobs import negatives as neg
from spark_jobs.index_inputs import Inputs, eval_users, rows, sequences
from store.files import join
from store.manifest import StageTimer

SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


def build(cfg: PipelineConfig, events: DataFrame, tmp: str, inputs: Inputs) -> dict:
    """Write ``sequences`` and ``samples/{train,valid,test}`` into ``tmp``.

    Returns:
        Manifest facts: counts (sequences, users_single_event, samples and target labels
        per split), feedback_split, noon (global_noon's boundaries), timings.

    Raises:
        ValueError: the universe is too small for the configured negatives.
    """
    idx, zone = cfg.index, cfg.dataset.timezone
    timer = StageTimer()
    spark = events.sparkSession
    with timer.step("sequences"):
        sequences(events).write.parquet(join(tmp, "sequences"))
    seqs = spark.read.parquet(join(tmp, "sequences")).where(F.size("items") >= 2)
    counts = {"sequences": rows(join(tmp, "sequences"))}
    counts["users_single_event"] = counts["sequences"] - seqs.count()

    facts: dict = {"feedback_split": idx.feedback_split}
    noon = None
    with timer.step("samples"):
        if idx.feedback_split == "global_noon":
            noon = last_day_bounds(int(events.agg(F.max("ts")).first()[0]), zone)
            facts["last_day_utc"] = {"midnight": noon[0], "noon": noon[1]}
        weights = None
        capped = eval_users(seqs, idx.seed, idx.max_eval_users)
        if idx.negative_sampling == "popularity":
            weights = train_popularity(spark.read.parquet(join(tmp, "sequences")), capped,
                                       cfg, noon, inputs.num_items)
        for split in neg.SPLITS:
            src = seqs
            if split != "train" and capped is not None:
                src = src.join(F.broadcast(capped), "user", "left_semi")
            out = join(tmp, "samples", split)
            (_samples(src, split, cfg, inputs.num_items, noon, weights)
             .sortWithinPartitions("user", "cut").write.parquet(out))
            written = spark.read.parquet(out)
            counts[f"samples_{split}"] = rows(out)
            counts[f"positive_targets_{split}"] = written.where("target_label = 1").count()
    return {**facts, "counts": counts, "timings": timer.timings}


def last_day_bounds(max_ts: int, zone: str) -> tuple[int, int]:
    """UTC seconds of the local midnight and noon of the day holding ``max_ts``."""
    tz = ZoneInfo(zone)
    day = dt.datetime.fromtimestamp(max_ts, tz).date()
    return tuple(int(dt.datetime.combine(day, dt.time(h), tzinfo=tz).timestamp()) for h in (0, 12))


def train_popularity(seqs: DataFrame, capped: DataFrame | None, cfg: PipelineConfig,
                     noon: tuple[int, int] | None, num_items: int) -> np.ndarray:
    """The popularity weights every split's negatives are drawn by.

    Args:
        seqs: every user's sequence (``sequences``, single-event users included).
        capped: the users given valid/test rows (``index.max_eval_users``), None for all.
        cfg, noon: the split's settings (see :func:`assign_splits`).
        num_items: I.

    Returns:
        (num_items+1,) float64: 1 + positive events per item in the users' train parts
        (:func:`train_part`), the trainers' ``1 + store.index.train_popularity`` (index 0
        unused).
    """
    mode, zone = cfg.index.feedback_split, cfg.dataset.timezone
    evaluated = F.lit(True)
    if capped is not None:
        seqs = seqs.join(F.broadcast(capped.withColumn("capped", F.lit(True))), "user", "left")
        evaluated = F.coalesce(F.col("capped"), F.lit(False))

    def run(batches):
        for batch in batches:
            if batch.num_rows:
                offsets, items, ts, label = _events(batch)
                keep = train_part(offsets, assign_splits(offsets, ts, mode, zone, noon),
                                  batch.column("evaluated").to_numpy(zero_copy_only=False))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(items[keep & (label == 1)], pa.int32())], ["item"])

    positives = (seqs.select("items", "ts", "label", evaluated.alias("evaluated"))
                 .mapInArrow(run, "item int"))
    weights = np.ones(num_items + 1, dtype=np.float64)
    table = positives.groupBy("item").count().toArrow()
    weights[table.column("item").to_numpy()] += table.column("count").to_numpy()
    return weights


def train_part(offsets: np.ndarray, codes: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
    """Which events are in their user's train part, as the trainers bound it
    (``store.index.train_popularity``): before the user's earliest valid or test row.

    A row is an event at position >= 1 (the first event has no history), so a user whose
    first event falls in the valid or test period keeps it in the train part; a user with no
    valid or test row (one event, or left out by ``index.max_eval_users``) keeps every event.

    Args:
        offsets: (g+1,) int64 offsets of each user's events; codes: (e,) SPLIT_CODE of each
            event (:func:`assign_splits`); evaluated: (g,) bool, the user has valid/test rows.

    Returns:
        (e,) bool.
    """
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(codes)) - offsets[:-1][owner]
    eval_row = (pos >= 1) & (codes != SPLIT_CODE["train"]) & evaluated[owner]
    end = lengths.copy()  # exclusive end of each user's train part
    np.minimum.at(end, owner[eval_row], pos[eval_row])
    return pos < end[owner]


def _events(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch of sequences flattened: (g+1,) int64 offsets, (e,) int64 items, (e,) int64
    ts, (e,) int8 labels."""
    items_col = batch.column("items")
    offsets = items_col.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]  # flatten() starts at the batch's first list
    items = items_col.flatten().to_numpy().astype(np.int64)
    ts = batch.column("ts").flatten().to_numpy().astype(np.int64)
    label = batch.column("label").flatten().to_numpy().astype(np.int8)
    return offsets, items, ts, label


def _samples(seqs: DataFrame, split: str, cfg: PipelineConfig, num_items: int,
             noon: tuple[int, int] | None, weights: np.ndarray | None) -> DataFrame:
    idx = cfg.index
    n_neg = idx.train_negatives if split == "train" else idx.eval_negatives
    spark = seqs.sparkSession
    shared = spark.sparkContext.broadcast(weights) if weights is not None else None
    salt, mode, zone = neg.split_salt(split), idx.feedback_split, cfg.dataset.timezone

    def run(batches):
        sampler = neg.NegativeSampler(num_items, n_neg, idx.seed, salt,
                                      None if shared is None else shared.value)
        for batch in batches:
            if batch.num_rows:
                yield split_batch(batch, split, sampler, mode, zone, noon)

    return seqs.select("user", "items", "ts", "label").mapInArrow(run, neg.SAMPLE_SCHEMA)


def assign_splits(offsets: np.ndarray, ts: np.ndarray, mode: str, zone: str,
                  noon: tuple[int, int] | None) -> np.ndarray:
    """The split code (SPLIT_CODE) of every event of a batch of users.

    Args:
        offsets: (g+1,) int64 offsets of each user's events (time order).
        ts: (e,) int64 UTC seconds.
        mode: index.feedback_split.
        zone: dataset.timezone (user_days' local days).
        noon: global_noon's (midnight, noon) of the last day, UTC seconds.

    Returns:
        (e,) int8 split codes.
    """
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(ts)) - offsets[:-1][owner]  # position within the user's sequence
    last = lengths[owner] - 1
    if mode == "leave_one_out":
        return np.select([pos == last, pos == last - 1], [2, 1], 0).astype(np.int8)
    if mode == "global_noon":
        return np.select([ts >= noon[1], ts >= noon[0]], [2, 1], 0).astype(np.int8)
    local = pc.local_timestamp(pa.array(ts, pa.int64()).cast(pa.timestamp("s", tz=zone)))
    day = pc.cast(local, pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
    # Rank of each event's day among its user's distinct days, counted from the last (0).
    # Days are non-decreasing within a user, so a new day starts where the day changes.
    new_day = np.ones(len(ts), dtype=bool)
    new_day[1:] = (day[1:] != day[:-1]) | (owner[1:] != owner[:-1])
    day_number = np.cumsum(new_day) - 1  # global running index of distinct (user, day)
    last_day_number = day_number[offsets[1:] - 1][owner] if len(ts) else day_number
    from_last = last_day_number - day_number
    return np.select([from_last == 0, from_last == 1], [2, 1], 0).astype(np.int8)


def split_batch(batch: pa.RecordBatch, split: str, sampler: neg.NegativeSampler, mode: str,
                zone: str, noon: tuple[int, int] | None) -> pa.RecordBatch:
    """One split's rows for a batch of users with at least two events.

    Args:
        batch: user int32, items list<int32>, ts list<int64>, label list<int8> (time order).
        split: train, valid or test.
        sampler: the split's sampler.
        mode, zone, noon: see ``assign_splits``.

    Returns:
        RecordBatch of negatives.SAMPLE_SCHEMA, one row per event at position >= 1 of the
        split: cut = position, candidates [item, negatives...], target_label = its label.
    """
    users = batch.column("user").to_numpy().astype(np.int64)
    offsets, items, ts, label = _events(batch)
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(users)), lengths)
    pos = np.arange(len(items)) - offsets[:-1][owner]
    codes = assign_splits(offsets, ts, mode, zone, noon)
    chosen = np.flatnonzero((pos >= 1) & (codes == SPLIT_CODE[split]))  # (n,) event index
    negs = neg.unseen_negatives(sampler, users, offsets, items, owner[chosen], pos[chosen],
                                f"({split})")
    cand = np.concatenate([items[chosen, None], negs], axis=1)  # (n, 1 + K)
    return neg.sample_table(users[owner[chosen]], pos[chosen], cand,
                            np.zeros(len(chosen), np.int16), label[chosen])
