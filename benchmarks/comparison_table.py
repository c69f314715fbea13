"""A comparison as a benchmark table: stages in this process, every model's test metrics
beside popularity's, training minutes from MLflow (benchmarks/movielens_recbole.py,
benchmarks/generated_margins.py).

``compared_rows`` runs ingest, index and ``trainers.compare.run_comparison`` (Ray Train,
evaluation, MLflow: what ``seqrec compare`` runs) and returns the rows with popularity's
first; ``epoch_cap`` bounds every model's epochs; ``table`` prints them as markdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock


@contextmanager
def epoch_cap(epochs: int | None) -> Iterator[None]:
    """Within the block, every model of ``run_comparison`` trains at most ``epochs`` epochs,
    even one whose preset sets its own (``compare.model_config`` lets a model preset's
    ``train:`` keys win over the comparison's, BERT4Rec's epochs 5300 among them)."""
    from trainers import compare

    if not epochs:
        yield
        return
    original = compare.model_config

    def capped(cfg, name):
        out = original(cfg, name)
        return out.model_copy(update={"train": out.train.model_copy(
            update={"epochs": min(out.train.epochs, epochs)})})

    with mock.patch.object(compare, "model_config", capped):
        yield


FULL_METRICS = ("hr@10", "ndcg@10", "mrr")  # the full-ranking columns (evaluation's full_*)


def mlflow_facts(cfg, run_id: str, protocol) -> dict:
    """A model run's popularity metrics, full-ranking metrics (``full_hr@10`` …, absent
    where the run ranked no user against every item) and training minutes, as MLflow
    recorded them."""
    from trainers import tracking

    run = tracking.client(cfg).get_run(run_id)
    metrics = run.data.metrics
    chosen = protocol.selection_metric
    popularity = {f"test_{m}": metrics.get(tracking.metric_name(f"popularity_test_{m}"))
                  for m in protocol.test_metrics}
    popularity[f"valid_{chosen}"] = metrics.get(tracking.metric_name(f"popularity_valid_{chosen}"))
    full = {f"full_{m}": metrics.get(tracking.metric_name(f"full_{m}")) for m in FULL_METRICS}
    end = run.info.end_time or run.info.start_time
    return {"popularity": popularity, "full": full,
            "train_min": (end - run.info.start_time) / 60_000}


def compared_rows(cfg, models: list[str], epochs: int | None, timings: dict,
                  label: str) -> tuple[list[dict], object, dict]:
    """Ingest, index and compare ``models`` on ``cfg``; timings under ``label``.

    Returns:
        (rows: popularity's first, then each model's, then the feedback random floor;
        the protocol; the ingest manifest)
    """
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.session import driver_released
    from trainers.compare import run_comparison
    from trainers.protocols import protocol_at

    manifests = {}
    with driver_released():  # as the flow: no idle JVM beside hours of training
        for stage, run in (("ingest", run_ingest), ("index", run_index)):
            start = time.perf_counter()
            manifests[stage] = run(cfg)["manifest"]
            timings[f"{label} {stage}"] = time.perf_counter() - start
            print(f"{label} {stage}: {json.dumps(manifests[stage]['counts'])}", flush=True)
    protocol = protocol_at(cfg.paths.work_dir)
    start = time.perf_counter()
    with epoch_cap(epochs):
        result = run_comparison(cfg, models)
    timings[f"{label} compare ({len(result['rows'])} rows)"] = time.perf_counter() - start
    for name, reason in result["skipped"].items():
        print(f"skipped {name}: {reason}", flush=True)
    rows, popularity = [], {}
    for row in result["rows"]:
        if row["model"] == "random":
            rows.append({**row, "model": "random (expected)"})
            continue
        facts = mlflow_facts(cfg, row["run_id"], protocol)
        rows.append({**row, **facts["full"], "train_min": facts["train_min"]})
        popularity = facts["popularity"]  # the same lists for every model
    rows.insert(0, {"model": "popularity", "best_epoch": "", "train_min": "", **popularity})
    return rows, protocol, manifests["ingest"]


def table(rows: list[dict], protocol, extra: tuple[str, ...] = ()) -> str:
    """Markdown: a row per model (popularity, random floor and peers included), with the
    ``extra`` columns after the test metrics."""
    cols = ["model", *(f"test_{m}" for m in protocol.test_metrics), *extra,
            f"valid_{protocol.selection_metric}", "best_epoch", "train_min"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for row in rows:
        cells = [row.get(c, "") for c in cols]
        lines.append("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else
                                       ("" if c is None else str(c)) for c in cells) + " |")
    return "\n".join(lines)
