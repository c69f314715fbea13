"""``index.train_targets: paper`` against ``every_slice``, side by side (issue 15).

The paper trains on one target slice (T-3 here, 0-based), so a small log gives few training
rows and models memorise them. ``every_slice`` adds a training row for every target slice
1..T-3, each with its own history. This script runs both on two generated logs, through the
real stages (generate, Spark ingest and index, Ray Train, evaluation, the comparison's
MLflow parent run):

  * ``sample``: the sample preset's Taobao format (page views only, no negative feedback);
  * ``ratings``: the same generator in the ``ratings`` CSV format (CCMR's), ratings 4-5
    positive and 1-3 real negatives, whose ratings follow a user-item affinity.

Per (log, setting) it prints the training rows and, per model, valid / test MRR, test AUC,
the popularity reference, the best epoch and the memorisation check of evaluation
(``fit_train_auc``: AUC on its own training lists; ``fit_gap_auc``: train minus valid AUC).
The generator is the sample's, untuned for any model.

Run: .venv/bin/python benchmarks/train_targets.py [--rows 200000] [--users 4000]
     [--items 3000] [--models score,gru4rec,sasrec,caser] [--work data/bench/train_targets]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.loading import load_config  # noqa: E402

LOGS = {
    "sample": [],
    "ratings": ["dataset.format=ratings", "dataset.files=[ratings.csv]",
                "dataset.behaviors=[rating]", "dataset.positive_min_rating=4",
                "dataset.negative_max_rating=3", "dataset.rating_scale=[1,5]"],
}
SETTINGS = ("paper", "every_slice")
COLUMNS = ("log", "train_targets", "train rows", "model", "valid mrr", "test mrr", "test auc",
           "popularity test mrr", "best epoch", "fit train auc", "fit gap auc", "minutes")


def config(work: Path, log: str, setting: str, args: argparse.Namespace):
    """The sample preset on ``log``'s format; raw data shared per log, stages per setting."""
    return load_config("sample", "score", "local", [
        f"paths.raw_dir={work}/{log}/raw", f"paths.work_dir={work}/{log}/{setting}",
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mla",
        f"dataset.name=bench-{log}", f"generate.rows={args.rows}",
        f"generate.users={args.users}", f"generate.items={args.items}",
        f"index.train_targets={setting}", "train.full_rank_users=0",
        *LOGS[log]])


def run(work: Path, log: str, setting: str, models: list[str], args) -> list[dict]:
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.sample_data import generate, why_generate
    from trainers.compare import run_comparison

    cfg = config(work, log, setting, args)
    if why_generate(cfg) is not None:
        generate(cfg)
    run_ingest(cfg)
    manifest = run_index(cfg)["manifest"]
    train_rows = manifest["counts"]["samples_train"]
    start = time.perf_counter()
    result = run_comparison(cfg, models)
    minutes = (time.perf_counter() - start) / 60 / len(result["rows"])
    return [{"log": log, "train_targets": setting, "train rows": train_rows,
             "model": row["model"], "valid mrr": row["valid_mrr"], "test mrr": row["test_mrr"],
             "test auc": row["test_auc"], "popularity test mrr": row["popularity_test_mrr"],
             "best epoch": row["best_epoch"], "fit train auc": row["fit_train_auc"],
             "fit gap auc": row["fit_gap_auc"], "minutes": minutes}
            for row in result["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--models", default="score,gru4rec,sasrec,caser")
    parser.add_argument("--logs", default="sample,ratings")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "train_targets")
    args = parser.parse_args()
    work = args.work.resolve()
    rows = []
    for log in args.logs.split(","):
        for setting in SETTINGS:
            rows += run(work, log, setting, args.models.split(","), args)
            print(json.dumps(rows[-1]), flush=True)
    print("\n| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                                for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
