"""Every baseline of DualRec's and DFAR's tables on the full-size generated logs, beside
popularity and the real logs' shape (issue 23, section 2: "the full-size margins go in a
benchmark"; tests/test_generated_baselines.py checks the same margins on < 500 users).

The data: ``sample-loo`` (Amazon 5-core reviews, shaped as the real Toys 5-core) and
``sample-feedback`` (an Amazon ratings CSV, shaped as DFAR's Toys) as their presets generate
them, never tuned for a model's result. Per dataset, through the real stages in this
process (generate, Spark ingest and index, then ``trainers.compare.run_comparison``: Ray
Train, evaluation, MLflow, as ``seqrec compare``):

- the shape beside the real log's (``dataset.published``): users, items, interactions,
  events a user, sparsity; and popularity's test metric beside the real one (Toys
  leave-one-out HR@10 0.236, DualRec Table 2; the real ratings log's AUC 0.568, issue 23);
- under ``leave_one_out``, what the log's order tells beyond its items as a set
  (benchmarks/order_signal.py's count scorers, no training);
- every model's test metrics, its margin over popularity (``hr@10 / popularity``, the
  tests' floor 1.3x; ``auc - popularity``, floor +0.05), the best epoch and training
  minutes;
- under ``leave_one_out``, RecBole 1.2.1's SASRec with CE and with BPR on the same
  sequences (benchmarks/recbole_rows.py: our index's sequences as an S3-Rec ``<Name>.txt``,
  so RecBole's valid and test items are ours; our SASRec preset's sizes), evaluated by full
  ranking (``--recbole-mode full``, the default: every item, the history excluded) beside
  every model's own full ranking of all its users (the ``full_*`` columns), or by ``uni99``
  (``test_*``: 99 uniform items drawn again at each evaluation where ours are fixed per
  user; ~10 minutes an evaluation here). ``--no-recbole`` leaves them out.

Every model trains with its preset (the table's d, its own ``train:`` keys; BERT4Rec's lr
1e-4, 5,300-epoch cap and patience 200), capped at ``--epochs`` when given (early stopping,
patience 10 for the others, ends runs sooner). On 2 cores the full table takes hours
without a cap.

Run: .venv/bin/python benchmarks/generated_margins.py [--datasets sample-loo,sample-feedback]
     [--epochs N] [--models-sample-loo ...] [--models-sample-feedback ...]
     [--set KEY=VALUE ...] [--work data/bench/generated] [--no-recbole]
     [--recbole-epochs 50] [--recbole-patience 10] [--threads 2 (RecBole's torch threads)]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.comparison_table import FULL_METRICS, compared_rows, table  # noqa: E402
from benchmarks.order_signal import order_scores, order_table  # noqa: E402
from benchmarks.recbole_rows import (LOSSES, missing_venv, recbole_row,  # noqa: E402
                                     sasrec_args, write_sequences)
from conf.loading import load_config  # noqa: E402
from conf.schema import FEEDBACK, LEAVE_ONE_OUT  # noqa: E402
from trainers.compare import parse_row  # noqa: E402

MODELS = {  # each paper's comparison table (README, "Models and comparison")
    # sasrec:loss=ce: beside RecBole's CE row and the field's objective; GRU4Rec also as its
    # authors' released best configurations run it (cross-entropy, constrained embedding)
    "sample-loo": ("dualrec,dual_gru4rec,dual_fmlp,fmlp,bert4rec,sasrec,sasrec:loss=ce,gru4rec,"
                   "gru4rec:loss=ce:tied_embedding=true:dropout=0.5,caser"),
    "sample-feedback": "dfar,tha4rec,din,dien,dfn,feedrec,gru4rec,sasrec,caser",
}
# popularity on the real logs these samples imitate, and each protocol's margin
REAL_POPULARITY = {LEAVE_ONE_OUT: ("hr@10", 0.236), FEEDBACK: ("auc", 0.568)}


def margin(row: dict, popularity: dict, protocol: str) -> str:
    """``hr@10`` as a multiple of popularity's (leave_one_out) or ``auc`` above it."""
    metric, _ = REAL_POPULARITY[protocol]
    value, base = row.get(f"test_{metric}"), popularity[f"test_{metric}"]
    if not isinstance(value, float) or not base:
        return ""
    if protocol == LEAVE_ONE_OUT:
        return f"{value / base:.2f}x" + ("" if value >= 1.3 * base else " (< 1.3x)")
    return f"{value - base:+.3f}" + ("" if value >= base + 0.05 else " (< +0.05)")


def shape_table(name: str, manifest: dict, popularity: dict, protocol: str) -> str:
    """Ours beside the real log's: sizes, events a user, sparsity, popularity's metric."""
    sizes, shapes = manifest["sizes"], manifest["shape"]
    metric, real = REAL_POPULARITY[protocol]
    lines = ["| log | users | items | interactions | events a user | sparsity | "
             f"popularity test {metric} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for who, label, pop in (("ours", name, popularity[f"test_{metric}"]),
                            ("published", "real (imitated)", real)):
        if sizes[who] is None:
            continue
        size, shape = sizes[who], shapes[who]
        lines.append(f"| {label} | {size['users']:,} | {size['items']:,} | "
                     f"{size['interactions']:,} | {shape['events_per_user']:.2f} | "
                     f"{100 * shape['sparsity']:.3f} % | {pop:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(MODELS))
    for dataset, models in MODELS.items():
        parser.add_argument(f"--models-{dataset}", default=models)
    parser.add_argument("--epochs", type=int, default=None,
                        help="cap on every model's epochs (default: each preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every dataset (e.g. generate.rows=...)")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "generated")
    parser.add_argument("--no-recbole", action="store_true")
    parser.add_argument("--recbole-epochs", type=int, default=50)
    parser.add_argument("--recbole-patience", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recbole-mode", choices=["full", "uni99"], default="full",
                        help="RecBole's evaluation (benchmarks/recbole_rows.py: its uni99 "
                             "takes ~10 min an evaluation on this log's users)")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    unknown = set(datasets) - set(MODELS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; known: {', '.join(MODELS)}")
    if not args.no_recbole and missing_venv():
        sys.exit(missing_venv())
    from spark_jobs.sample_data import generate, why_generate

    work = args.work.resolve()
    tables, timings = [], {}
    for name in datasets:
        models = getattr(args, f"models_{name.replace('-', '_')}").split(",")
        cfg = load_config(name, parse_row(models[0]).model, "local", [
            f"paths.raw_dir={work}/{name}/raw", f"paths.work_dir={work}/{name}/work",
            f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mla",
            *([f"train.epochs={args.epochs}"] if args.epochs else []), *args.set])
        start = time.perf_counter()
        if why_generate(cfg):  # as the flow: an unchanged sample is reused, so ingest and
            generate(cfg)  # index are skipped and a finished or interrupted run resumes
        timings[f"{name} generate"] = time.perf_counter() - start
        rows, protocol, ingest = compared_rows(cfg, models, args.epochs, timings, name)
        if protocol.name == LEAVE_ONE_OUT and not args.no_recbole:
            source = work / name / "recbole" / f"{name}.txt"
            write_sequences(f"{cfg.paths.work_dir}/index", source)
            rows += [recbole_row(["--sequences", str(source)],
                                 work / name / "recbole" / loss.lower() / "result.json", loss,
                                 sasrec_args(cfg), args.recbole_epochs, args.recbole_patience,
                                 args.threads, timings, args.recbole_mode)
                     for loss in LOSSES]
        popularity = rows[0]
        full = tuple(f"full_{m}" for m in FULL_METRICS)
        for row in rows[1:]:
            if not row["model"].startswith("random"):  # RecBole's too: the same test users
                row["margin"] = margin(row, popularity, protocol.name)
        order = ("" if protocol.name != LEAVE_ONE_OUT else  # what its order tells (no training)
                 f"{order_table(order_scores(f'{cfg.paths.work_dir}/index'))}\n\n")
        tables.append(f"### {name} ({protocol.name})\n\n"
                      f"{shape_table(name, ingest, popularity, protocol.name)}\n\n{order}"
                      f"{table(rows, protocol, extra=('margin', *full))}")
        print(f"\n{tables[-1]}\n", flush=True)
    print("\n\n".join(tables))
    print("\n| part | seconds |\n|---|---:|")
    for part, seconds in timings.items():
        print(f"| {part} | {seconds:.0f} |")
    print(f"\nepochs cap: {args.epochs or 'presets'}; overrides: {args.set or 'none'}")


if __name__ == "__main__":
    main()
