"""Leave-one-out protocol (FMLP-Rec / S3-Rec / DualRec): the last items of each user.

A user's n events in (ts, seq) order (ties in time broken by the raw line order, as S3-Rec
does, so the targets never change between runs) give three rows, ``cut`` = the target's
position, history = events [0, cut):

- train: cut n-3, target items[n-3], with ``index.train_negatives`` sampled negatives (the
  models learn every earlier position through their own history loss);
- valid: cut n-2, target items[n-2]; test: cut n-1, target items[n-1]; both with the SAME
  ``index.eval_negatives`` (99) negatives of the user: the rows of ``ingest/fixed_negatives``
  (the S3-Rec ``<Name>_sample.txt``) where the user has one, else uniform draws over items
  the user never touched, seeded (spark_jobs/negatives.py ``unseen_negatives``).

Every event is an interaction, whatever its label: S3-Rec keeps every star rating, and
these presets have no feedback labels (../shared/PROTOCOLS.md §5); logs whose labels matter
use the feedback protocol. Users with fewer than 3 events get no rows (counted as
``counts.users_too_short``; they stay in ``sequences``); the presets' 5-core filter leaves
none. ``index.max_eval_users`` keeps the valid/test rows of that many seeded users.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.schema import PipelineConfig
from spark_jobs import negatives as neg
from spark_jobs.index_inputs import Inputs, eval_users, rows, sequences
from store.files import exists, join
from store.manifest import StageTimer

MIN_EVENTS = 3  # train, valid and test each need their own target
OFFSETS = {"train": 3, "valid": 2, "test": 1}  # split -> cut = n - this


def build(cfg: PipelineConfig, events: DataFrame, tmp: str, inputs: Inputs) -> dict:
    """Write ``sequences`` and ``samples/{train,valid,test}`` into ``tmp``.

    Returns:
        Manifest facts: counts (sequences, users_too_short, eval_negatives_fixed /
        eval_negatives_sampled users, samples per split), targets, timings.

    Raises:
        ValueError: ``ingest/fixed_negatives`` does not fit (list length other than
            ``index.eval_negatives``, an id out of range or in the user's sequence), or the
            universe is too small for the configured negatives.
    """
    idx = cfg.index
    timer = StageTimer()
    spark = events.sparkSession
    with timer.step("sequences"):
        sequences(events).write.parquet(join(tmp, "sequences"))
    seqs = spark.read.parquet(join(tmp, "sequences"))
    counts = {"sequences": rows(join(tmp, "sequences"))}

    with timer.step("samples"):
        fixed_uri = join(inputs.ingest, "fixed_negatives")
        if exists(fixed_uri):
            fixed = spark.read.parquet(fixed_uri).select(
                F.col("user").cast("int"), F.col("negatives").cast("array<int>").alias("fixed"))
            seqs = seqs.join(fixed, "user", "left")
        else:
            seqs = seqs.withColumn("fixed", F.lit(None).cast("array<int>"))
        eligible = seqs.where(F.size("items") >= MIN_EVENTS).select("user", "items", "fixed")
        n_eligible = eligible.count()
        with_fixed = eligible.where(F.col("fixed").isNotNull()).count()
        counts.update(users_too_short=counts["sequences"] - n_eligible,
                      eval_negatives_fixed=with_fixed,
                      eval_negatives_sampled=n_eligible - with_fixed)
        capped = eval_users(eligible, idx.seed, idx.max_eval_users)
        for split in neg.SPLITS:
            src = eligible
            if split != "train" and capped is not None:
                src = src.join(F.broadcast(capped), "user", "left_semi")
            _samples(src, split, cfg, inputs.num_items).sortWithinPartitions("user").write.parquet(
                join(tmp, "samples", split))
            counts[f"samples_{split}"] = rows(join(tmp, "samples", split))
    return {"counts": counts, "timings": timer.timings,
            "targets": {s: f"cut = n - {k}" for s, k in OFFSETS.items()},
            "min_events": MIN_EVENTS,
            "eval_negatives_from": "ingest/fixed_negatives where given, else seeded uniform "
                                   "over never-touched items; shared by valid and test"}


def _samples(seqs: DataFrame, split: str, cfg: PipelineConfig, num_items: int) -> DataFrame:
    idx = cfg.index
    n_neg = idx.train_negatives if split == "train" else idx.eval_negatives
    # valid and test draw from one stream (the valid salt), so their negatives are the same
    salt = neg.split_salt("train" if split == "train" else "valid")

    def run(batches):
        sampler = neg.NegativeSampler(num_items, n_neg, idx.seed, salt, None)
        for batch in batches:
            if batch.num_rows:
                yield split_batch(batch, split, sampler)

    return seqs.mapInArrow(run, neg.SAMPLE_SCHEMA)


def split_batch(batch: pa.RecordBatch, split: str, sampler: neg.NegativeSampler) -> pa.RecordBatch:
    """One split's rows for a batch of users with at least MIN_EVENTS events.

    Args:
        batch: user int32, items list<int32> (time order), fixed list<int32> or null.
        split: train, valid or test.
        sampler: the split's sampler (valid and test share one stream).

    Returns:
        RecordBatch of negatives.SAMPLE_SCHEMA, one row per user: cut = n - OFFSETS[split],
        candidates [items[cut], negatives...], real_negatives 0, target_label 1.

    Raises:
        ValueError: a fixed list that does not fit (see ``build``).
    """
    users = batch.column("user").to_numpy().astype(np.int64)
    items_col = batch.column("items")
    offsets = items_col.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]  # flatten() starts at the batch's first list
    items = items_col.flatten().to_numpy().astype(np.int64)
    n_users = len(users)
    cut = np.diff(offsets) - OFFSETS[split]  # (g,) target position per user
    target = items[offsets[:-1] + cut]
    rows_ = np.arange(n_users)
    negs = neg.unseen_negatives(sampler, users, offsets, items, rows_,
                                cut if split == "train" else np.zeros(n_users, np.int64),
                                f"({split})")
    if split != "train":
        negs = _with_fixed(batch.column("fixed"), negs, users, offsets, items, sampler.num_items)
    cand = np.concatenate([target[:, None], negs], axis=1)  # (g, 1 + N)
    return neg.sample_table(users, cut, cand, np.zeros(n_users, np.int16),
                            np.ones(n_users, np.int8))


def _with_fixed(fixed: pa.Array, sampled: np.ndarray, users: np.ndarray, offsets: np.ndarray,
                items: np.ndarray, num_items: int) -> np.ndarray:
    """Replace the sampled negatives of users with a fixed list by that list, checked."""
    has = np.asarray(fixed.is_valid())
    if not has.any():
        return sampled
    out = sampled.copy()
    n_neg = sampled.shape[1]
    starts = fixed.offsets.to_numpy().astype(np.int64)  # absolute into .values
    lengths = np.diff(starts)
    values = fixed.values.to_numpy(zero_copy_only=False).astype(np.int64)
    bad = has & (lengths != n_neg)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"ingest/fixed_negatives holds {lengths[i]} negatives for user "
                         f"{users[i]} but index.eval_negatives={n_neg}: set them equal")
    for i in np.flatnonzero(has):
        row = values[starts[i]: starts[i] + n_neg]
        seen = items[offsets[i]: offsets[i + 1]]
        if row.min() < 1 or row.max() > num_items or np.isin(row, seen).any():
            raise ValueError(f"ingest/fixed_negatives of user {users[i]} holds an id out of "
                             f"1..{num_items} or in the user's sequence: rerun `seqrec ingest` "
                             f"(it validates the sample file)")
        out[i] = row
    return out
