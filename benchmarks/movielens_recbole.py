"""Every protocol on RecBole's own MovieLens-100K atomic file: each model of the protocol's
paper table beside popularity, and beside RecBole 1.2.1's SASRec (CE and BPR) where RecBole
evaluates the same way (issue 23, section 2).

The file is RecBole's ``ml-100k.inter`` as its wheel ships it, read by our ``recbole_inter``
reader (conf/datasets/ml-100k.yaml). Get it once (no network at run time):

    pip download --no-deps recbole==1.2.1 -d data/downloads
    unzip -j data/downloads/recbole-1.2.1-py3-none-any.whl \
        recbole/dataset_example/ml-100k/ml-100k.inter -d data/raw/ml-100k

Per protocol, through the real stages (Spark ingest and index, then
``trainers.compare.run_comparison``: Ray Train, evaluation, MLflow, as ``seqrec compare``):

- ``leave_one_out`` (DualRec Table 2's models): the ml-100k preset, every rating an
  interaction, iterative 5-core, 99 negatives per user, L = 50, d = 64. Beside them: our
  SASRec once more with its full-softmax CE (the row ``sasrec:loss=ce``, as
  ``seqrec compare --models`` takes it), and RecBole's SASRec trained with CE and with BPR
  (benchmarks/recbole_runner.py in ``.venv-recbole``) on the same file with the same 5-core,
  d, blocks, heads, dropout, L, lr and batch, leave-one-out by time (``LS: valid_and_test``,
  ``order: TO``) and ``uni99`` evaluation: 1 target + 99 uniform unseen items, the candidate
  count of ours (RecBole's ``uni100`` would be 101). Not identical: RecBole draws its 99
  again at every evaluation, ours are fixed per user and shared by valid and test;
  RecBole's MRR is ``mrr@100`` over the 100 candidates (= the untruncated MRR ours gives);
  RecBole ranks ties by ``topk``, ours pessimistically; RecBole trains one sample per prefix
  (~96k per epoch after the 5-core), ours one row per user (943) with every history
  position a target (~47k targets in windows of 50), so an epoch of ours is 4 optimizer
  steps against RecBole's ~377: compare at early stopping, not per epoch.
- ``feedback`` (DFAR Table 2's models): the movielens preset's DFAR setup on this file
  (ratings 4-5 positive, 1 negative, 2-3 dropped; 10-core items then users; each user's
  last two active days held out; 9 sampled items per real row; AUC, GAUC, MRR@10, NDCG@10).
  RecBole has no such protocol (its SASRec reads no feedback labels and splits by
  interaction, not by day), so this table has no RecBole rows.
- ``slices`` (SCoRe Table 3's models): ML-100K spans 1997-09-20 .. 1998-04-22, so seven
  30-day slices (T = 7; the last four days fall outside), labels as feedback; train on slice
  T-3, valid T-2, test T-1, 1 + 99 candidates. RecBole has no time-sliced protocol: no
  RecBole rows either.

Each table: the models (test metrics of the best valid epoch, valid selection metric, best
epoch, training minutes), the popularity reference on the same lists, the feedback random
floor, RecBole's rows; then seconds per part (ingest, index, comparison, RecBole runs).

``--epochs N`` caps every model's epochs, BERT4Rec's 5,300 of its preset included (early
stopping still ends runs sooner); without it each model trains to its preset's cap or early
stop. ``--recbole-epochs`` caps RecBole's (patience ``--recbole-patience`` on valid MRR).
ML-100K is dense (943 users, ~106 ratings each), unlike Amazon's ~9 a user, so it may not
show what fails on Amazon.

Run: .venv/bin/python benchmarks/movielens_recbole.py [data/raw/ml-100k/ml-100k.inter]
     [--protocols leave_one_out,feedback,slices] [--epochs N] [--recbole-epochs 50]
     [--recbole-patience 10] [--models-leave_one_out ...] [--models-feedback ...]
     [--models-slices ...] [--no-recbole] [--threads 2 (RecBole's torch threads)]
     [--work data/bench/ml-100k]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.comparison_table import FULL_METRICS, compared_rows, table  # noqa: E402
from benchmarks.recbole_rows import LOSSES, missing_venv, recbole_row, sasrec_args  # noqa: E402
from conf.loading import load_config  # noqa: E402
from conf.schema import FEEDBACK, LEAVE_ONE_OUT, SLICES  # noqa: E402

DEFAULT_FILE = ROOT / "data" / "raw" / "ml-100k" / "ml-100k.inter"
MODELS = {  # each paper's comparison table (README, "Models and comparison")
    # + SASRec with the full-softmax CE that RecBole's CE row has (a compare variant row)
    LEAVE_ONE_OUT: ("dualrec,dual_gru4rec,dual_fmlp,fmlp,bert4rec,sasrec,sasrec:loss=ce,gru4rec,"
                   "caser"),
    FEEDBACK: "dfar,tha4rec,din,dien,dfn,feedrec,gru4rec,sasrec,caser",
    SLICES: "score,svdpp,delf,gru4rec,caser,sasrec,rrn,deems",
}
# The ml-100k preset is leave_one_out; the others as its header comments say.
OVERRIDES = {
    LEAVE_ONE_OUT: [],
    FEEDBACK: ["index.protocol=feedback", "index.eval_negatives=9", "index.train_negatives=9",
               "index.negative_sampling=popularity", "index.sequence_max_len=20",
               "dataset.positive_min_rating=4", "dataset.negative_max_rating=1",
               "dataset.kcore=10", "dataset.kcore_mode=items_then_users",
               "train.window=last", "train.lr=0.001", "train.batch_size=200",
               "train.patience=5", "train.min_epochs=10", "table.params.embed_dim=32",
               "table.params.hidden_dim=32", "table.params.tower_hidden=[64, 32]",
               "table.params.history_targets=false"],
    SLICES: ["index.protocol=slices", "dataset.start=1997-09-20", "dataset.slice_days=30",
             "dataset.num_slices=7", "dataset.positive_min_rating=4",
             "dataset.negative_max_rating=1", "dataset.kcore=0", "train.window=last",
             "table.params={}"],
}

def config(inter: Path, work: Path, protocol: str, epochs: int | None):
    """The ml-100k preset on ``inter`` under ``protocol``; stages in ``<work>/<protocol>``."""
    return load_config("ml-100k", "sasrec", "local", [
        f"paths.raw_dir={inter.parent}", f"dataset.files=[{inter.name}]",
        f"paths.work_dir={work}/{protocol}", f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/mla", *OVERRIDES[protocol],
        *([f"train.epochs={epochs}"] if epochs else [])])


def ours(inter: Path, work: Path, protocol_name: str, models: list[str], epochs: int | None,
         timings: dict) -> tuple[list[dict], object]:
    """Ingest, index and compare ``models`` (rows as ``seqrec compare --models``)."""
    rows, protocol, _ = compared_rows(config(inter, work, protocol_name, epochs), models,
                                      epochs, timings, protocol_name)
    return rows, protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inter", type=Path, nargs="?", default=DEFAULT_FILE,
                        help="RecBole's ml-100k.inter (see the docstring for the unzip line)")
    parser.add_argument("--protocols", default=f"{LEAVE_ONE_OUT},{FEEDBACK},{SLICES}")
    for protocol, models in MODELS.items():
        parser.add_argument(f"--models-{protocol}", default=models)
    parser.add_argument("--epochs", type=int, default=None,
                        help="cap on every model's epochs (default: each preset's)")
    parser.add_argument("--recbole-epochs", type=int, default=50)
    parser.add_argument("--recbole-patience", type=int, default=10)
    parser.add_argument("--no-recbole", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recbole-mode", choices=["uni99", "full"], default="uni99",
                        help="RecBole's evaluation (benchmarks/recbole_rows.py)")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "ml-100k")
    args = parser.parse_args()
    inter, work = args.inter.resolve(), args.work.resolve()
    if not inter.exists():
        sys.exit(f"{inter} is missing; get it from RecBole's wheel: pip download --no-deps "
                 "recbole==1.2.1 -d data/downloads && unzip -j data/downloads/recbole-"
                 "1.2.1-py3-none-any.whl recbole/dataset_example/ml-100k/ml-100k.inter -d "
                 f"{inter.parent}")
    protocols = args.protocols.split(",")
    unknown = set(protocols) - set(MODELS)
    if unknown:
        parser.error(f"unknown protocols {sorted(unknown)}; known: {', '.join(MODELS)}")
    if LEAVE_ONE_OUT in protocols and not args.no_recbole and missing_venv():
        sys.exit(missing_venv())
    tables, timings = [], {}
    for name in protocols:
        models = getattr(args, f"models_{name}").split(",")
        rows, protocol = ours(inter, work, name, models, args.epochs, timings)
        if name == LEAVE_ONE_OUT and not args.no_recbole:
            sasrec = sasrec_args(config(inter, work, name, args.epochs))
            rows += [recbole_row(["--inter", str(inter), "--kcore", "5"],
                                 work / "recbole" / loss.lower() / f"sasrec-{loss.lower()}.json",
                                 loss, sasrec, args.recbole_epochs, args.recbole_patience,
                                 args.threads, timings, args.recbole_mode)
                     for loss in LOSSES]
        full = tuple(f"full_{m}" for m in FULL_METRICS)
        tables.append(f"### {name}\n\n{table(rows, protocol, extra=full)}")
        print(f"\n{tables[-1]}\n", flush=True)
    print("\n\n".join(tables))
    print("\n| part | seconds |\n|---|---:|")
    for part, seconds in timings.items():
        print(f"| {part} | {seconds:.0f} |")
    print(f"\nepochs cap: {args.epochs or 'presets'}; RecBole epochs {args.recbole_epochs}, "
          f"patience {args.recbole_patience}, {args.threads} torch threads")


if __name__ == "__main__":
    main()
