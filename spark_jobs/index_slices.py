"""Slices protocol (SCoRe): time-sliced graph indices, sequences and samples.

Writes into the index stage's folder (docs/architecture.md has the column contracts):

- ``user_sets``, ``item_sets``: per non-empty (entity, slice) the interaction set and the
  co-interaction set (SCoRe Eq. 2-5), each resampled to S (spark_jobs/neighbor_sets.py says
  how, and what distribution the samples have);
- ``item_popularity``: positive interactions per (item, slice);
- ``sequences``: every user's in-window events in (ts, seq) order (items, ts, label, slice);
- ``samples/{train,valid,test}``: candidate lists for target slices T-3, T-2, T-1
  (spark_jobs/negatives.py), ``cut`` = the target slice; ``index.lists_per_user`` picks one
  valid/test list per (user, slice) or per positive, ``index.train_lists_per_user`` the
  same for training rows (every positive by default); ``index.train_targets: every_slice`` takes
  training targets from every slice 1..T-3 instead of T-3 alone (beyond the paper: small
  logs give far more training rows; the trainers build each row's H-slice history from its
  cut);
- manifest facts: set_size S, num_slices T, slice_days ΔT, target_slices, train_slices,
  empty_share (share of (entity, slice) pairs without a set), capped (1-hop lists longer than
  neighbor_cap, lists subsampled to S or filled up to S, lists longer than S+1 whose sketches
  were cut), timings (slices, user_sets, item_sets, popularity, samples, sequences).

Layout, chosen for training speed: the trainer never scans these tables by key; it loads
each table once into dense arrays (store/index.py) by vectorised fancy indexing, for
which row order is irrelevant. So the tables stay in Spark's hash partitioning by
(entity, slice) (no global sort, which would cost one more shuffle of the largest tables) in
at most P files each (P = ``spark.shuffle_partitions``, raised to one per
ROWS_PER_PARTITION interactions on big inputs), sets as fixed-length lists of S so the loader
reshapes flattened lists without looking at offsets. Rows are sorted by (entity, slice)
within each file (numpy emits the groups in that order), which keeps ids close together and
the files small.

Pipeline and shuffles: the slices step scans the interactions once: positives are
deduplicated into (user, item, slice, events) while partitioned by (user, slice) and
cached, and an Observation counts rows and real negatives in the same scan (popularity sums
the cached counts; without real negatives the samples need no scan for them). Each sets
table is two numpy passes with one shuffle between them (spark_jobs/neighbor_sets.py
``side_sets``): item_sets runs its first pass on the cached copy, user_sets on one more
shuffle of it by (item, slice). Neither needs a join: a triple carries its neighbour's
sketch, and interaction set, degree and co-set come out of the same group. The 1-hop
statistics (``capped``) are observed while the tables are written. The other shuffles are
popularity, sequences and samples.
"""

from __future__ import annotations

import math
from functools import reduce

import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from conf.schema import PipelineConfig
from spark_jobs import negatives as neg
from spark_jobs import neighbor_sets as ns
from spark_jobs.index_inputs import Inputs, rows, sequences
from store.files import filesystem, join
from store.manifest import StageTimer
from store.index import dense_popularity, slice_negative_weights


def with_slices(events: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """Add the 0-based slice of each event and keep events inside the window.

    ``slice = floor((local_date - dataset.start) / slice_days)``, local_date the calendar day
    of ``ts`` in ``dataset.timezone``; computed as the number of slice starts (local
    midnights as UTC seconds, ``DatasetConfig.slice_bounds``) at or before ``ts``, so each
    row costs a few integer comparisons instead of a time-zone conversion.

    Args:
        events: index_inputs.read_events rows.

    Returns:
        DataFrame[user int, item int, ts long, seq long, label byte, slice short].
    """
    bounds = cfg.dataset.slice_bounds()
    ts = F.col("ts")
    slc = F.when(ts < F.lit(bounds[1]), F.lit(0))
    for t, upper in enumerate(bounds[2:], start=1):
        slc = slc.when(ts < F.lit(upper), F.lit(t))
    return (events.where((ts >= F.lit(bounds[0])) & (ts < F.lit(bounds[-1])))
            .withColumn("slice", slc.cast("short")))


def build(cfg: PipelineConfig, events: DataFrame, tmp: str, inputs: Inputs) -> dict:
    """Write the slices protocol's tables into ``tmp``; return its manifest facts.

    Args:
        cfg: the composed config (``dataset`` and ``index``).
        events: index_inputs.read_events rows.
        tmp: the staged index folder.
        inputs: id-map sizes and P.

    Returns:
        Manifest facts: counts, timings and the slices facts listed in the module docstring.

    Raises:
        ValueError: the dataset has no slices, or the candidate universe is too small for
            the configured negatives.
    """
    idx, d = cfg.index, cfg.dataset
    if not d.sliced:
        raise ValueError(f"index.protocol=slices needs dataset.slice_days and num_slices; "
                         f"dataset {d.name!r} is unsliced: set index.protocol to "
                         f"leave_one_out or feedback, or give it slices")
    S, T, P = idx.set_size, d.num_slices, inputs.partitions
    num_users, num_items = inputs.num_users, inputs.num_items
    salts = ns.Salts.of(idx.seed)
    timer = StageTimer()
    cached: list[DataFrame] = []
    train_slices = list(range(1, T - 2)) if idx.train_targets == "every_slice" else [T - 3]

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.cache())
        return df

    try:
        with timer.step("slices"):
            events = with_slices(events, cfg)
            seen = Observation()
            # Distinct positive triples with their event counts (popularity sums them), kept
            # partitioned by (user, slice); the labels are counted in the same scan.
            pos_counts = keep(
                events.observe(seen, F.count(F.lit(1)).alias("rows"),
                               F.count_if(F.col("label") == 0).alias("negatives"))
                .where("label = 1").repartition(P, "user", "slice")
                .groupBy("user", "item", "slice").agg(F.count("*").cast("int").alias("events")))
            n_pos = pos_counts.count()
            in_window, n_negative = seen.get["rows"], seen.get["negatives"]
            pos_us = pos_counts.select("user", "item", "slice")

        user_side, item_side = ns.sides(salts)
        counts, hop_stats = {}, {}
        for name, side, pos in (("user_sets", user_side, pos_us.repartition(P, "item", "slice")),
                                ("item_sets", item_side, pos_us)):
            with timer.step(name):
                stats = Observation()
                (ns.side_sets(pos, side, salts, S, idx.neighbor_cap, P)
                 .observe(stats, *_hop_stats(S, idx.neighbor_cap)).drop("degree")
                 .write.parquet(join(tmp, name)))
                counts[name] = rows(join(tmp, name))
                hop_stats[name] = {k: int(v or 0) for k, v in stats.get.items()}
                hop_stats[name]["empty_co_sets"] = _empty_co_sets(join(tmp, name))

        with timer.step("popularity"):
            (pos_counts.groupBy("item", "slice").agg(F.sum("events").cast("long").alias("count"))
             .repartition(max(1, P // 4)).sortWithinPartitions("item", "slice")
             .write.parquet(join(tmp, "item_popularity")))
            counts["item_popularity"] = rows(join(tmp, "item_popularity"))
            popularity = dense_popularity(join(tmp, "item_popularity"), num_items, T)

        with timer.step("samples"):
            # Real negatives (label 0) exist only where ratings are split (CCMR); without
            # any, the three splits need no scan for them.
            negatives_df = events.where("label = 0").select("user", "item", "slice")
            if not n_negative:
                negatives_df = events.sparkSession.createDataFrame(
                    [], "user int, item int, slice short")
            for split in neg.SPLITS:
                n_neg = idx.train_negatives if split == "train" else idx.eval_negatives
                targets = train_slices if split == "train" else [neg.target_slice(split, T)]
                parts = []
                for target in targets:
                    weights = slice_negative_weights(popularity, idx.negative_sampling,
                                                     target, idx.active_min_slices)
                    lists = neg.split_lists(pos_us, negatives_df, target, n_neg, idx.seed,
                                            None if split == "train" else idx.max_eval_users)
                    per_user = idx.train_lists_per_user if split == "train" else idx.lists_per_user
                    parts.append(neg.build_samples(lists, num_items, n_neg, idx.seed, split,
                                                   weights, per_user == "one"))
                (reduce(DataFrame.unionByName, parts).sortWithinPartitions("user", "cut")
                 .write.parquet(join(tmp, "samples", split)))
                counts[f"samples_{split}"] = rows(join(tmp, "samples", split))

        with timer.step("sequences"):
            sequences(events, "slice").write.parquet(join(tmp, "sequences"))
            counts["sequences"] = rows(join(tmp, "sequences"))
    finally:
        for df in cached:
            df.unpersist()

    counts.update(in_window=in_window, positive_triples=n_pos)
    return {
        "set_size": S, "num_slices": T, "slice_days": d.slice_days,
        "start": d.start.isoformat(), "end": d.end.isoformat(), "timezone": d.timezone,
        "target_slices": {s: neg.target_slice(s, T) for s in neg.SPLITS},
        "train_slices": train_slices,
        "lists_per_user": idx.lists_per_user,
        "train_lists_per_user": idx.train_lists_per_user, "train_targets": idx.train_targets,
        "counts": counts,
        "empty_share": {
            "user_sets": _share_empty(counts["user_sets"], num_users, T),
            "item_sets": _share_empty(counts["item_sets"], num_items, T),
        },
        "capped": hop_stats,
        "neighbor_cap": idx.neighbor_cap,
        "sampling": "co-sets: exact uniform S-subsets of the Eq. 4/5 sets via bottom-S "
                    "sketches over at most neighbor_cap neighbours (spark_jobs/neighbor_sets.py)",
        "timings": timer.timings,
    }


def _hop_stats(S: int, cap: int) -> list[Column]:
    """Observed while a sets table is written: how many 1-hop lists were capped, cut, filled."""
    degree = F.col("degree")
    return [F.sum((degree > cap).cast("long")).alias("neighbor_lists_capped"),
            F.sum((degree > S).cast("long")).alias("interaction_sets_subsampled"),
            F.sum((degree < S).cast("long")).alias("interaction_sets_filled"),
            F.sum((degree > S + 1).cast("long")).alias("sketches_cut"),
            F.max(degree).alias("max_degree")]


def _empty_co_sets(uri: str) -> int:
    """Stored rows whose co-interaction set is empty (S zeros)."""
    fs, path = filesystem(uri)
    total = 0
    for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(
            columns=["co_interaction"]):
        first = pc.list_element(batch.column(0), 0)
        total += int(pc.sum(pc.equal(first, 0)).as_py() or 0)
    return total


def _share_empty(rows: int, entities: int, T: int) -> float:
    return round(1.0 - rows / (entities * T), 6) if entities else math.nan


