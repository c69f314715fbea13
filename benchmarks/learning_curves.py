"""Learning curves of one model on a built index, against popularity (issue 23's diagnosis).

    .venv/bin/seqrec index --dataset sample-loo            # generate + ingest first
    .venv/bin/python benchmarks/learning_curves.py --dataset sample-loo --model sasrec \\
        --epochs 6 --set model.params.loss=ce --set train.embedding_updates=dense

Trains in this process with the loop's own epoch function (no Ray, no MLflow), prints the
validation HR@10 and MRR after every epoch and seconds so far, then the test HR@10 and MRR
beside popularity's on the same lists. Measured with a first draft of this driver on the
Toys-shaped ``sample-loo`` (SASRec, preset settings, 2 busy cores): valid HR@10 0.142,
0.196, 0.239, 0.257, 0.265, 0.264; test 0.263 against popularity's 0.238; ``loss=ce``
0.199, 0.262, 0.271, 0.272; ``embedding_updates=dense`` 0.146, 0.207, 0.246, 0.260.
"""

from __future__ import annotations

import argparse

from conf.loading import load_config
from trainers.local_fit import fit_locally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sample-loo")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override key=value (repeatable)")
    args = parser.parse_args()
    cfg = load_config(args.dataset, args.model, "local", args.overrides)

    def report(row: dict) -> None:
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("hr@10", "mrr", "auc") if k in row)
        print(f"epoch {row['epoch']}: loss {row['loss']:.4f}, valid {shown} "
              f"({row['seconds']:.0f} s)", flush=True)

    fit = fit_locally(cfg, args.epochs, report)
    keys = [k for k in ("hr@10", "mrr", "auc") if k in fit.test]
    print("| model | " + " | ".join(f"test {k}" for k in keys) + " |\n|---|"
          + "---|" * len(keys))
    for name, values in ((args.model, fit.test), ("popularity", fit.popularity)):
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
