"""Index stage: canonical interactions -> the evaluation protocol's sequences and samples.

Reads ``<work_dir>/ingest`` and writes ``<work_dir>/index`` through the builder of
``index.protocol`` (docs/architecture.md, "Evaluation protocols", has the contracts):

- ``slices`` (SCoRe): spark_jobs/index_slices.py, time-sliced graph indices and samples;
- ``leave_one_out`` (FMLP-Rec / S3-Rec / DualRec): spark_jobs/index_leave_one_out.py;
- ``feedback`` (DFAR): spark_jobs/index_feedback.py.

Every builder writes ``sequences`` and ``samples/{train,valid,test}`` (user, cut,
candidates, real_negatives, target_label). This module writes the common manifest: stage,
schema_version, input_hash (the ingest manifest's hash), config_hash (``dataset`` +
``index`` sections), protocol, num_users, num_items (largest idx in the id maps), counts
(interactions + the builder's), negative_sampling, negatives, max_eval_users, seed,
timings, built_at, and the builder's own facts.

Outputs are a function of (ingest output, config): every random choice is a hash of ids and
``index.seed``, so a run killed midway (its staged folder is never published) and rerun
writes the same rows as an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt

from conf.loading import section_hash
from conf.schema import PipelineConfig
from spark_jobs import index_feedback, index_leave_one_out, index_slices
from spark_jobs.index_inputs import Inputs, max_idx, partitions, read_events, rows
from store.files import join, staged_output, write_json
from store.logs import log_file
from store.manifest import (MANIFEST, SCHEMA_VERSION, StageResult, manifest_hash, read_manifest,
                            up_to_date)

STAGE = "index"
BUILDERS = {"slices": index_slices.build, "leave_one_out": index_leave_one_out.build,
            "feedback": index_feedback.build}


def run_index(cfg: PipelineConfig) -> StageResult:
    """Build ``<work_dir>/index`` from ``<work_dir>/ingest``, or skip when nothing changed.

    Args:
        cfg: the composed config; reads ``paths``, ``dataset``, ``index`` and ``spark``.

    Returns:
        StageResult with the output uri, its manifest, ``skipped`` and ``reason``.

    Raises:
        FileNotFoundError: the ingest stage has not been published.
        ValueError: an interactions column is missing (rerun ingest) or the candidate
            universe is too small for the configured number of negatives.
    """
    src = join(cfg.paths.work_dir, "ingest")
    out = join(cfg.paths.work_dir, STAGE)
    input_hash = manifest_hash(src)
    config_hash = section_hash(cfg, "dataset", "index")
    if up_to_date(out, input_hash, config_hash):
        return StageResult.of(out, read_manifest(out), True, "ingest output and config unchanged")
    reason = "no previous output" if read_manifest(out) is None else "ingest output or config changed"

    from spark_jobs.progress import progress
    from spark_jobs.session import spark_session

    spark = spark_session(cfg.spark, log_file(cfg.paths.work_dir, "spark"))
    with staged_output(out) as tmp, progress(spark, STAGE):
        facts = _build(spark, cfg, src, tmp)
        manifest = {"stage": STAGE, "schema_version": SCHEMA_VERSION,
                    "input_hash": input_hash, "config_hash": config_hash, **facts}
        write_json(join(tmp, MANIFEST), manifest)
    return StageResult.of(out, manifest, False, reason)


def _build(spark, cfg: PipelineConfig, src: str, tmp: str) -> dict:
    """Run the protocol's builder into ``tmp`` under the stage's Spark settings; return the
    manifest facts."""
    idx = cfg.index
    n_rows = rows(join(src, "interactions"))
    inputs = Inputs(ingest=src, interactions=n_rows,
                    num_users=max_idx(join(src, "id_maps", "users")),
                    num_items=max_idx(join(src, "id_maps", "items")),
                    partitions=partitions(cfg.spark.shuffle_partitions, n_rows))
    settings = {
        # Keep the hash partitioning of cached tables visible to later joins and aggregations
        # (with AQE on, Spark otherwise forgets it and shuffles the cached positives again).
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "false",
        "spark.sql.shuffle.partitions": str(inputs.partitions),  # every shuffle scales with data
    }
    previous = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        facts = BUILDERS[idx.protocol](cfg, read_events(spark, src), tmp, inputs)
    finally:
        for key, value in previous.items():
            spark.conf.set(key, value)
    return {
        **facts,
        "protocol": idx.protocol,
        "num_users": inputs.num_users, "num_items": inputs.num_items,
        "counts": {"interactions": n_rows, **facts["counts"]},
        "negative_sampling": idx.negative_sampling,
        "negatives": {"train": idx.train_negatives, "eval": idx.eval_negatives},
        "max_eval_users": idx.max_eval_users,
        "seed": idx.seed,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
