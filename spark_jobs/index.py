"""Index stage: canonical interactions -> time-sliced graph indices, sequences and samples.

Reads ``<work_dir>/ingest`` and writes ``<work_dir>/index`` (docs/architecture.md has the
column contracts):

- ``user_sets``, ``item_sets``: per non-empty (entity, slice) the interaction set and the
  co-interaction set (SCoRe Eq. 2-5), each resampled to S (spark_jobs/neighbor_sets.py says
  how, and what distribution the samples have);
- ``item_popularity``: positive interactions per (item, slice);
- ``sequences``: every user's interactions in time order (ts, item, slice, label);
- ``samples/{train,valid,test}``: candidate lists for target slices T-3, T-2, T-1
  (spark_jobs/negatives.py);
- ``manifest.json``: stage, schema_version, input_hash (the ingest manifest's hash),
  config_hash (``dataset`` + ``index`` sections), set_size S, num_slices T, slice_days ΔT,
  num_users, num_items (largest idx in the id maps), counts per table, empty_share (share of
  (entity, slice) pairs without a set), capped (1-hop lists longer than neighbor_cap, lists
  subsampled to S or filled up to S, lists longer than S+1 whose sketches were cut),
  negative_sampling, seed, timings (slices, user_sets, item_sets, popularity, samples, sequences).

Layout, chosen for training speed: the trainer never scans these tables by key; it loads
each table once into dense arrays (trainers/set_arrays.py) by vectorised fancy indexing, for
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
shuffle of it by (item, slice). Neither needs a join: a triple carries its neighbour's sketch, and interaction set, degree and co-set come out of the
same group. The 1-hop statistics (``capped``) are observed while the tables are written.
The other shuffles are popularity, sequences and samples.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from conf.loading import section_hash
from conf.schema import PipelineConfig
from spark_jobs import negatives as neg
from spark_jobs import neighbor_sets as ns
from spark_jobs.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    StageResult,
    StageTimer,
    filesystem,
    join,
    manifest_hash,
    read_manifest,
    staged_output,
    up_to_date,
    write_json,
)
from trainers.set_arrays import dense_popularity

STAGE = "index"
TABLES = ("user_sets", "item_sets", "item_popularity", "sequences")
ROWS_PER_PARTITION = 2_000_000  # a numpy pass then holds ~1.5M triples with their sketches


def run_index(cfg: PipelineConfig) -> StageResult:
    """Build ``<work_dir>/index`` from ``<work_dir>/ingest``, or skip when nothing changed.

    Args:
        cfg: the composed config; reads ``paths``, ``dataset``, ``index`` and ``spark``.

    Returns:
        StageResult with the output uri, its manifest, ``skipped`` and ``reason``.

    Raises:
        FileNotFoundError: the ingest stage has not been published.
        ValueError: an interactions column is missing or the candidate universe is too small
            for the configured number of negatives.
    """
    src = join(cfg.paths.work_dir, "ingest")
    out = join(cfg.paths.work_dir, STAGE)
    input_hash = manifest_hash(src)
    config_hash = section_hash(cfg, "dataset", "index")
    if up_to_date(out, input_hash, config_hash):
        return StageResult.of(out, read_manifest(out), True, "ingest output and config unchanged")
    reason = "no previous output" if read_manifest(out) is None else "ingest output or config changed"

    from spark_jobs.session import spark_session

    spark = spark_session(cfg.spark)
    with staged_output(out) as tmp:
        facts = _build(spark, cfg, src, tmp)
        manifest = {"stage": STAGE, "schema_version": SCHEMA_VERSION,
                    "input_hash": input_hash, "config_hash": config_hash, **facts}
        write_json(join(tmp, MANIFEST), manifest)
    return StageResult.of(out, manifest, False, reason)


def with_slices(interactions: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """Add the 0-based slice of each row and keep rows inside the window.

    ``slice = floor((local_date - dataset.start) / slice_days)``, local_date the calendar day
    of ``ts`` in ``dataset.timezone``; computed as the number of slice starts (local
    midnights as UTC seconds, ``DatasetConfig.slice_bounds``) at or before ``ts``, so each
    row costs a few integer comparisons instead of a time-zone conversion.

    Returns:
        DataFrame[user int, item int, ts long, label byte, slice short].
    """
    bounds = cfg.dataset.slice_bounds()
    ts = F.col("ts").cast("long")
    slc = F.when(ts < F.lit(bounds[1]), F.lit(0))
    for t, upper in enumerate(bounds[2:], start=1):
        slc = slc.when(ts < F.lit(upper), F.lit(t))
    return (interactions
            .where((ts >= F.lit(bounds[0])) & (ts < F.lit(bounds[-1])))
            .select(F.col("user_idx").cast("int").alias("user"),
                    F.col("item_idx").cast("int").alias("item"),
                    ts.alias("ts"), F.col("label").cast("byte").alias("label"),
                    slc.cast("short").alias("slice")))


def partitions(configured: int, rows: int) -> int:
    """Shuffle partitions: ``spark.shuffle_partitions``, or more on big inputs, so one
    partition (which a numpy pass holds whole) stays near ROWS_PER_PARTITION interactions."""
    return max(configured, math.ceil(rows / ROWS_PER_PARTITION))


def _max_idx(uri: str) -> int:
    fs, path = filesystem(uri)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["idx"])
    return int(np.max(table.column("idx").to_numpy())) if table.num_rows else 0


def _check_columns(df: DataFrame, src: str) -> None:
    needed = {"user_idx", "item_idx", "ts", "label"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"{src}/interactions lacks column(s) {sorted(missing)}; "
                         f"has {df.columns}: rerun `seqrec ingest`")


def _build(spark, cfg: PipelineConfig, src: str, tmp: str) -> dict:
    """Run the Spark jobs into ``tmp``; return the manifest facts."""
    idx, d = cfg.index, cfg.dataset
    n_rows = _rows(join(src, "interactions"))
    S, T, P = idx.set_size, d.num_slices, partitions(cfg.spark.shuffle_partitions, n_rows)
    salts = ns.Salts.of(idx.seed)
    timer = StageTimer()
    num_users = _max_idx(join(src, "id_maps", "users"))
    num_items = _max_idx(join(src, "id_maps", "items"))
    cached: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.cache())
        return df

    settings = {
        # Keep the hash partitioning of cached tables visible to later joins and aggregations
        # (with AQE on, Spark otherwise forgets it and shuffles the cached positives again).
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "false",
        "spark.sql.shuffle.partitions": str(P),  # every shuffle of the stage scales with data
    }
    previous = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        raw = spark.read.parquet(join(src, "interactions"))
        _check_columns(raw, src)
        with timer.step("slices"):
            events = with_slices(raw, cfg)
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
                counts[name] = _rows(join(tmp, name))
                hop_stats[name] = {k: int(v or 0) for k, v in stats.get.items()}
                hop_stats[name]["empty_co_sets"] = _empty_co_sets(join(tmp, name))

        with timer.step("popularity"):
            (pos_counts.groupBy("item", "slice").agg(F.sum("events").cast("long").alias("count"))
             .repartition(max(1, P // 4)).sortWithinPartitions("item", "slice")
             .write.parquet(join(tmp, "item_popularity")))
            counts["item_popularity"] = _rows(join(tmp, "item_popularity"))
            popularity = dense_popularity(join(tmp, "item_popularity"), num_items, T)

        with timer.step("samples"):
            # Real negatives (label 0) exist only where ratings are split (CCMR); without
            # any, the three splits need no scan for them.
            negatives_df = (events.where("label = 0").select("user", "item", "slice")
                            if n_negative else
                            spark.createDataFrame([], "user int, item int, slice short"))
            for split in neg.SPLITS:
                target = neg.target_slice(split, T)
                n_neg = idx.train_negatives if split == "train" else idx.eval_negatives
                weights = None
                if idx.negative_sampling == "popularity":
                    weights = 1.0 + popularity[:, : target + 1].sum(axis=1).astype(np.float64)
                lists = neg.split_lists(pos_us, negatives_df, target, n_neg, idx.seed,
                                        None if split == "train" else idx.max_eval_users)
                samples = neg.build_samples(lists, num_items, n_neg, idx.seed, split, weights)
                samples.sortWithinPartitions("user").write.parquet(join(tmp, "samples", split))
                counts[f"samples_{split}"] = _rows(join(tmp, "samples", split))

        with timer.step("sequences"):
            _sequences(events).write.parquet(join(tmp, "sequences"))
            counts["sequences"] = _rows(join(tmp, "sequences"))
    finally:
        for df in cached:
            df.unpersist()
        for key, value in previous.items():
            spark.conf.set(key, value)

    counts.update(interactions=n_rows, in_window=in_window, positive_triples=n_pos)
    return {
        "set_size": S, "num_slices": T, "slice_days": d.slice_days,
        "start": d.start.isoformat(), "end": d.end.isoformat(), "timezone": d.timezone,
        "num_users": num_users, "num_items": num_items,
        "target_slices": {s: neg.target_slice(s, T) for s in neg.SPLITS},
        "counts": counts,
        "empty_share": {
            "user_sets": _share_empty(counts["user_sets"], num_users, T),
            "item_sets": _share_empty(counts["item_sets"], num_items, T),
        },
        "capped": hop_stats,
        "neighbor_cap": idx.neighbor_cap,
        "negative_sampling": idx.negative_sampling,
        "negatives": {"train": idx.train_negatives, "eval": idx.eval_negatives},
        "max_eval_users": idx.max_eval_users,
        "seed": idx.seed,
        "sampling": "co-sets: exact uniform S-subsets of the Eq. 4/5 sets via bottom-S "
                    "sketches over at most neighbor_cap neighbours (spark_jobs/neighbor_sets.py)",
        "timings": timer.timings,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _hop_stats(S: int, cap: int) -> list[Column]:
    """Observed while a sets table is written: how many 1-hop lists were capped, cut, filled."""
    degree = F.col("degree")
    return [F.sum((degree > cap).cast("long")).alias("neighbor_lists_capped"),
            F.sum((degree > S).cast("long")).alias("interaction_sets_subsampled"),
            F.sum((degree < S).cast("long")).alias("interaction_sets_filled"),
            F.sum((degree > S + 1).cast("long")).alias("sketches_cut"),
            F.max(degree).alias("max_degree")]


def _rows(uri: str) -> int:
    fs, path = filesystem(uri)
    return sum(f.metadata.num_rows for f in pads.dataset(path, filesystem=fs,
                                                         format="parquet").get_fragments())


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


def _sequences(events: DataFrame) -> DataFrame:
    """Per user, every interaction in time order (ties broken by item)."""
    ev = F.struct("ts", "item", "slice", "label")
    return (events.groupBy("user").agg(F.array_sort(F.collect_list(ev)).alias("ev"))
            .select("user",
                    F.transform("ev", lambda e: e["item"]).alias("items"),
                    F.transform("ev", lambda e: e["ts"]).alias("ts"),
                    F.transform("ev", lambda e: e["slice"]).alias("slice"),
                    F.transform("ev", lambda e: e["label"]).alias("label"))
            .sortWithinPartitions("user"))
